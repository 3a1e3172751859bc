"""The one way tests, the demo and benchmarks reach the real ComfyUI host.

Two modes:

- In process (unit tests): :func:`import_comfy` makes ``comfy.*``, ``folder_paths`` and ComfyUI's
  ``nodes`` importable, running on the CPU; :func:`use_model_dirs` points ``folder_paths`` at test
  folders; :func:`import_pack` imports this repository as the package ``lora_lab``, the way ComfyUI
  loads it (relative imports inside the pack resolve against it).
- Out of process (end-to-end): :class:`ComfyServer` runs ``main.py`` on the loopback interface
  with a private base directory (models, custom_nodes, input, output, temp, user, database) and
  talks to it over HTTP with the standard library only.

Which host: ``$COMFYUI_PATH`` if set (with ``$COMFYUI_PYTHONPATH``, folders of extra packages it needs),
else the one ``$LORA_LAB_HOST`` names, as ``scripts/setup_env.sh`` prepares it (``make test`` runs it):
``0.3.75`` (the default) in ``<repo>/.host/ComfyUI``; ``0.8.0`` in ``<repo>/.host/ComfyUI-0.8.0``, whose
packages beyond the shared ``.venv`` lie in ``<repo>/.host/ComfyUI-0.8.0-site`` and are put first on the
import path of this process (:func:`import_comfy`) and of every server (:class:`ComfyServer`).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "lora_lab"
"""Folder name of the pack under ``custom_nodes/`` and its package name in :func:`import_pack`."""

# Top-level module names that ComfyUI owns once its folder is on sys.path. Our repo has a `nodes/`
# package, so importing it by its bare name would shadow ComfyUI's nodes.py (and vice versa).
_HOST_TOP_LEVEL_NAMES = ("nodes", "folder_paths", "execution", "server", "utils", "app", "comfy")

_SERVER_START_TIMEOUT = 180.0


class HostError(RuntimeError):
    """The ComfyUI host is missing, failed to start, rejected a prompt or failed to run it."""


# --------------------------------------------------------------------------------------------------
# Locating the host


HOSTS = {
    "0.3.75": (".host/ComfyUI", None),
    "0.8.0": (".host/ComfyUI-0.8.0", ".host/ComfyUI-0.8.0-site"),
}
"""``LORA_LAB_HOST`` value -> (ComfyUI folder, folder of its extra packages), relative to the repository."""
DEFAULT_HOST = "0.3.75"


def host_name() -> str:
    """The bundled host ``$LORA_LAB_HOST`` selects (default 0.3.75); ignored when ``$COMFYUI_PATH`` is set."""
    name = os.environ.get("LORA_LAB_HOST", "") or DEFAULT_HOST
    if name not in HOSTS:
        raise HostError(f"LORA_LAB_HOST={name!r}: the bundled hosts are {', '.join(HOSTS)}; "
                        "or set COMFYUI_PATH to an existing ComfyUI checkout.")
    return name


def comfyui_path() -> Path:
    """The ComfyUI folder to test against: ``$COMFYUI_PATH`` or the bundled host ``$LORA_LAB_HOST`` names."""
    env = os.environ.get("COMFYUI_PATH")
    path = Path(env).expanduser().resolve() if env else REPO_ROOT / HOSTS[host_name()][0]
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        origin = "COMFYUI_PATH" if env else f"the bundled host {host_name()}"
        raise HostError(
            f"No ComfyUI found at {path} ({origin}: need main.py and comfy/ there). "
            f"Run `make test` (or `LORA_LAB_HOST={host_name()} bash scripts/setup_env.sh`) to install the bundled "
            "ComfyUI, or set COMFYUI_PATH to an existing ComfyUI checkout."
        )
    return path


def host_site_paths() -> list[Path]:
    """Folders of packages the host needs beyond the environment, first on its import path:
    ``$COMFYUI_PYTHONPATH`` (``os.pathsep``-separated) with ``$COMFYUI_PATH``, else the bundled host's."""
    if os.environ.get("COMFYUI_PATH"):
        return [Path(p).expanduser().resolve() for p in os.environ.get("COMFYUI_PYTHONPATH", "").split(os.pathsep)
                if p.strip()]
    site = HOSTS[host_name()][1]
    if site is None:
        return []
    path = REPO_ROOT / site
    if not path.is_dir():
        raise HostError(f"The packages ComfyUI {host_name()} needs are not installed in {path}. "
                        f"Run `LORA_LAB_HOST={host_name()} bash scripts/setup_env.sh`.")
    return [path]


