"""``python -m lora_ops.inspection FILE [FILE...] [--json] [--chart DIR]`` from the pack's folder."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..errors import LoraLabError
from .analysis import inspect_file
from .charts import render_chart


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lora_ops.inspection FILE [FILE...] [--json]``: exit 0, or 2 when a file cannot be read."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m lora_ops.inspection",
                                     description="Inspect LoRA files: format, family, training metadata, "
                                                 "health and per-block energy.")
    parser.add_argument("files", nargs="+", help="LoRA files (.safetensors)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file (a JSON list)")
    parser.add_argument("--chart", metavar="DIR", help="also write <name>.png per-block charts into DIR")
    args = parser.parse_args(argv)
    status = 0
    results = []
    for i, path in enumerate(args.files):
        try:
            insp = inspect_file(path)
        except LoraLabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            results.append({"path": str(path), "error": str(exc)})
            status = 2
            continue
        if args.chart:
            from pathlib import Path

            out = Path(args.chart)
            out.mkdir(parents=True, exist_ok=True)
            render_chart(insp).save(out / f"{Path(path).stem}.png")
        if args.json:
            results.append(insp.to_dict())
        else:
            if i:
                print()
            print(insp.to_text())
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
