"""The front end in a real browser: Debian's Chromium, driven by Playwright, on the real ComfyUI host
(the session's server from ``tests/conftest.py``) with this pack's ``web/`` extensions.

The page loads without console errors from our code, a LoRA Lab node is added through the node search
box, the block-weight editor changes the text field and the text field changes the sliders, a workflow
runs from the page's Run button and the loader's report shows on the node, and the sweep viewer shows
the grid. Each state is saved as a screenshot under ``test-artifacts/web/``.

Needs ``/usr/bin/chromium`` (Debian's package; scripts/setup_browser.sh installs it) and the Python
``playwright`` package (requirements-host.txt); Playwright's own browser download is never used. Without
them the tests fail under CI and skip locally, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from testkit import web_workflows as ww
from testkit.host import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = os.environ.get("LORA_LAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"
OUR_EXTENSIONS = {"LoraLab.BlockEditor", "LoraLab.Reports", "LoraLab.SweepViewer"}
OUR_MARKERS = ("/extensions/lora_lab/", "/lora_lab/", "LoraLab.", "lora-lab", "lora_lab")
RUN_TIMEOUT_MS = 240_000

# Client coordinates of the centre of a node's widget on the LiteGraph canvas.
WIDGET_XY = """([id, name]) => {
  const node = app.graph.getNodeById(id);
  const w = node.widgets.find((x) => x.name === name);
  const h = w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT;
  const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] + w.y + h / 2]);
  const r = app.canvas.canvas.getBoundingClientRect();
  return [r.left + (cx * r.width) / app.canvas.canvas.width, r.top + (cy * r.height) / app.canvas.canvas.height];
}"""
WIDGET_VALUE = "([id, name]) => app.graph.getNodeById(id).widgets.find((w) => w.name === name).value"
NODE_ID = "(type) => app.graph.nodes.find((n) => n.type === type)?.id ?? null"
# Put a node at the left of the view, clear of the editor panel (top right).
SHOW_NODE = """(id) => {
  const node = app.graph.getNodeById(id);
  app.canvas.ds.scale = 1;
  app.canvas.ds.offset[0] = 120 - node.pos[0];
  app.canvas.ds.offset[1] = 150 - node.pos[1];
  app.canvas.setDirty(true, true);
}"""
# Scroll the canvas so that a node's widget is near the top left of the view.
SHOW_WIDGET = """([id, name]) => {
  const node = app.graph.getNodeById(id);
  const w = node.widgets.find((x) => x.name === name);
  app.canvas.ds.scale = 1;
  app.canvas.ds.offset[0] = 120 - node.pos[0];
  app.canvas.ds.offset[1] = 200 - (node.pos[1] + w.y);
  app.canvas.setDirty(true, true);
}"""


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


@pytest.fixture(scope="module")
def web_host(sd15_host):
    """The session's server, with the settings a first visit would ask about and the tests' user presets."""
    server, ckpt, loras, _ = sd15_host
    settings = server.workdir / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(settings.read_text()) if settings.exists() else {}
    current.update({"Comfy.TutorialCompleted": True})  # no template gallery over the canvas
    settings.write_text(json.dumps(current))
    presets = ww.write_user_presets(server.workdir / "user")
    try:
        yield server, ckpt, loras
    finally:
        presets.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        ww.missing_tool("the Python package playwright is not installed (requirements-host.txt)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        ww.missing_tool(f"Chromium is not installed at {CHROMIUM} (Debian package chromium)")
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    profile = tempfile.mkdtemp(prefix="lora-lab-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900})
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


class PageLog:
    """Console messages, page errors and failed requests of the page, and which of them are ours."""

    def __init__(self, page):
        self.entries: list[str] = []
        page.on("console", lambda m: m.type in ("error", "warning") and self.entries.append(
            f"console.{m.type}: {m.text} @ {m.location.get('url', '')}"))
        page.on("pageerror", lambda e: self.entries.append(f"pageerror: {e} {e.stack or ''}"))
        page.on("requestfailed", lambda r: self.entries.append(f"requestfailed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self.entries.append(f"HTTP {r.status}: {r.url}"))

    def ours(self) -> list[str]:
        return [e for e in self.entries if any(m in e for m in OUR_MARKERS)]


@pytest.fixture(scope="module")
def page(browser, web_host):
    server, _, _ = web_host
    page = browser.new_page()
    page.log = PageLog(page)
    page.goto(server.url)
    page.wait_for_function("() => window.app?.graph && window.LiteGraph && app.extensionManager", timeout=120_000)
    page.wait_for_function(
        "(names) => names.every((n) => app.extensions.some((e) => e.name === n))", arg=sorted(OUR_EXTENSIONS),
        timeout=60_000)
    return page


def load_workflow(page, prompt: dict) -> None:
    page.evaluate("() => document.querySelector('[data-lora-lab-panel] [data-role=close]')?.click()")
    page.evaluate("(p) => app.loadApiJson(p, 'lora-lab-web-test')", prompt)
    page.wait_for_function("(n) => app.graph.nodes.length === n", arg=len(prompt))


def open_editor(page, node_id: int) -> None:
    page.evaluate(SHOW_NODE, node_id)
    page.mouse.click(*page.evaluate(WIDGET_XY, [node_id, "lora_lab_edit_blocks"]))
    page.wait_for_selector(f"[data-lora-lab-panel][data-node-id='{node_id}'][data-state=ready]", timeout=30_000)


def type_into_text_widget(page, node_id: int, name: str, text: str) -> None:
    """Edit a text widget the way a user does: click it on the canvas, type into LiteGraph's prompt, Enter."""
    page.evaluate(SHOW_NODE, node_id)
    page.mouse.click(*page.evaluate(WIDGET_XY, [node_id, name]))
    field = page.locator(".graphdialog input.value")
    field.wait_for(state="visible", timeout=10_000)
    field.fill(text)
    field.press("Enter")
    page.wait_for_function(f"([id, name, t]) => ({WIDGET_VALUE})([id, name]) === t", arg=[node_id, name, text])


