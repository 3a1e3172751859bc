# User targets: test, demo, bench. Each first runs scripts/setup_env.sh (about a second once set up).
#   make test                                   # all tests (pytest testpaths = tests) on ComfyUI 0.3.75
#   make test LORA_LAB_HOST=0.8.0               # the same on ComfyUI 0.8.0 (set up from
#                                               #   ../shared/hosts/comfyui-0.8.0.tar.gz on first use)
#   make test PYTEST_ARGS="tests/test_host.py"  # extra pytest arguments / narrower selection
#   COMFYUI_PATH=/path/to/ComfyUI make test     # test against another ComfyUI install
#   make test-web                               # only the front end's tests (tests/test_web*.py)

PYTHON := .venv/bin/python
PYTEST_ARGS ?=
# Which bundled ComfyUI the set-up installs and the tests run against (testkit/host.py): 0.3.75 or 0.8.0.
LORA_LAB_HOST ?= 0.3.75
export LORA_LAB_HOST

.PHONY: setup test test-web demo bench

setup:
	bash scripts/setup_env.sh

# No path given -> pytest collects `testpaths` from pyproject.toml (tests/), i.e. `pytest tests -q`.
test: setup
	@echo "[test] ComfyUI $${COMFYUI_PATH:-$(LORA_LAB_HOST)}"
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

test-web: setup
	$(PYTHON) -m pytest -q tests/test_web*.py $(PYTEST_ARGS)

demo: setup
	$(PYTHON) scripts/demo.py

bench: setup
	$(PYTHON) -m bench
