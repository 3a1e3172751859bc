#!/usr/bin/env bash
# Run LoRA Lab's benchmarks on a lent GPU machine (no internet, no diffusers, no venv).
#
#   bash bench/device_env.sh pack            # here, before lending: make .carry/comfyui.tar.gz
#   bash bench/device_env.sh [NAME ...]      # there, from the repository root: prepare, then run
#                                            #   python3 -m bench NAME ... (default: lora_apply_sdxl lora_apply)
#   bash bench/device_env.sh all             # there: the GPU tests, then lora_apply_sdxl lora_apply sweep
#
# What the machine is assumed to have: python3 (3.12) with torch (CUDA), triton, peft, transformers,
# safetensors, numpy, pillow, psutil, scipy, aiohttp, einops, pyyaml, tqdm. What travels with the working
# tree (both folders are git-ignored, so they must be carried explicitly):
#   .whl/*.whl                the rest of ComfyUI's import-time deps (av, torchsde, trampoline, kornia,
#                             kornia_rs), installed with --no-index --no-deps into $LORA_LAB_SITE (/tmp/site)
#   .carry/comfyui.tar.gz     ComfyUI 0.3.75 (.host/ComfyUI without tests, .git, caches), extracted to
#                             $COMFYUI_PARENT/ComfyUI (/tmp/ComfyUI); COMFYUI_PATH points there
# .cache/ does not travel: the full-size models and LoRAs are built there from the committed layouts
# (bench/layouts/*.json), which needs neither diffusers nor a network.
# Results: $OUT/bench.json and $OUT/bench.log when OUT is set, else bench/results/device.json (+ .log).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"

if [ "${1:-}" = "pack" ]; then
    src="${COMFYUI_PATH:-$REPO/.host/ComfyUI}"
    [ -f "$src/main.py" ] || { echo "no ComfyUI at $src" >&2; exit 1; }
    mkdir -p "$REPO/.carry"
    tar czf "$REPO/.carry/comfyui.tar.gz" -C "$(dirname "$src")" \
        --exclude='tests' --exclude='tests-unit' --exclude='.git' --exclude='__pycache__' \
        --exclude="$(basename "$src")/custom_nodes/lora_lab" \
        --transform "s,^$(basename "$src"),ComfyUI," "$(basename "$src")"
    ls -l "$REPO/.carry/comfyui.tar.gz"
    exit 0
fi

log() { echo "[device_env] $*" >&2; }

# 1. the missing wheels (once per machine)
SITE="${LORA_LAB_SITE:-/tmp/site}"
if compgen -G ".whl/*.whl" >/dev/null; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if ! "$PY" -c "import av, torchsde, trampoline, kornia" 2>/dev/null; then
        log "installing $(ls .whl/*.whl | wc -l) wheels into $SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    fi
else
    log "no .whl/*.whl here: assuming ComfyUI's deps are installed"
fi

# 2. ComfyUI
if [ -z "${COMFYUI_PATH:-}" ] || [ ! -f "${COMFYUI_PATH}/main.py" ]; then
    parent="${COMFYUI_PARENT:-/tmp}"
    if [ ! -f "$parent/ComfyUI/main.py" ]; then
        [ -f .carry/comfyui.tar.gz ] || { log "no ComfyUI: carry .carry/comfyui.tar.gz (bash bench/device_env.sh pack)"; exit 1; }
        mkdir -p "$parent"
        tar xzf .carry/comfyui.tar.gz -C "$parent"
        log "extracted ComfyUI to $parent/ComfyUI"
    fi
    export COMFYUI_PATH="$parent/ComfyUI"
fi
export PYTHONDONTWRITEBYTECODE=1

# 3. where the results go
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    json="$OUT/bench.json"
else
    mkdir -p bench/results
    json="bench/results/device.json"
fi
logfile="${json%.json}.log"

# 4. a quick look at the machine, and that the host and the pack import (fails fast, before any build)
"$PY" - <<'EOF' 2>&1 | tee "$logfile"
import platform
import torch
from testkit.host import comfyui_path, import_comfy, import_pack
import_comfy()
import_pack()
import transformers
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
try:
    import diffusers  # noqa: F401
    has_diffusers = "present"
except ImportError:
    has_diffusers = "absent"
print(f"[device_env] python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, {gpu}; ComfyUI at {comfyui_path()}; "
      f"diffusers {has_diffusers}", flush=True)
EOF

if [ "${1:-}" = "all" ]; then
    # one call for a whole GPU session: the GPU tests, then every benchmark that has GPU figures
    log "GPU tests: tests/test_gpu_merge.py tests/test_fused.py"
    "$PY" -m pytest -q tests/test_gpu_merge.py tests/test_fused.py 2>&1 | tee -a "$logfile" \
        || log "GPU tests FAILED (see $logfile); the benchmarks run anyway"
    set -- lora_apply_sdxl lora_apply sweep
fi
if [ "$#" -eq 0 ]; then
    set -- lora_apply_sdxl lora_apply
fi
log "python3 -m bench $* --out $json"
"$PY" -m bench "$@" --out "$json" 2>&1 | tee -a "$logfile"