def slider(page, block: str):
    return page.locator(f"[data-lora-lab-panel] input[data-block='{block}']")


def slider_value(page, block: str) -> float:
    return float(slider(page, block).input_value())


def run_from_page(page) -> None:
    page.locator("[data-testid='queue-button']").get_by_role("button", name="Run", exact=True).click()


def test_page_loads_with_our_extensions_and_no_errors_from_them(page):
    assert OUR_EXTENSIONS <= set(page.evaluate("() => app.extensions.map((e) => e.name)"))
    types = page.evaluate("() => Object.keys(LiteGraph.registered_node_types).filter((t) => t.startsWith('LoraLab'))")
    assert {"LoraLabLoader", "LoraLabStack", "LoraLabApplyStack", "LoraLabInspect", "LoraLabMerge",
            "LoraLabBake"} <= set(types)
    served = page.evaluate("async () => (await (await window.comfyAPI.api.api.fetchApi('/lora_lab/blocks?family=sdxl')).json()).groups")
    assert [g["name"] for g in served] == ["BASE", "IN", "MID", "OUT"]
    shot(page, "01-page-loaded")
    assert page.log.ours() == []


def test_a_node_is_added_from_the_search_box(page):
    page.evaluate("() => { app.graph.clear(); app.canvas.ds.offset[0] = 0; app.canvas.ds.offset[1] = 0; }")
    search = page.get_by_role("combobox").or_(page.locator(".comfy-vue-node-search-container input")).first
    for attempt in range(3):  # a double-click that lands while the page is still settling opens nothing
        page.mouse.dblclick(700, 450)
        try:
            search.wait_for(state="visible", timeout=5_000)
            break
        except Exception as exc:  # playwright's TimeoutError (its package is imported lazily)
            if attempt == 2 or "Timeout" not in type(exc).__name__:
                raise
            page.keyboard.press("Escape")
    page.keyboard.type("LoRA Lab Loader", delay=20)
    page.wait_for_timeout(800)
    shot(page, "02-search-box")
    page.keyboard.press("Enter")
    page.wait_for_function("() => app.graph.nodes.some((n) => n.type === 'LoraLabLoader')", timeout=10_000)
    node_id = page.evaluate(NODE_ID, "LoraLabLoader")
    names = page.evaluate("(id) => app.graph.getNodeById(id).widgets.map((w) => w.name)", node_id)
    assert "block_weights" in names and names[-1] == "lora_lab_edit_blocks"
    # the editor's button is neither saved with the workflow nor sent with the prompt
    saved = page.evaluate("(id) => app.graph.getNodeById(id).serialize().widgets_values", node_id)
    assert len(saved) == len(names) - 1
    shot(page, "03-node-added")
    # a saved workflow loads back with every value in its widget
    page.evaluate("""(id) => {
      const n = app.graph.getNodeById(id);
      n.widgets.find((w) => w.name === 'block_weights').value = 'OUT*=0';
      n.widgets.find((w) => w.name === 'strength_model').value = 0.7;
    }""", node_id)
    page.evaluate("async () => app.loadGraphData(app.graph.serialize())")
    page.wait_for_function("() => app.graph.nodes.some((n) => n.type === 'LoraLabLoader')")
    again = page.evaluate(NODE_ID, "LoraLabLoader")
    assert page.evaluate(WIDGET_VALUE, [again, "block_weights"]) == "OUT*=0"
    assert page.evaluate(WIDGET_VALUE, [again, "strength_model"]) == pytest.approx(0.7)


