#!/usr/bin/env bash
# What the front-end tests need besides the venv: Debian's Chromium at /usr/bin/chromium (driven by the
# Python playwright package from requirements-host.txt; Playwright's own browser download is never used)
# and Node.js >= 18 for the JavaScript unit tests (`node --test tests/js/`).
#
# Idempotent and fast when both are there (two checks, no apt). Installs with apt-get (as root, or with
# passwordless sudo). When it cannot install, it says so and returns 0: the rest of the suite still runs,
# and the front-end tests fail under CI (CI=true) or skip locally, naming what is missing.
#
# Environment knobs: LORA_LAB_SKIP_BROWSER_SETUP=1 skips this step; LORA_LAB_CHROMIUM points the tests at
# another Chromium binary (this script then only checks Node.js).
set -uo pipefail

log() { echo "[setup-browser] $*" >&2; }

if [[ "${LORA_LAB_SKIP_BROWSER_SETUP:-}" == "1" ]]; then
    log "skipped (LORA_LAB_SKIP_BROWSER_SETUP=1)"
    exit 0
fi

want=()
if [[ -n "${LORA_LAB_CHROMIUM:-}" ]]; then
    [[ -x "$LORA_LAB_CHROMIUM" ]] || log "WARNING: LORA_LAB_CHROMIUM=$LORA_LAB_CHROMIUM is not an executable"
elif [[ ! -x /usr/bin/chromium ]]; then
    want+=(chromium)
fi
if ! command -v node >/dev/null 2>&1; then
    want+=(nodejs)
elif [[ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt 18 ]]; then
    log "WARNING: $(command -v node) is Node.js $(node --version); the JavaScript unit tests need 18 or newer"
fi
if [[ ${#want[@]} -eq 0 ]]; then
    log "nothing to install (chromium and node present)"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    log "WARNING: cannot install ${want[*]}: not root and no passwordless sudo. Install them with"
    log "         'apt-get install ${want[*]}'; the front-end tests fail under CI and skip otherwise."
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "WARNING: cannot install ${want[*]}: no apt-get on this machine (Debian/Ubuntu packages expected)."
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log "installing ${want[*]} with apt-get (once; about a minute)"
# a fresh machine may have no package lists yet
if ! apt-cache show "${want[@]}" >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update -q >/dev/null || log "WARNING: apt-get update failed"
fi
if "${SUDO[@]}" apt-get install -y -q "${want[@]}" >/dev/null; then
    log "installed ${want[*]}"
else
    log "WARNING: apt-get install ${want[*]} failed; the front-end tests fail under CI and skip otherwise."
fi
exit 0
