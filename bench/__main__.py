"""``python -m bench [NAME ...]``: run the benchmarks, print the table of ratios, write it as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import BENCHMARKS

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from comfyui_version import __version__ as comfy_version  # noqa: PLC0415
    except ImportError:
        comfy_version = None
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "comfyui": comfy_version,
            "platform": platform.platform()}
    try:
        import psutil  # noqa: PLC0415

        info["ram_bytes"] = psutil.virtual_memory().total
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["benchmark", "device", "scenario", "metric", "core", "lora_lab", "ratio"]
    head = {"core": "core", "lora_lab": "LoRA Lab", "ratio": "core/LoRA Lab"}
    cells = [[head.get(c, c) for c in cols]] + [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run, of {sorted(BENCHMARKS)} (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    started = time.perf_counter()
    results, rows = {}, []
    for name in args.names or list(BENCHMARKS):
        run, to_rows = BENCHMARKS[name]
        t0 = time.perf_counter()
        results[name] = run()
        results[name]["wall_s"] = time.perf_counter() - t0
        rows += to_rows(results[name])
    total = time.perf_counter() - started
    info = machine()

    print(table(rows))
    print(f"\nmachine: {info['cpu']}, {info['cpu_count']} cores, torch {info['torch']}, ComfyUI {info['comfyui']}"
          + (f", GPU {info['gpu']}" if "gpu" in info else ", no GPU"))
    for name, res in results.items():
        for line in res.get("notes", []):
            print(f"{name}: {line}")
    print(f"total {total:.1f} s; written to {args.out}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps({"machine": info, "total_s": total, "table": rows, "results": results},
                              indent=2, default=str) + "\n")
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