def test_the_editor_and_the_text_field_stay_in_sync(page, web_host):
    _, ckpt, loras = web_host
    load_workflow(page, ww.loader_txt2img(ckpt, loras["kohya"], block_weights="IN04-IN08=0.5"))
    node_id = page.evaluate(NODE_ID, "LoraLabLoader")
    open_editor(page, node_id)
    panel = page.locator("[data-lora-lab-panel]")
    assert panel.get_attribute("data-family") == "sd1"
    assert "detected from" in page.locator("[data-lora-lab-panel] [data-role=family]").inner_text()
    groups = page.locator("[data-lora-lab-panel] fieldset legend").all_inner_texts()
    assert groups == ["BASE", "TEXT ENCODERS", "IN", "MID", "OUT"]
    assert page.locator("[data-lora-lab-panel] input[data-block]").count() == 1 + 1 + 12 + 1 + 12
    assert slider_value(page, "IN05") == 0.5 and slider_value(page, "OUT03") == 1.0
    shot(page, "04-editor-open")

    # slider -> text
    slider(page, "OUT03").fill("0.25")
    page.wait_for_function(f"(id) => ({WIDGET_VALUE})([id, 'block_weights']) === 'IN04-IN08=0.5, OUT03=0.25'",
                           arg=node_id)
    page.locator("[data-lora-lab-panel] input[data-block-number='M00']").fill("0")
    page.locator("[data-lora-lab-panel] input[data-block-number='M00']").press("Enter")
    page.wait_for_function(f"(id) => ({WIDGET_VALUE})([id, 'block_weights']) === 'IN04-IN08=0.5, M00=0, OUT03=0.25'",
                           arg=node_id)
    shot(page, "05-slider-changed-text")

    # preset menu -> text -> sliders
    options = page.locator("[data-lora-lab-panel] [data-role=presets] option").all_inner_texts()
    assert {"OUTALL", "INALL", "MYOUT", "HALFA"} <= set(options)
    page.locator("[data-lora-lab-panel] [data-role=presets]").select_option("OUTALL")
    page.wait_for_function(f"(id) => ({WIDGET_VALUE})([id, 'block_weights']) === 'OUTALL'", arg=node_id)
    assert slider_value(page, "IN05") == 0.0 and slider_value(page, "OUT05") == 1.0

    # text typed on the node -> sliders; a selector entry is kept, and said to be kept
    type_into_text_widget(page, node_id, "block_weights", "MYOUT, IN05.attn=0")
    page.wait_for_function("() => document.querySelector(\"[data-lora-lab-panel] input[data-block='OUT00']\").value === '0.75'")
    assert slider_value(page, "BASE") == 0.25 and slider_value(page, "IN05") == 0.25
    assert "Kept as written" in page.locator("[data-lora-lab-panel] [data-role=status]").inner_text()
    shot(page, "06-text-changed-sliders")
    slider(page, "IN00").fill("0.5")
    page.wait_for_function(
        f"(id) => ({WIDGET_VALUE})([id, 'block_weights']) === 'MYOUT, IN00=0.5, IN05.attn=0'", arg=node_id)

    # text the sliders cannot rewrite: shown, locked, and left alone
    type_into_text_widget(page, node_id, "block_weights", "IN04=R, OUT*=0.5")
    page.wait_for_selector("[data-lora-lab-panel][data-readonly=true]")
    assert "random" in page.locator("[data-lora-lab-panel] [data-role=status]").inner_text()
    assert slider(page, "OUT05").is_disabled() and slider_value(page, "OUT05") == 0.5
    shot(page, "07-read-only-text")

    # what the page sends: the text as typed, nothing of the editor
    sent = page.evaluate("async (id) => (await app.graphToPrompt()).output[String(id)].inputs", node_id)
    assert sent["block_weights"] == "IN04=R, OUT*=0.5"
    assert not any(k.startswith("lora_lab") for k in sent)


