"""LoRA Lab demo: runs workflows on a real ComfyUI host and saves the images to demo-output/.

Run with `make demo`. The host runs on the CPU in .cache/demo-host (models, outputs, server.log).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from testkit.host import ComfyServer, copy_outputs  # noqa: E402

DEMO_OUTPUT = REPO_ROOT / "demo-output"
DEMO_HOST = REPO_ROOT / ".cache" / "demo-host"


def run_workflow(server: ComfyServer, prompt: dict, name: str, timeout: float = 600) -> list[Path]:
    """Run an API-format prompt and copy its saved images to demo-output/<name>_NN.png."""
    history = server.run_prompt(prompt, timeout=timeout)
    copied = copy_outputs(server.output_files(history), DEMO_OUTPUT, name)
    for path in copied:
        print(f"  {path.relative_to(REPO_ROOT)}")
    return copied


def plumbing_workflow() -> dict:
    """A graph that needs no model: a solid image saved by core SaveImage."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 1, "color": 0x3366CC}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "plumbing"}},
    }


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    DEMO_OUTPUT.mkdir(exist_ok=True)
    with ComfyServer(DEMO_HOST) as server:
        print(f"ComfyUI up at {server.url} after {server.startup_seconds:.1f} s (log: {server.log_path})")
        print("plumbing (EmptyImage -> SaveImage):")
        run_workflow(server, plumbing_workflow(), "plumbing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