def comfyui_version(root: Path | None = None) -> str:
    """The host's version from its ``comfyui_version.py`` (``"0.3.75"``, ``"0.8.0"``)."""
    text = ((root or comfyui_path()) / "comfyui_version.py").read_text()
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    return match.group(1) if match else "unknown"


# --------------------------------------------------------------------------------------------------
# Differences between the hosts that test code has to follow


def flux_params(params: dict) -> dict:
    """``params`` for ComfyUI's ``Flux``/``Chroma`` on this host: 0.8.0's ``FluxParams`` requires
    ``txt_ids_dims`` (``[]`` for Flux.1, as its model detection sets; 0.3.75 has no such field)."""
    import dataclasses

    from comfy.ldm.flux.model import FluxParams

    if "txt_ids_dims" in {f.name for f in dataclasses.fields(FluxParams)}:
        return {"txt_ids_dims": [], **params}
    return dict(params)


def accepts_argument(function, name: str) -> bool:
    """Whether ``function`` takes ``name`` (e.g. core ``TrainLoraNode.execute``'s ``bucket_mode``, new in 0.8.0)."""
    import inspect

    return name in inspect.signature(function).parameters


# --------------------------------------------------------------------------------------------------
# In-process use


def _module_is_from(module: ModuleType, root: Path) -> bool:
    where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", []) or []), None)
    if where is None:
        return False
    return Path(where).resolve().is_relative_to(root)


def import_comfy() -> None:
    """Import ComfyUI in this process, on the CPU. Idempotent.

    Puts the ComfyUI folder first on ``sys.path`` and sets ``args.cpu`` before
    ``comfy.model_management`` is imported (it reads the flag once, at import). Command-line parsing
    stays off (``comfy.options.args_parsing`` is False unless ``main.py`` enables it), so the
    caller's ``sys.argv`` is never read. Afterwards ``comfy.sd``, ``comfy.lora``,
    ``comfy.model_patcher``, ``folder_paths`` and ComfyUI's core ``nodes`` (``LoraLoader``,
    ``CheckpointLoaderSimple``, ...) are importable. ``nodes.init_extra_nodes`` is not run: the
    ``comfy_extras`` nodes and custom nodes are only needed by a server.

    Side effect to know: ComfyUI's ``nodes.py`` inserts ``<ComfyUI>/comfy`` at the front of
    ``sys.path`` when imported, so the bare names of modules in ``comfy/`` (``utils``, ``ops``,
    ``lora``, ``sample``, ``hooks``...) become importable top-level names afterwards.
    """
    root = comfyui_path()
    for name in _HOST_TOP_LEVEL_NAMES:
        module = sys.modules.get(name)
        if module is not None and not _module_is_from(module, root):
            raise HostError(
                f"A module named {name!r} was imported from {getattr(module, '__file__', module)} before "
                f"ComfyUI; ComfyUI ({root}) owns that top-level name. Call testkit.host.import_comfy() "
                "first, and import this pack's own packages through import_pack() (lora_lab.nodes...)."
            )

    for folder in [*reversed(host_site_paths()), root]:
        folder_str = str(folder)
        if not sys.path or sys.path[0] != folder_str:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder_str)
            sys.path.insert(0, folder_str)

    if "comfy.model_management" not in sys.modules:
        from comfy.cli_args import args

        args.cpu = True

    import comfy.model_management as model_management

    if model_management.cpu_state != model_management.CPUState.CPU:
        raise HostError(
            "comfy.model_management was imported before import_comfy() could select the CPU "
            f"(cpu_state={model_management.cpu_state})"
        )

    # main.py imports ComfyUI's `utils` package before `nodes`; do the same, because nodes.py puts
    # <ComfyUI>/comfy first on sys.path, after which a bare `import utils` would find comfy/utils.py.
    import utils.extra_config  # noqa: F401

    import comfy.lora  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.sd  # noqa: F401
    import folder_paths  # noqa: F401
    import nodes  # noqa: F401