def test_a_stack_row_finds_the_family_and_the_family_can_be_chosen(page, web_host):
    _, ckpt, loras = web_host
    load_workflow(page, ww.stack_graph(ckpt, loras["kohya"]))
    node_id = page.evaluate(NODE_ID, "LoraLabStack")
    open_editor(page, node_id)
    assert page.locator("[data-lora-lab-panel]").get_attribute("data-family") == "sd1"
    page.locator("[data-lora-lab-panel] [data-role=family-choice]").select_option("sdxl")
    page.wait_for_selector("[data-lora-lab-panel][data-family=sdxl][data-state=ready]")
    assert page.locator("[data-lora-lab-panel] input[data-block]").count() == 1 + 2 + 9 + 1 + 9
    assert page.evaluate("(id) => app.graph.getNodeById(id).properties.lora_lab_family", node_id) == "sdxl"
    shot(page, "08-stack-row-sdxl")
    page.locator("[data-lora-lab-panel] [data-role=family-choice]").select_option("auto")
    page.wait_for_selector("[data-lora-lab-panel][data-family=sd1][data-state=ready]")


def test_a_workflow_runs_from_the_page_and_the_report_shows_on_the_node(page, web_host):
    _, ckpt, loras = web_host
    load_workflow(page, ww.loader_txt2img(ckpt, loras["kohya"], block_weights="IN04-IN08=0.5, M00=0",
                                          prefix="lora_lab_web/report", inspect=True))
    node_id = page.evaluate(NODE_ID, "LoraLabLoader")
    page.evaluate(SHOW_NODE, node_id)
    started = time.monotonic()
    run_from_page(page)
    report = page.locator(f"[data-lora-lab-report][data-node-id='{node_id}']")
    report.wait_for(state="visible", timeout=RUN_TIMEOUT_MS)
    text = report.inner_text()
    assert "LoRA: sd15_full_kohya.safetensors" in text and "model: SD1.x" in text
    assert page.locator(f"[data-lora-lab-report][data-node-id='{node_id}'] .ll-table-head").count() == 1
    rows = page.locator(f"[data-lora-lab-report][data-node-id='{node_id}'] .ll-table").all_inner_texts()
    assert any(r.startswith("IN04") and " 0.5 " in r for r in rows), rows
    assert any(r.startswith("M00") for r in rows), rows
    inspect_id = page.evaluate(NODE_ID, "LoraLabInspect")
    inspected = page.locator(f"[data-lora-lab-report][data-node-id='{inspect_id}']")
    inspected.wait_for(state="visible", timeout=RUN_TIMEOUT_MS)
    assert "sd15_full_kohya.safetensors" in inspected.inner_text()
    page.evaluate(SHOW_NODE, inspect_id)
    page.wait_for_timeout(300)
    shot(page, "09b-inspect-report")
    page.evaluate(SHOW_NODE, node_id)
    page.wait_for_timeout(300)
    shot(page, "09-report-on-node")
    assert time.monotonic() - started < RUN_TIMEOUT_MS / 1000

    # warning lines take the warning colour (the same rendering, fed a report with a warning)
    page.evaluate("(id) => app.graph.getNodeById(id).onExecuted({text: ['LoRA: x\\nWARNING: 3 layers overflow fp16']})",
                  node_id)
    warning = page.locator(f"[data-lora-lab-report][data-node-id='{node_id}'] .ll-warning")
    assert warning.inner_text() == "WARNING: 3 layers overflow fp16"
    assert warning.evaluate("(e) => getComputedStyle(e).color") == "rgb(240, 180, 41)"
    shot(page, "10-report-warning")


