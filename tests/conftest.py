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
