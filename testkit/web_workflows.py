"""What the front-end tests share: the user presets they install, the block payloads the JavaScript unit
tests read (``tests/js/fixtures``), and the API-format workflows the browser tests load into the page.

Each workflow builder returns the ``prompt`` dict that ``/prompt`` takes (node id -> ``class_type`` +
inputs, links as ``[node_id, output_index]``); the browser tests load it with ``app.loadApiJson`` and
queue it from the page, so the page receives the ``executed`` messages.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
JS_FIXTURES = REPO_ROOT / "tests" / "js" / "fixtures"
FIXTURE_FAMILIES = ("sd1", "sdxl", "flux")

USER_PRESETS = {
    "MYOUT": "*=0.25, OUT*=0.75",  # exact: the sliders can show and rewrite it
    "HALFA": "*=a",  # depends on the A input: shown, the text stays as written
    "ATTNOFF": "IN05.attn=0",  # a sub-block selector: shown, the text stays as written
}
"""User presets the tests install as ``<user>/lora_lab/block_presets.json``."""


def write_user_presets(user_dir: Path) -> Path:
    path = Path(user_dir) / "lora_lab" / "block_presets.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(USER_PRESETS, indent=1))
    return path


def block_payloads(presets_path: Path) -> dict[str, dict]:
    """``GET /lora_lab/blocks`` payloads per fixture family, as the JS unit tests read them (in process;
    the user presets path is left out, it names a temporary folder)."""
    from testkit.host import import_pack

    import_pack()
    from lora_lab.nodes.routes import blocks_payload

    out = {}
    for family in FIXTURE_FAMILIES:
        payload = blocks_payload(family, presets_path)
        payload["user_presets_path"] = None
        out[family] = payload
    return out


def fixture_path(family: str) -> Path:
    return JS_FIXTURES / f"blocks_{family}.json"


def dump_payload(payload: dict) -> str:
    return json.dumps(payload, indent=1, sort_keys=True) + "\n"


# --- workflows -------------------------------------------------------------------------------------

def loader_txt2img(checkpoint: str, lora: str, *, block_weights: str = "", prefix: str = "lora_lab_web/loader",
                   steps: int = 1, size: int = 64, inspect: bool = False) -> dict:
    """Checkpoint -> LoraLabLoader -> CLIPTextEncode x2 -> KSampler -> VAEDecode -> SaveImage; with
    ``inspect``, a LoraLabInspect of the same file beside it (node "9")."""
    g: dict[str, dict] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "LoraLabLoader", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "strength_model": 1.0, "strength_clip": 1.0,
            "block_weights": block_weights}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a lighthouse"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "blurry"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 7,
            "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }
    if inspect:
        g["9"] = {"class_type": "LoraLabInspect", "inputs": {"lora_name": lora}}
    return g


def stack_graph(checkpoint: str, lora: str) -> dict:
    """Checkpoint -> LoraLabStack -> LoraLabApplyStack (no sampling): a stack row with a block_weights field
    whose model is found through the stack's consumer."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "LoraLabStack", "inputs": {
            "lora_name": lora, "strength_model": 1.0, "strength_clip": 1.0, "block_weights": "", "enabled": True}},
        "3": {"class_type": "LoraLabApplyStack", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_stack": ["2", 0], "normalization": "none",
            "normalization_target": 1.0}},
    }


def sweep_graph(checkpoint: str, lora: str, *, weights: tuple[float, float] = (0.5, 1.0), steps: int = 1,
                size: int = 64, include_reference: bool = False, prefix: str = "lora_lab_web/sweep") -> dict:
    """Checkpoint -> LoraLabSweep: ``len(weights)`` cells (linear from the first to the last weight)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "LoraLabSweep", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "lora_name": lora,
            "positive": "a lighthouse", "negative": "blurry", "seed": 7, "steps": steps, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "width": size, "height": size,
            "weight_start": weights[0], "weight_end": weights[-1], "weight_count": len(weights),
            "include_reference": include_reference, "block_weights": "", "axis": "none", "axis_values": "",
            "filename_prefix": prefix}},
    }


def multi_rows(rows: list[tuple]) -> str:
    """The ``loras`` text of LoraLabMultiLoader: rows ``(lora, strength, strength_clip, block_weights, on)``."""
    return json.dumps([{"on": on, "lora": lora, "strength": sm, "strength_clip": sc, "block_weights": bw}
                       for lora, sm, sc, bw, on in rows])


def page_graph(checkpoint: str, loras: dict[str, str], *, bake_name: str, prefix: str = "lora_lab_web/page",
               size: int = 64) -> dict:
    """Every LoRA Lab node the page shows something on, run by one prompt (one sampling, one 2-cell sweep):

    checkpoint -> LoraLabLoader (kohya, block weights) -> LoraLabMultiLoader (the diffusers file, OUTALL, and a
    row switched off) -> prompts -> KSampler -> SaveImage; beside them LoraLabInspect (kohya), LoraLabSweep
    (kohya at 0.5 and 1.0), LoraLabBake (kohya, OUTALL, into ``bake_name``).
    """
    g = loader_txt2img(checkpoint, loras["kohya"], block_weights="IN04-IN08=0.5, M00=0", prefix=prefix, size=size,
                       inspect=True)
    g["10"] = {"class_type": "LoraLabMultiLoader", "inputs": {
        "model": ["2", 0], "clip": ["2", 1],
        "loras": multi_rows([(loras["diffusers"], 0.5, 0.5, "OUTALL", True), (loras["kohya"], 1.0, 1.0, "", False)])}}
    for node, slot in (("3", "clip"), ("4", "clip")):
        g[node]["inputs"][slot] = ["10", 1]
    g["6"]["inputs"]["model"] = ["10", 0]
    g["11"] = sweep_graph(checkpoint, loras["kohya"], weights=(0.5, 1.0), size=size)["2"]
    g["11"]["inputs"].update(model=["1", 0], clip=["1", 1], vae=["1", 2])
    g["12"] = {"class_type": "LoraLabBake", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "lora_name": loras["kohya"], "block_weights": "OUTALL",
        "output_name": bake_name}}
    return g


def merge_graph(checkpoint: str, lora: str) -> dict:
    """Checkpoint -> LoraLabStack -> LoraLabMerge (nothing sampled): a Merge Stack node with its seed."""
    g = stack_graph(checkpoint, lora)
    del g["3"]
    g["4"] = {"class_type": "LoraLabMerge", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "lora_stack": ["2", 0], "method": "dare", "rank": 0, "energy": 0.0,
        "density": 0.5, "seed": 42, "normalization": "none", "normalization_target": 1.0, "name": "merged"}}
    return g


# --- tools the front-end tests need ---------------------------------------------------------------

def missing_tool(reason: str) -> None:
    """A tool the front-end tests need is missing: fail under CI (``CI`` set and not false), skip locally."""
    import os

    import pytest

    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping; scripts/setup_browser.sh "
                    "installs it)", pytrace=False)
    pytest.skip(f"{reason}; run `make test` (scripts/setup_browser.sh installs it) or set CI=1 to make this fail")


def node_binary() -> str:
    """Path of Node.js (>= 18, for ``node --test``), or skip/fail with the reason."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        missing_tool("Node.js is not installed (the JavaScript unit tests run with `node --test`)")
    version = subprocess.run([node, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout.strip()
    major = int(version.lstrip("v").split(".")[0] or 0) if version.startswith("v") else 0
    if major < 18:
        missing_tool(f"Node.js {version or '(unknown version)'} is too old; `node --test` needs 18 or newer")
    return node