def test_the_sweep_viewer_shows_the_grid(page, web_host):
    _, ckpt, loras = web_host
    if not page.evaluate("() => 'LoraLabSweep' in LiteGraph.registered_node_types"):
        pytest.skip("LoraLabSweep is not registered by this checkout's pack (nodes/sweep.py)")
    load_workflow(page, ww.sweep_graph(ckpt, loras["kohya"], weights=(0.5, 1.0)))
    node_id = page.evaluate(NODE_ID, "LoraLabSweep")
    page.evaluate(SHOW_NODE, node_id)
    run_from_page(page)
    viewer = page.locator("[data-lora-lab-sweep]")
    viewer.wait_for(state="visible", timeout=RUN_TIMEOUT_MS)
    image = viewer.locator("img")
    page.wait_for_function(
        "() => { const i = document.querySelector('[data-lora-lab-sweep] img'); return i && i.complete && i.naturalWidth > 0; }",
        timeout=30_000)
    payload = page.evaluate("(id) => app.graph.getNodeById(id).loraLabSweep", node_id)
    layout = payload["layout"]
    assert image.evaluate("(i) => [i.naturalWidth, i.naturalHeight]") == [layout["width"], layout["height"]]
    weights = sorted(c["weight"] for c in payload["cells"] if c["weight"] is not None)
    assert weights == pytest.approx([0.5, 1.0])
    # ComfyUI's own preview of the same image is left out
    page.wait_for_timeout(500)
    names = page.evaluate("(id) => app.graph.getNodeById(id).widgets.map((w) => w.name)", node_id)
    assert "$$canvas-image-preview" not in names and "lora_lab_sweep" in names
    page.evaluate(SHOW_WIDGET, [node_id, "lora_lab_sweep"])
    page.wait_for_timeout(500)
    shot(page, "11-sweep-grid")

    cell = next(c for c in payload["cells"] if c["weight"] == pytest.approx(1.0))
    box = image.bounding_box()
    x = layout["left"] + cell["col"] * (layout["cell_w"] + layout["gap"]) + layout["cell_w"] / 2
    y = layout["top"] + cell["row"] * (layout["cell_h"] + layout["gap"]) + layout["cell_h"] / 2
    page.mouse.move(box["x"] + x * box["width"] / layout["width"], box["y"] + y * box["height"] / layout["height"])
    info = viewer.locator("[data-role=cell-info]")
    page.wait_for_function(
        f"() => document.querySelector('[data-lora-lab-sweep] [data-role=cell-info]').dataset.col === '{cell['col']}'")
    text = info.inner_text()
    assert "weight: 1" in text
    for name in cell["metrics"]:
        assert f"{name}:" in text
    assert viewer.locator("[data-mark=hover]").is_visible()
    shot(page, "12-sweep-hover")
    page.mouse.click(box["x"] + x * box["width"] / layout["width"], box["y"] + y * box["height"] / layout["height"])
    assert viewer.locator("[data-mark=pinned]").is_visible()
    bp = payload["break_point"]
    assert viewer.locator("[data-mark=break]").is_visible() == (bp is not None)
    assert viewer.locator("[data-role=break-point]").inner_text().startswith(
        "break point at weight" if bp else "no break point")
    shot(page, "13-sweep-pinned")

    # the break point marker sits on its cell (a two-weight sweep of these textures rarely has a break
    # point, so the same grid is shown again with one)
    marked = {**payload, "break_point": {"weight": cell["weight"], "row": cell["row"], "col": cell["col"],
                                         "reason": "marked by the test"}}
    page.evaluate("([id, p]) => app.graph.getNodeById(id).onExecuted({lora_lab_sweep: [p]})", [node_id, marked])
    mark = viewer.locator("[data-mark=break]")
    mark.wait_for(state="visible")
    box = image.bounding_box()
    got = mark.bounding_box()
    scale = box["width"] / layout["width"]
    assert got["x"] == pytest.approx(box["x"] + (x - layout["cell_w"] / 2) * scale, abs=1.5)
    assert got["y"] == pytest.approx(box["y"] + (y - layout["cell_h"] / 2) * scale, abs=1.5)
    assert got["width"] == pytest.approx(layout["cell_w"] * scale, abs=1.5)
    assert viewer.locator("[data-role=break-point]").inner_text() == "break point at weight 1: marked by the test"
    shot(page, "14-sweep-break-point")


def test_no_errors_from_our_code_during_these_tests(page):
    assert page.log.ours() == [], "\n".join(page.log.ours())