def import_pack() -> ModuleType:
    """Import this repository as the package ``lora_lab`` (after :func:`import_comfy`). Idempotent.

    ComfyUI loads a pack from ``custom_nodes/<folder>/__init__.py`` as a package, so the pack's
    relative imports (``from .nodes import ...``) resolve inside it. This does the same under the
    stable name ``lora_lab``: tests then import ``lora_lab.nodes.<feature>`` and never the bare
    name ``nodes``, which belongs to ComfyUI.
    """
    existing = sys.modules.get(PACK_NAME)
    if existing is not None:
        return existing
    import_comfy()
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    if spec is None or spec.loader is None:
        raise HostError(f"cannot import the pack from {REPO_ROOT / '__init__.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACK_NAME]
        raise
    return module


@contextlib.contextmanager
def use_model_dirs(
    loras_dir: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    checkpoints_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    input_dir: str | os.PathLike | None = None,
) -> Iterator[None]:
    """Point in-process ``folder_paths`` at test folders for the duration of a ``with`` block.

    Each given folder *replaces* the host's search list for that kind (so only test files are
    listed); ``loras_dir`` may be a list of folders (as ``extra_model_paths.yaml`` gives), the first
    being where new files go. The output and input folders replace ``folder_paths.get_output_directory()``
    and ``get_input_directory()``. Everything is restored on exit. ``folder_paths`` keeps a file-list
    cache keyed by kind and checked against folder mtimes; the touched kinds are dropped from it on
    entry and exit.
    """
    import_comfy()
    import folder_paths

    replaced: dict[str, tuple[list[str], object]] = {}
    old_output = folder_paths.get_output_directory()
    old_input = folder_paths.get_input_directory()
    try:
        for kind, folder in (("loras", loras_dir), ("checkpoints", checkpoints_dir)):
            if folder is None:
                continue
            folders = [folder] if isinstance(folder, (str, os.PathLike)) else list(folder)
            paths, extensions = folder_paths.folder_names_and_paths[kind]
            replaced[kind] = (paths, extensions)
            folder_paths.folder_names_and_paths[kind] = ([str(Path(f).resolve()) for f in folders], extensions)
            folder_paths.filename_list_cache.pop(kind, None)
        if output_dir is not None:
            folder_paths.set_output_directory(str(Path(output_dir).resolve()))
        if input_dir is not None:
            folder_paths.set_input_directory(str(Path(input_dir).resolve()))
        yield
    finally:
        for kind, entry in replaced.items():
            folder_paths.folder_names_and_paths[kind] = entry
            folder_paths.filename_list_cache.pop(kind, None)
        folder_paths.set_output_directory(old_output)
        folder_paths.set_input_directory(old_input)


# --------------------------------------------------------------------------------------------------
# Out of process: a real server


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Loopback only: never route through a proxy taken from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_IMPORT_LINE = re.compile(r"^\s*[\d.]+ seconds(?P<failed> \(IMPORT FAILED\))?: (?P<path>.+?)\s*$")


class ComfyServer:
    """A ComfyUI server process with a private base directory, for end-to-end tests and the demo.

    ``workdir`` gets ``models/{checkpoints,loras}``, ``custom_nodes/lora_lab`` (a link to this
    repository), ``input``, ``output``, ``temp``, ``user`` and the server's sqlite database; the
    ComfyUI install itself is only read. Model files are linked in with :meth:`add_checkpoint` /
    :meth:`add_lora`, before or after :meth:`start` (the host re-lists model folders per request,
    validated by folder mtime). Use as a context manager or call :meth:`stop`.
    """

    def __init__(self, workdir: str | os.PathLike, *, extra_args: Iterable[str] = ()) -> None:
        self.comfyui = comfyui_path()
        self.workdir = Path(workdir).resolve()
        self.extra_args = list(extra_args)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex
        self._log_file = None
        for sub in ("models/checkpoints", "models/loras", "custom_nodes", "input", "output", "temp", "user"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        link = self.custom_nodes_dir / PACK_NAME
        if link.is_symlink() and Path(os.readlink(link)) != REPO_ROOT:
            link.unlink()
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)

    # -- folders --------------------------------------------------------------------------------

    @property
    def checkpoints_dir(self) -> Path:
        return self.workdir / "models" / "checkpoints"

    @property
    def loras_dir(self) -> Path:
        return self.workdir / "models" / "loras"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.workdir / "custom_nodes"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"

    @property
    def input_dir(self) -> Path:
        return self.workdir / "input"

    @property
    def temp_dir(self) -> Path:
        return self.workdir / "temp"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise HostError("server not started")
        return f"http://127.0.0.1:{self.port}"

    def _link_into(self, folder: Path, path: str | os.PathLike, name: str | None) -> str:
        source = Path(path).resolve()
        if not source.is_file():
            raise FileNotFoundError(f"model file not found: {source}")
        name = name or source.name
        target = folder / name
        # normalise ".." without following symlinks: an earlier run's link points into the cache
        if not Path(os.path.abspath(target)).is_relative_to(Path(os.path.abspath(folder))):
            raise ValueError(f"model name {name!r} escapes {folder}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(source)
        return name

    def add_checkpoint(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Link a checkpoint file into ``models/checkpoints``; returns the name ComfyUI lists."""
        return self._link_into(self.checkpoints_dir, path, name)

    def add_lora(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Link a LoRA file into ``models/loras``; returns the name ComfyUI lists (``lora_name``)."""
        return self._link_into(self.loras_dir, path, name)

    # -- process --------------------------------------------------------------------------------

    def command(self) -> list[str]:
        database = self.workdir / "user" / "comfyui.db"
        return [
            sys.executable, "main.py",
            "--cpu",
            "--listen", "127.0.0.1",
            "--port", str(self.port),
            "--disable-auto-launch",
            "--base-directory", str(self.workdir),
            # The default database lives inside the ComfyUI install; keep it per server.
            "--database-url", f"sqlite:///{database}",
            # comfy_api_nodes are paid cloud nodes; skipping them also keeps the front end offline.
            "--disable-api-nodes",
            *self.extra_args,
        ]

    def start(self, timeout: float = _SERVER_START_TIMEOUT) -> ComfyServer:
        """Launch ``main.py`` and wait until ``/object_info`` answers and the pack imported."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.port = _free_loopback_port()
        env = dict(os.environ)
        site = [str(p) for p in host_site_paths()]
        if site:
            env["PYTHONPATH"] = os.pathsep.join(site + [p for p in [env.get("PYTHONPATH", "")] if p])
        env.update(
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            DO_NOT_TRACK="1",
        )
        self._log_file = open(self.log_path, "wb")
        started = time.monotonic()
        logger.info("starting ComfyUI %s on %s (log: %s)", self.comfyui, self.url, self.log_path)
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.comfyui,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        atexit.register(self.stop)
        deadline = started + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._close_log()
                raise HostError(f"ComfyUI exited with code {code} during startup.\n{self.log_tail()}")
            try:
                self._request("GET", "/object_info/CheckpointLoaderSimple", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise HostError(f"ComfyUI did not answer within {timeout:.0f} s.\n{self.log_tail()}")
            time.sleep(0.25)
        self.startup_seconds = time.monotonic() - started
        logger.info("ComfyUI answered after %.1f s", self.startup_seconds)
        try:
            self._check_pack_imported()
        except HostError:
            self.stop()
            raise
        return self

    def _check_pack_imported(self) -> None:
        """Raise if ComfyUI reported our pack as failed or did not try to import it at all."""
        log = self.log_text()
        pack_dir = str(self.custom_nodes_dir / PACK_NAME)
        status = None
        for line in log.splitlines():
            match = _IMPORT_LINE.match(line)
            if match and match.group("path") == pack_dir:
                status = "failed" if match.group("failed") else "ok"
        if status == "ok":
            return
        if status is None:
            raise HostError(f"ComfyUI did not import the pack at {pack_dir}.\n{self.log_tail()}")
        marker = f"Cannot import {pack_dir} module for custom nodes"
        detail = log[max(0, log.find(marker) - 6000): log.find(marker) + 2000] if marker in log else log[-6000:]
        raise HostError(f"ComfyUI failed to import the LoRA Lab pack:\n{detail}")

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("ComfyUI did not exit after SIGTERM; killing pid %d", process.pid)
                process.kill()
                process.wait(timeout)
        self._close_log()
        atexit.unregister(self.stop)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    # -- HTTP -----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, payload: dict | None = None, timeout: float = 30):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with _OPENER.open(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def _ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise HostError(f"ComfyUI is not running.\n{self.log_tail()}")

    def object_info(self, node_class: str | None = None) -> dict:
        """``/object_info`` (every node) or ``/object_info/<node_class>`` (one node)."""
        self._ensure_running()
        path = "/object_info" if node_class is None else f"/object_info/{urllib.parse.quote(node_class)}"
        return self._request("GET", path, timeout=60)

    def run_prompt(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue an API-format prompt, wait for it, return its ``/history`` entry.

        Raises :class:`HostError` with ComfyUI's validation errors (per node) when ``/prompt``
        rejects the graph, and with the node, exception message and traceback when a node fails.
        """
        self._ensure_running()
        try:
            queued = self._request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as err:
            body = err.read().decode(errors="replace")
            raise HostError(f"/prompt rejected the graph (HTTP {err.code}):\n{_format_rejection(body)}") from None
        prompt_id = queued["prompt_id"]
        if queued.get("node_errors"):
            logger.warning("prompt %s queued with node errors: %s", prompt_id, queued["node_errors"])

        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            history = self._request("GET", f"/history/{prompt_id}")
            entry = history.get(prompt_id) if history else None
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                break
            self._ensure_running()
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    self._request("POST", "/interrupt", {})
                raise HostError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

        status = entry.get("status", {})
        if status.get("status_str") != "success":
            raise HostError(_format_execution_error(prompt_id, status))
        return entry

    def output_files(self, history: dict, types: Iterable[str] = ("output",)) -> list[Path]:
        """Files a finished prompt wrote, as paths on disk (in node order).

        Reads every ``ui`` list in ``history["outputs"]`` whose entries carry ``filename``,
        ``subfolder`` and ``type`` (``images`` from SaveImage and any other node). ``types`` picks
        which: ``output`` (saved), ``temp`` (previews; deleted when the server exits).
        """
        roots = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        wanted = set(types)
        files: list[Path] = []
        for node_id in sorted(history.get("outputs", {}), key=_node_sort_key):
            for items in history["outputs"][node_id].values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if not isinstance(item, dict) or "filename" not in item:
                        continue
                    kind = item.get("type", "output")
                    if kind not in wanted:
                        continue
                    root = roots[kind].resolve()
                    path = (root / item.get("subfolder", "") / item["filename"]).resolve()
                    if not path.is_relative_to(root):
                        raise HostError(f"node {node_id} reported a file outside {root}: {item}")
                    files.append(path)
        return files


def _node_sort_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (sys.maxsize, node_id)


def _format_rejection(body: str) -> str:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body
    error = data.get("error") or {}
    lines = [f"{error.get('type', 'error')}: {error.get('message', '')} {error.get('details', '')}".rstrip()]
    for node_id, node in (data.get("node_errors") or {}).items():
        for item in node.get("errors", []):
            lines.append(
                f"  node {node_id} ({node.get('class_type')}): {item.get('message')}: {item.get('details')}"
            )
    return "\n".join(lines)


def _format_execution_error(prompt_id: str, status: dict) -> str:
    for event, data in status.get("messages", []):
        if event == "execution_error":
            traceback_text = "".join(data.get("traceback", []))
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                f"{data.get('exception_type')}: {data.get('exception_message')}\n{traceback_text}"
            )
        if event == "execution_interrupted":
            return f"prompt {prompt_id} was interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"prompt {prompt_id} failed: {json.dumps(status)[:4000]}"


def copy_outputs(files: Iterable[Path], destination: Path, name: str) -> list[Path]:
    """Copy files to ``destination/<name>_NN<suffix>`` (NN from 00, replacing an earlier run's set)."""
    destination.mkdir(parents=True, exist_ok=True)
    for stale in destination.glob(f"{glob.escape(name)}_[0-9][0-9].*"):
        stale.unlink()
    copied = []
    for index, source in enumerate(files):
        target = destination / f"{name}_{index:02d}{source.suffix}"
        shutil.copyfile(source, target)
        copied.append(target)
    return copied
