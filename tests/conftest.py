"""Shared pytest setup: ComfyUI importable in process, and one real ComfyUI server per session."""

from __future__ import annotations

import pytest

from testkit.host import ComfyServer, import_comfy


def pytest_sessionstart(session: pytest.Session) -> None:
    # Before collection, so test modules may `import comfy.*` / `folder_paths` at top level, and so
    # ComfyUI's `nodes.py` claims the top-level name `nodes` before anything else can.
    import_comfy()


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
