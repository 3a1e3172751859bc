"""Shared pytest setup: ComfyUI importable in process, and one real ComfyUI server per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.host import ComfyServer, import_comfy


# Test files whose results depend on the ComfyUI version: the host's import, model management, key maps,
# caching and routes, the front end it serves, core's own LoRA results compared with ours, and the server
# end to end. Collected items from them get the `hosts` marker: `pytest -m hosts` is the quick check of
# another ComfyUI version (CI runs the whole suite on 0.3.75 and on 0.8.0, .ci/run). A test elsewhere can
# carry @pytest.mark.hosts itself.
HOST_SENSITIVE_FILES = frozenset({
    "test_host.py", "test_bridge.py", "test_loader_errors.py", "test_is_changed.py", "test_output_names.py",
    "test_routes_hardening.py", "test_web_routes.py", "test_web_browser.py", "test_blocks.py", "test_stack.py",
    "test_block_loading.py", "test_families.py", "test_train_small.py", "test_bench_smoke.py",
    "test_e2e_loader.py", "test_e2e_stack.py", "test_e2e_sweep.py", "test_train_e2e.py",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in HOST_SENSITIVE_FILES:
            item.add_marker(pytest.mark.hosts)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Before collection, so test modules may `import comfy.*` / `folder_paths` at top level, and so
    # ComfyUI's `nodes.py` claims the top-level name `nodes` before anything else can.
    import_comfy()


def _second_identities() -> list[str]:
    """The pack's modules imported under another name than ``lora_lab.*``: as top-level ``lora_ops``/
    ``train`` from the repository root, or as a package named after the checkout's folder (pytest imports
    a directory's ``__init__.py`` for its setup; ``--confcutdir=tests`` in pyproject.toml keeps it from
    doing that to the repository itself, where it also fails when the folder's name is no identifier)."""
    import sys

    checkout = Path(__file__).resolve().parents[1].name
    return sorted(m for m in sys.modules if m.split(".")[0] in ("lora_ops", "train", checkout))


def pytest_collection_finish(session: pytest.Session) -> None:
    # One identity for the pack's modules: tests import them as ComfyUI does, ``lora_lab.*`` (import_pack),
    # or classes and caches exist twice.
    twice = _second_identities()
    if twice:
        raise pytest.UsageError(f"test modules imported the pack's modules outside lora_lab.*: {twice[:5]}; "
                                "import them as lora_lab.lora_ops / lora_lab.train after testkit.host.import_pack()")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    twice = _second_identities()
    if twice and exitstatus == pytest.ExitCode.OK:
        print(f"\nthe pack's modules were imported outside lora_lab.* during the run: {twice[:5]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory):
    """A started ComfyUI server (CPU, loopback) with this pack installed, shared by the session."""
    server = ComfyServer(tmp_path_factory.mktemp("comfy-host"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sd15_host(comfy_server):
    """The session's server with the full-size SD1.5 checkpoint and its fixture LoRAs linked in:
    ``(server, checkpoint name, {fixture name: lora name}, {fixture name: Fixture})``."""
    from testkit import fixtures, models

    full = fixtures.build("sd15_full")
    ckpt = comfy_server.add_checkpoint(models.sd15_checkpoint())
    loras = {name: comfy_server.add_lora(fx.path) for name, fx in full.items()}
    return comfy_server, ckpt, loras, full


@pytest.fixture(scope="module")
def small():
    """A small SD1.5 model in the host, seeded: ``(patcher, clip, vae)``."""
    import torch

    from testkit import models
    from testkit.small_vae import small_vae

    with torch.inference_mode():
        patcher, clip = models.small_sd15()
        vae = small_vae()
    return patcher, clip, vae
