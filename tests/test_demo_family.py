"""The demo's non-SD part (``scripts/demo.py: family_demo``) in a fresh process, as ``make demo`` runs it
after its server steps: a small Flux model, a PEFT-saved and a kohya LoRA through loader, stack, merge and
sweep, each check against core's result. The server part of the demo is covered by the end-to-end tests;
this one catches what only a fresh process shows (the host not yet on ``sys.path``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_family_demo_runs_in_a_fresh_process_and_its_checks_hold(tmp_path):
    code = ("import sys; from pathlib import Path; "
            f"sys.path[:0] = [{str(REPO / 'scripts')!r}, {str(REPO)!r}]; "
            "import demo; "
            f"demo.DEMO_OUTPUT = Path({str(tmp_path)!r}); "
            "sys.exit(0 if demo.family_demo() else 1)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "largest weight difference from the live stack" in run.stdout
    assert (tmp_path / "flux_sweep.png").stat().st_size > 0 and (tmp_path / "flux_strip.png").stat().st_size > 0
