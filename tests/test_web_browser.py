"""The front end in a real browser: Debian's Chromium, driven by Playwright, on the real ComfyUI host
(the session's server from ``tests/conftest.py``) with this pack's ``web/`` extensions, in both of the page's
renderers: the classic canvas and Nodes 2.0 (the Vue renderer, switched on through its setting).

One page and one server for the whole module. One prompt (``web_workflows.page_graph``: loader, multi-LoRA
loader, inspector, sweep, bake) is run in the classic renderer; the Nodes 2.0 tests look at the same nodes
(old nodes), then load the workflow again (new nodes) and run it, mostly from ComfyUI's cache. Each state is saved
as a screenshot under ``test-artifacts/web/``.

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
import urllib.request
import uuid
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
OUR_EXTENSIONS = {"LoraLab.BlockEditor", "LoraLab.Reports", "LoraLab.SweepViewer", "LoraLab.MultiLoader",
                  "LoraLab.TriggerWords", "LoraLab.Notices", "LoraLab.Migrations", "LoraLab.TrainGroups",
                  "LoraLab.NumberFormat"}
OUR_MARKERS = ("/extensions/lora_lab/", "/lora_lab/", "LoraLab.", "lora-lab", "lora_lab")
NOT_OURS = ("api.comfy.org",)  # the page asks the registry about every node, ours too; nothing is reachable here
RUN_TIMEOUT_S = 600
EDIT_BUTTON = "edit block weights"
TRIGGERS = ["zxq style", "glowing"]

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
# Graph rectangles [x, y, w, h] (title included) of every node.
NODE_BOXES = "() => Object.fromEntries(app.graph.nodes.map((n) => [n.id, [...n.boundingRect]]))"
VUE_SETTING = "Comfy.VueNodes.Enabled"


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _get(server, path: str):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.url + path, timeout=60) as response:
        return response.status, response.read()


@pytest.fixture(scope="module")
def web_host(sd15_host):
    """The session's server, with the settings a first visit would ask about, the tests' user presets and
    trigger words for the kohya file (a Civitai Helper sidecar)."""
    server, ckpt, loras, _ = sd15_host
    settings = server.workdir / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(settings.read_text()) if settings.exists() else {}
    current.update({"Comfy.TutorialCompleted": True, VUE_SETTING: False})  # no template gallery over the canvas
    settings.write_text(json.dumps(current))
    presets = ww.write_user_presets(server.workdir / "user")
    sidecar = server.loras_dir / (Path(loras["kohya"]).stem + ".civitai.info")
    sidecar.write_text(json.dumps({"trainedWords": TRIGGERS}))
    try:
        yield server, ckpt, loras
    finally:
        presets.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)


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
        return [e for e in self.entries if any(m in e for m in OUR_MARKERS) and not any(m in e for m in NOT_OURS)]


def wait_ready(page) -> None:
    page.wait_for_function("() => window.app?.graph && window.LiteGraph && app.extensionManager", timeout=120_000)
    page.wait_for_function(
        "(names) => names.every((n) => app.extensions.some((e) => e.name === n))", arg=sorted(OUR_EXTENSIONS),
        timeout=60_000)


@pytest.fixture(scope="module")
def page(browser, web_host):
    server, _, _ = web_host
    page = browser.new_page()
    page.log = PageLog(page)
    page.goto(server.url)
    wait_ready(page)
    return page


def set_renderer(page, vue: bool) -> None:
    page.evaluate("async ([key, on]) => await app.extensionManager.setting.set(key, on)", [VUE_SETTING, vue])
    page.wait_for_timeout(800)


def load_workflow(page, prompt: dict) -> None:
    page.evaluate("() => document.querySelector('[data-lora-lab-panel] [data-role=close]')?.click()")
    page.evaluate("(p) => app.loadApiJson(p, 'lora-lab-web-test')", prompt)
    page.wait_for_function("(n) => app.graph.nodes.length === n", arg=len(prompt))


def open_editor(page, node_id: int) -> None:
    page.evaluate(SHOW_NODE, node_id)
    page.mouse.click(*page.evaluate(WIDGET_XY, [node_id, EDIT_BUTTON]))
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


def history_count(server) -> int:
    return len(json.loads(_get(server, "/history")[1]))


def run_from_page(page, server=None) -> None:
    """Press the page's Run button; with ``server``, wait until the prompt finished and the page has drawn it."""
    before = history_count(server) if server is not None else None
    # toasts (the page's own, e.g. "Updated" after a list refresh) sit over the Run button for a few seconds
    page.evaluate("() => document.querySelectorAll('.p-toast-message .p-toast-close-button').forEach((b) => b.click())")
    page.wait_for_timeout(300)
    page.locator("[data-testid='queue-button']").get_by_role("button", name="Run", exact=True).click()
    if server is None:
        return
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        history = json.loads(_get(server, "/history")[1])
        if len(history) > before:
            entry = list(history.values())[-1]
            status = entry.get("status", {})
            assert status.get("status_str") == "success", json.dumps(status)[:3000]
            page.wait_for_timeout(800)
            return
        time.sleep(1)
    raise AssertionError(f"the prompt did not finish within {RUN_TIMEOUT_S} s")


def bring_into_view(page, selector: str) -> None:
    """Move the canvas (either renderer) so that the element's top left is at (150, 150) of the window, scale 1."""
    page.evaluate("() => { app.canvas.ds.scale = 1; app.canvas.setDirty(true, true); }")
    page.wait_for_timeout(300)
    for _ in range(2):  # the DOM follows the canvas a frame later
        page.evaluate("""(sel) => {
          const r = document.querySelector(sel).getBoundingClientRect();
          app.canvas.ds.offset[0] -= r.left - 150;
          app.canvas.ds.offset[1] -= r.top - 150;
          app.canvas.setDirty(true, true);
        }""", selector)
        page.wait_for_timeout(300)


def show_all(page) -> None:
    """Fit every node into the view (for a screenshot), in either renderer."""
    page.evaluate("""() => {
      const title = LiteGraph.NODE_TITLE_HEIGHT;
      const boxes = app.graph.nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]);
      const x0 = Math.min(...boxes.map((b) => b[0])), y0 = Math.min(...boxes.map((b) => b[1]));
      const x1 = Math.max(...boxes.map((b) => b[0] + b[2])), y1 = Math.max(...boxes.map((b) => b[1] + b[3]));
      const r = app.canvas.canvas.getBoundingClientRect();
      const scale = Math.min(1, (r.width - 160) / (x1 - x0), (r.height - 160) / (y1 - y0));
      app.canvas.ds.scale = scale;
      app.canvas.ds.offset[0] = 80 / scale - x0;
      app.canvas.ds.offset[1] = 110 / scale - y0;
      app.canvas.setDirty(true, true);
    }""")
    page.wait_for_timeout(600)


def saved_workflow(page) -> dict:
    """The workflow as the page saves it (JSON: what is undefined in the page is left out, not null)."""
    return json.loads(page.evaluate("() => JSON.stringify(app.graph.serialize())"))


def rect(page, selector: str) -> dict:
    return page.locator(selector).first.bounding_box()


def inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack)


def overlap(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


def boxes_overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def search(page, text: str) -> list[str]:
    """Type ``text`` into the page's node search box; the results' titles, in order (the box stays open)."""
    page.evaluate("() => { app.canvas.ds.offset[0] = 0; app.canvas.ds.offset[1] = 0; app.canvas.setDirty(true, true); }")
    dialog = page.locator(".comfy-vue-node-search-container").first
    for attempt in range(3):  # a double-click that lands while the page is still settling opens nothing
        page.mouse.dblclick(700, 600)
        try:
            dialog.wait_for(state="visible", timeout=5_000)
            break
        except Exception as exc:  # playwright's TimeoutError (its package is imported lazily)
            if attempt == 2 or "Timeout" not in type(exc).__name__:
                raise
            page.keyboard.press("Escape")
    field = dialog.locator("input").first
    field.fill(text)
    page.wait_for_timeout(900)
    return page.evaluate("""() => [...document.querySelectorAll(
        '.comfy-vue-node-search-container .p-autocomplete-option, .comfy-vue-node-search-container li[role=option]')]
        .map((e) => e.innerText.split('\\n')[0].trim()).filter(Boolean)""")


def close_search(page) -> None:
    page.keyboard.press("Escape")
    page.locator(".comfy-vue-node-search-container").first.wait_for(state="hidden", timeout=5_000)


# --- classic renderer -----------------------------------------------------------------------------------------

def test_page_loads_with_our_extensions_and_no_errors_from_them(page):
    assert OUR_EXTENSIONS <= set(page.evaluate("() => app.extensions.map((e) => e.name)"))
    types = page.evaluate("() => Object.keys(LiteGraph.registered_node_types).filter((t) => t.startsWith('LoraLab'))")
    assert {"LoraLabLoader", "LoraLabStack", "LoraLabApplyStack", "LoraLabInspect", "LoraLabMerge",
            "LoraLabBake", "LoraLabMultiLoader", "LoraLabSweep", "LoraLabTrain"} <= set(types)
    served = page.evaluate("async () => (await (await window.comfyAPI.api.api.fetchApi('/lora_lab/blocks?family=sdxl')).json()).groups")
    assert [g["name"] for g in served] == ["BASE", "IN", "MID", "OUT"]
    shot(page, "01-page-loaded")
    assert page.log.ours() == []


def test_the_search_box_finds_the_loaders_first_and_the_block_weight_nodes(page):
    page.evaluate("() => app.graph.clear()")
    titles = search(page, "lora")
    shot(page, "02-search-lora")
    close_search(page)
    ours = [t for t in titles if t.startswith("LoRA Lab")]
    # core's own loaders come first (the page ranks nodes people use most first); the LoRA Lab loader right after
    assert titles[:2] == ["Load LoRA", "LoraLoaderModelOnly"] and titles.index("LoRAs") <= 3, titles
    assert titles.index("LoRAs") < min(titles.index(t) for t in ours), titles
    titles = search(page, "block weight")
    shot(page, "02b-search-block-weight")
    close_search(page)
    assert {"LoRA Lab Loader (block weights)", "LoRA Lab Stack (block weights)",
            "LoRA Lab Bake Block Weights"} <= set(titles), titles


def test_a_node_is_added_from_the_search_box(page):
    page.evaluate("() => app.graph.clear()")
    search(page, "LoRA Lab Loader")
    shot(page, "02c-search-box")
    page.keyboard.press("Enter")
    page.wait_for_function("() => app.graph.nodes.some((n) => n.type === 'LoraLabLoader')", timeout=10_000)
    node_id = page.evaluate(NODE_ID, "LoraLabLoader")
    names = page.evaluate("(id) => app.graph.getNodeById(id).widgets.map((w) => w.name)", node_id)
    assert "block_weights" in names and names[-3:] == [EDIT_BUTTON, "lora_lab_triggers", "lora_lab_report"]
    # the page's own additions are neither saved with the workflow nor sent with the prompt
    saved = page.evaluate("(id) => app.graph.getNodeById(id).serialize().widgets_values", node_id)
    assert len(saved) == len(names) - 3
    shot(page, "03-node-added")
    # a saved workflow loads back with every value in its widget
    page.evaluate("""(id) => {
      const n = app.graph.getNodeById(id);
      n.widgets.find((w) => w.name === 'block_weights').value = 'OUT*=0';
      n.widgets.find((w) => w.name === 'strength_model').value = 0.7;
    }""", node_id)
    page.evaluate("async () => app.loadGraphData(JSON.parse(JSON.stringify(app.graph.serialize())))")
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
    # the panel leaves the Run button free
    assert not overlap(rect(page, "[data-lora-lab-panel]"), rect(page, "[data-testid='queue-button']"))
    # which blocks this LoRA touches: the kohya fixture has no layer in IN00, IN03, IN06, IN09 (SD1.5's downsamplers)
    page.wait_for_selector("[data-lora-lab-panel] [data-row='IN04'][data-touched=true]")
    untouched = page.locator("[data-lora-lab-panel] .ll-row.ll-untouched").evaluate_all("(rows) => rows.map((r) => r.dataset.row)")
    assert {"IN00", "IN03", "IN06", "IN09"} <= set(untouched) and "OUT03" not in untouched
    assert "touches" in page.locator("[data-lora-lab-panel] [data-role=lora-blocks]").inner_text()
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
    assert not any(k.startswith("lora_lab") or k == EDIT_BUTTON for k in sent)


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
    # the kohya file is an SD1.x LoRA: the panel says so instead of marking SDXL blocks
    assert "made for SD1.x" in page.locator("[data-lora-lab-panel] [data-role=lora-blocks]").inner_text()
    shot(page, "08-stack-row-sdxl")
    page.locator("[data-lora-lab-panel] [data-role=family-choice]").select_option("auto")
    page.wait_for_selector("[data-lora-lab-panel][data-family=sd1][data-state=ready]")
    # a row that feeds nothing yet: the family the LoRA file was made for, not "SD1.x (not detected)"
    page.evaluate("(id) => app.graph.getNodeById(id).disconnectOutput(0)", node_id)
    page.locator("[data-lora-lab-panel] button[title^='Detect']").click()
    page.wait_for_selector("[data-lora-lab-panel][data-state=ready]")
    family = page.locator("[data-lora-lab-panel] [data-role=family]").inner_text()
    assert "was made for" in family and "not detected" not in family, family


def test_the_page_graph_runs_and_every_node_shows_its_result(page, page_run):
    ids = page_run["ids"]
    boxes = page.evaluate(NODE_BOXES)
    # reports: on their node, below every widget, wrapped (nothing cut), and no node grew over another one
    for node_id in (ids["loader"], ids["multi"], ids["inspect"], ids["bake"]):
        report = page.locator(f"[data-lora-lab-report][data-node-id='{node_id}']")
        assert report.is_visible(), node_id
        assert report.evaluate("(e) => getComputedStyle(e).whiteSpace") == "pre-wrap"
        assert report.evaluate("(e) => e.scrollWidth <= e.clientWidth + 1"), f"report of node {node_id} is cut"
    for a, box_a in boxes.items():
        for b, box_b in boxes.items():
            if a < b and (a, b) not in page_run["overlapping_before"]:
                assert not boxes_overlap(box_a, box_b), (a, b, box_a, box_b)
    loader = page.locator(f"[data-lora-lab-report][data-node-id='{ids['loader']}']")
    text = loader.inner_text()
    assert "LoRA: sd15_full_kohya.safetensors" in text and "of 344 applied" in text  # the whole line, wrapped
    assert page.locator(f"[data-lora-lab-report][data-node-id='{ids['loader']}'] .ll-table-head").count() == 1
    multi = page.locator(f"[data-lora-lab-report][data-node-id='{ids['multi']}']").inner_text()
    assert "[1/1] LoRA: sd15_full_diffusers.safetensors" in multi
    page.evaluate(SHOW_NODE, ids["loader"])
    page.wait_for_timeout(300)
    shot(page, "09-reports-on-nodes")

    # warning lines take the warning colour (the same rendering, fed a report with a warning)
    page.evaluate("(id) => app.graph.getNodeById(id).onExecuted({text: ['LoRA: x\\nWARNING: 3 layers overflow fp16']})",
                  ids["inspect"])
    warning = page.locator(f"[data-lora-lab-report][data-node-id='{ids['inspect']}'] .ll-warning")
    assert warning.inner_text() == "WARNING: 3 layers overflow fp16"
    assert warning.evaluate("(e) => getComputedStyle(e).color") == "rgb(240, 180, 41)"

    # the baked file is in every LoRA list of the page without pressing R: core's loader, ours, the rows' menu
    baked = f"{page_run['bake']}.safetensors"
    page.wait_for_function("""(name) => app.graph.nodes.filter((n) => n.type === 'LoraLoader' || n.type === 'LoraLabLoader')
        .every((n) => n.widgets.find((w) => w.name === 'lora_name').options.values.includes(name))""", arg=baked,
        timeout=30_000)
    page.wait_for_function("""(name) => [...document.querySelectorAll('[data-lora-lab-rows] select[data-role=lora] option')]
        .some((o) => o.value === name)""", arg=baked, timeout=30_000)


def test_the_sweep_viewer_shows_the_grid(page, page_run):
    node_id = page_run["ids"]["sweep"]
    check_sweep_viewer(page, node_id, "classic")


def check_sweep_viewer(page, node_id: int, renderer: str) -> None:
    """Grid, hover, pin and break outline of the sweep viewer of ``node_id``, in either renderer."""
    viewer = page.locator(f"[data-lora-lab-sweep][data-node-id='{node_id}']")
    page.evaluate(SHOW_NODE, node_id)  # the classic renderer shows DOM widgets of nodes on screen only
    viewer.wait_for(state="visible", timeout=30_000)
    bring_into_view(page, f"[data-lora-lab-sweep][data-node-id='{node_id}']")
    image = viewer.locator("img")
    page.wait_for_function(
        "(id) => { const i = document.querySelector(`[data-lora-lab-sweep][data-node-id='${id}'] img`); return i && i.complete && i.naturalWidth > 0; }",
        arg=str(node_id), timeout=30_000)
    payload = page.evaluate("(id) => app.graph.getNodeById(id).loraLabSweep", node_id)
    layout = payload["layout"]
    assert image.evaluate("(i) => [i.naturalWidth, i.naturalHeight]") == [layout["width"], layout["height"]]
    weights = sorted(c["weight"] for c in payload["cells"] if c["weight"] is not None)
    assert weights == pytest.approx([0.5, 1.0])
    # ComfyUI's own preview of the same image is left out
    page.wait_for_timeout(500)
    names = page.evaluate("(id) => app.graph.getNodeById(id).widgets.map((w) => w.name)", node_id)
    assert "$$canvas-image-preview" not in names and "lora_lab_sweep" in names
    assert page.evaluate("(id) => !(app.nodeOutputs?.[String(id)]?.images?.length)", node_id)
    shot(page, f"11-sweep-grid-{renderer}")

    cell = next(c for c in payload["cells"] if c["weight"] == pytest.approx(1.0))
    box = image.bounding_box()
    x = layout["left"] + cell["col"] * (layout["cell_w"] + layout["gap"]) + layout["cell_w"] / 2
    y = layout["top"] + cell["row"] * (layout["cell_h"] + layout["gap"]) + layout["cell_h"] / 2
    page.mouse.move(box["x"] + x * box["width"] / layout["width"], box["y"] + y * box["height"] / layout["height"])
    info = viewer.locator("[data-role=cell-info]")
    page.wait_for_function(
        f"() => document.querySelector(`[data-lora-lab-sweep][data-node-id='{node_id}'] [data-role=cell-info]`).dataset.col === '{cell['col']}'")
    text = info.inner_text()
    assert "weight: 1" in text
    for name, label in (("change_ref", "change vs no LoRA (1 - SSIM)"), ("change_prev", "change vs previous weight"),
                        ("psnr_ref", "PSNR vs no LoRA (dB)")):
        assert name not in text and (label in text) == (name in cell["metrics"]), (name, text)  # readable names
    assert viewer.locator("[data-mark=hover]").is_visible()
    shot(page, f"12-sweep-hover-{renderer}")
    page.mouse.click(box["x"] + x * box["width"] / layout["width"], box["y"] + y * box["height"] / layout["height"])
    assert viewer.locator("[data-mark=pinned]").is_visible()
    bp = payload["break_point"]
    assert viewer.locator("[data-mark=break]").is_visible() == (bp is not None)
    line = viewer.locator("[data-role=break-point]")
    assert line.inner_text().startswith("break point at weight" if bp else "no break point")
    if bp is None:  # "no break point" is not a warning
        assert line.evaluate("(e) => getComputedStyle(e).color") != "rgb(255, 120, 117)"
    shot(page, f"13-sweep-pinned-{renderer}")

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
    assert line.inner_text() == "break point at weight 1: marked by the test"
    assert line.evaluate("(e) => getComputedStyle(e).color") == "rgb(255, 120, 117)"
    shot(page, f"14-sweep-break-point-{renderer}")
    page.evaluate("([id, p]) => app.graph.getNodeById(id).onExecuted({lora_lab_sweep: [p]})", [node_id, payload])


def test_trigger_words_show_on_the_loaders_and_go_into_the_prompt(page, page_run):
    ids = page_run["ids"]
    page.evaluate(SHOW_NODE, ids["loader"])
    chips = page.locator(f"[data-lora-lab-triggers][data-node-id='{ids['loader']}'] button")
    chips.first.wait_for(state="visible", timeout=10_000)
    assert chips.all_inner_texts() == TRIGGERS
    # the loader's CLIP goes through the multi loader to both prompts; the positive one gets the word
    chips.first.click()
    assert page.evaluate(WIDGET_VALUE, [ids["positive"], "text"]) == "a lighthouse, zxq style"
    assert page.evaluate(WIDGET_VALUE, [ids["negative"], "text"]) == "blurry"
    chips.first.click()  # not twice
    assert page.evaluate(WIDGET_VALUE, [ids["positive"], "text"]) == "a lighthouse, zxq style"
    shot(page, "15-trigger-words")
    # the multi loader's rows show the words of their LoRA too (its switched-off kohya row)
    assert page.locator("[data-lora-lab-rows] [data-row='1'] [data-trigger='glowing']").count() == 1
    page.evaluate("([id, t]) => app.graph.getNodeById(id).widgets.find((w) => w.name === 'text').value = t",
                  [ids["positive"], "a lighthouse"])


def test_multi_loader_rows_in_the_classic_renderer(page, page_run):
    check_multi_loader(page, page_run["ids"]["multi"], "classic")


def check_multi_loader(page, node_id: int, renderer: str) -> None:
    """Add, switch off, reorder, edit and remove rows; the node's loras text follows every edit."""
    rows = "[data-lora-lab-rows]"
    page.evaluate(SHOW_NODE, node_id)
    page.locator(rows).first.wait_for(state="visible", timeout=10_000)
    bring_into_view(page, rows)
    node_rows = page.locator(rows).filter(has=page.locator("[data-role=add]")).nth(0)
    page.wait_for_timeout(300)

    def saved() -> list[dict]:
        return json.loads(page.evaluate(WIDGET_VALUE, [node_id, "loras"]))

    start = saved()
    assert [r["lora"] for r in start] == ["sd15_full_diffusers.safetensors", "sd15_full_kohya.safetensors"]
    node_rows.locator("[data-role=add]").click()
    page.wait_for_function(f"(id) => JSON.parse(({WIDGET_VALUE})([id, 'loras'])).length === 3", arg=node_id)
    row = node_rows.locator("[data-row='2']").first
    row.locator("select[data-role=lora]").select_option("sd15_full_kohya.safetensors")
    row.locator("input[data-role=strength]").fill("0.35")
    row.locator("input[data-role=strength]").press("Tab")
    row.locator("input[data-role=block_weights]").fill("OUT*=0.5")
    row.locator("input[data-role=block_weights]").press("Tab")
    assert saved()[2] == {"on": True, "lora": "sd15_full_kohya.safetensors", "strength": 0.35, "strength_clip": 1,
                          "block_weights": "OUT*=0.5"}
    node_rows.locator("[data-row='2'] [data-role=up]").first.click()
    assert [r["strength"] for r in saved()] == [0.5, 0.35, 1]
    node_rows.locator("[data-row='0'] input[data-role=on]").first.uncheck()
    assert [r["on"] for r in saved()] == [False, True, False]
    # the block panel edits one row's block weights
    node_rows.locator("[data-row='1'] [data-role=edit-blocks]").first.click()
    page.wait_for_selector(f"[data-lora-lab-panel][data-node-id='{node_id}'][data-target='row:1'][data-state=ready]",
                           timeout=30_000)
    assert slider_value(page, "OUT03") == 0.5 and slider_value(page, "IN04") == 1.0
    slider(page, "IN04").fill("0")
    page.wait_for_function(f"(id) => JSON.parse(({WIDGET_VALUE})([id, 'loras']))[1].block_weights === 'IN04=0, OUT*=0.5'",
                           arg=node_id)
    assert node_rows.locator("[data-row='1'] input[data-role=block_weights]").first.input_value() == "IN04=0, OUT*=0.5"
    shot(page, f"16-multi-loader-rows-{renderer}")
    page.locator("[data-lora-lab-panel] [data-role=close]").click()
    sent = page.evaluate("async (id) => (await app.graphToPrompt()).output[String(id)].inputs.loras", node_id)
    assert json.loads(sent) == saved()
    node_rows.locator("[data-row='1'] [data-role=remove]").first.click()
    node_rows.locator("[data-row='0'] input[data-role=on]").first.check()
    assert saved() == start


def test_reports_and_the_grid_survive_a_reload_and_a_cached_run(page, web_host, page_run):
    server, _, _ = web_host
    ids = page_run["ids"]
    workflow = saved_workflow(page)
    page.reload()
    wait_ready(page)
    set_renderer(page, False)
    page.evaluate("async (w) => app.loadGraphData(w)", workflow)
    page.wait_for_function("(id) => app.graph.getNodeById(id)", arg=ids["loader"])

    def shown(node_id: int, kind: str = "report"):
        page.evaluate(SHOW_NODE, node_id)  # the classic renderer shows DOM widgets of nodes on screen only
        element = page.locator(f"[data-lora-lab-{kind}][data-node-id='{node_id}']")
        element.wait_for(state="visible", timeout=10_000)
        return element

    for node_id in (ids["loader"], ids["multi"], ids["inspect"]):
        assert shown(node_id).locator(".ll-note").inner_text() == "(report of the last run)"
    assert shown(ids["sweep"], "sweep").locator("img").is_visible()
    heights = page.evaluate("(ids) => ids.map((id) => app.graph.getNodeById(id).size[1])", [ids["loader"], ids["multi"]])
    run_from_page(page, server)  # everything comes from ComfyUI's cache: no report is sent for the loaders
    for node_id in (ids["loader"], ids["multi"], ids["inspect"]):
        assert "LoRA" in shown(node_id).inner_text()
    after = page.evaluate("(ids) => ids.map((id) => app.graph.getNodeById(id).size[1])", [ids["loader"], ids["multi"]])
    assert all(h <= a <= h + 40 for h, a in zip(heights, after)), (heights, after)  # the rows' trigger words may add a line
    boxes = page.evaluate(NODE_BOXES)
    for a, box_a in boxes.items():
        for b, box_b in boxes.items():
            if a < b and (a, b) not in page_run["overlapping_before"]:
                assert not boxes_overlap(box_a, box_b), (a, b, box_a, box_b)
    page.evaluate(SHOW_NODE, ids["loader"])
    page.wait_for_timeout(300)
    shot(page, "17-after-reload-and-cached-run")


def test_merge_and_train_seeds_have_no_control_and_old_workflows_load(page, web_host):
    _, ckpt, loras = web_host
    load_workflow(page, ww.merge_graph(ckpt, loras["kohya"]))
    merge = page.evaluate(NODE_ID, "LoraLabMerge")
    names = page.evaluate("(id) => app.graph.getNodeById(id).widgets.map((w) => w.name)", merge)
    assert "seed" in names and "control_after_generate" not in names
    # a workflow saved before the change: "randomize" right after the seed
    old = json.loads(page.evaluate("(id) => JSON.stringify(app.graph.getNodeById(id).serialize())", merge))
    values = old["widgets_values"]
    at = names.index("seed")
    old["widgets_values"] = values[:at + 1] + ["randomize"] + values[at + 1:]
    workflow = saved_workflow(page)
    workflow["nodes"] = [old if n["id"] == merge else n for n in workflow["nodes"]]
    page.evaluate("async (w) => app.loadGraphData(w)", workflow)
    page.wait_for_function("(id) => app.graph.getNodeById(id)", arg=merge)
    for name, value in zip(names, values):
        if name in ("seed", "method", "normalization", "name", "density"):
            assert page.evaluate(WIDGET_VALUE, [merge, name]) == value, name
    # two Runs send the same seed (nothing randomises it)
    first = page.evaluate("async (id) => (await app.graphToPrompt()).output[String(id)].inputs.seed", merge)
    second = page.evaluate("async (id) => (await app.graphToPrompt()).output[String(id)].inputs.seed", merge)
    assert first == second == 42
    page.evaluate("() => { app.graph.clear(); const n = LiteGraph.createNode('LoraLabTrain'); n.pos = [100, 100]; app.graph.add(n); }")
    train = page.evaluate(NODE_ID, "LoraLabTrain")
    names = page.evaluate("(id) => app.graph.getNodeById(id).widgets.map((w) => w.name)", train)
    assert "seed" in names and "control_after_generate" not in names


def test_train_groups_its_advanced_settings(page):
    check_train_groups(page, "classic")


def check_train_groups(page, renderer: str) -> None:
    page.evaluate("() => { app.graph.clear(); const n = LiteGraph.createNode('LoraLabTrain'); n.pos = [150, 120]; app.graph.add(n);"
                  " app.canvas.ds.scale = 0.8; app.canvas.ds.offset[0] = 0; app.canvas.ds.offset[1] = 0; app.canvas.setDirty(true, true); }")
    node_id = page.evaluate(NODE_ID, "LoraLabTrain")
    page.wait_for_timeout(500)
    visible = """(id) => { const n = app.graph.getNodeById(id);
      return n.widgets.filter((w) => !w.hidden && !w.options?.hidden && n.isWidgetVisible(w) && w.serialize !== false).length; }"""
    shown, total = page.evaluate(visible, node_id), page.evaluate(
        "(id) => app.graph.getNodeById(id).widgets.filter((w) => w.serialize !== false).length", node_id)
    assert shown <= 15 and total >= 30, (shown, total)
    if renderer == "vue":
        rendered = page.locator(f"[data-node-id='{node_id}'].lg-node .lg-node-widget").count()
        assert rendered <= shown + 3, rendered
        # a small float reads as itself (Nodes 2.0 rounds to whole numbers unless told the decimals)
        lr = page.locator(f"[data-node-id='{node_id}'].lg-node input[aria-label='learning_rate']")
        assert float(lr.input_value()) == pytest.approx(1e-4)  # 1.32 shows "0" without the decimals set
    height = page.evaluate("(id) => app.graph.getNodeById(id).size[1]", node_id)
    shot(page, f"18-train-grouped-{renderer}")
    page.evaluate("(id) => { const w = app.graph.getNodeById(id).widgets.find((x) => x.name === 'show advanced settings');"
                  " w.value = true; w.callback(true); }", node_id)
    page.wait_for_timeout(500)
    assert page.evaluate(visible, node_id) == total
    if renderer == "vue":
        assert page.locator(f"[data-node-id='{node_id}'].lg-node .lg-node-widget").count() >= total
    else:
        assert page.evaluate("(id) => app.graph.getNodeById(id).size[1]", node_id) > height + 300
    shot(page, f"19-train-advanced-shown-{renderer}")


def test_a_cancelled_training_names_its_checkpoint(page):
    page.evaluate("() => { app.graph.clear(); const n = LiteGraph.createNode('LoraLabTrain'); n.pos = [150, 120]; app.graph.add(n); }")
    node_id = page.evaluate(NODE_ID, "LoraLabTrain")
    text = ("Training 'my_lora' was cancelled after step 120 of 500. Saved my_lora-step000120.safetensors in the loras "
            "folder: pick it in resume_from and run again to continue (same output name is fine).")
    page.evaluate("([id, text]) => window.comfyAPI.api.api.dispatchCustomEvent('lora_lab.notice', "
                  "{kind: 'cancelled', text, node: String(id), saved: []})", [node_id, text])
    toast = page.locator(".p-toast-message").filter(has_text="my_lora-step000120.safetensors")
    toast.wait_for(state="visible", timeout=10_000)
    assert text in page.locator(f"[data-lora-lab-report][data-node-id='{node_id}']").inner_text()
    shot(page, "20-cancel-notice")


def test_example_workflows_and_help_pages_are_served(page, web_host):
    server, _, _ = web_host
    templates = json.loads(_get(server, "/api/workflow_templates")[1])
    pack = "lora_lab"
    names = sorted(p.stem for p in (REPO_ROOT / "example_workflows").glob("*.json"))
    assert len(names) >= 4 and sorted(templates[pack]) == names
    registered = set(page.evaluate("() => Object.keys(LiteGraph.registered_node_types)"))
    for name in names:
        status, body = _get(server, f"/api/workflow_templates/{pack}/{name}.json")
        workflow = json.loads(body)
        assert status == 200 and {n["type"] for n in workflow["nodes"]} <= registered, name
        page.evaluate("async (w) => app.loadGraphData(w)", workflow)
        page.wait_for_function("(n) => app.graph.nodes.length === n", arg=len(workflow["nodes"]))
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
        assert any(v["class_type"].startswith("LoraLab") for v in prompt.values()), name
        if name == names[0]:
            page.evaluate("() => { app.canvas.ds.scale = 0.7; app.canvas.ds.offset[0] = 0; app.canvas.ds.offset[1] = 0; app.canvas.setDirty(true, true); }")
            shot(page, "21-example-workflow")
    # the node library's help: /extensions/<pack>/docs/<node>.md, the page's own lookup
    for node in sorted(registered):
        if node.startswith("LoraLab"):
            status, body = _get(server, f"/extensions/{pack}/docs/{node}.md")
            assert status == 200 and body.decode().startswith("# "), node
            assert "## Inputs" in body.decode() and "## Outputs" in body.decode(), node


# --- Nodes 2.0 (the Vue renderer) ----------------------------------------------------------------------------

def test_nodes_2_0_shows_the_old_nodes_results(page, web_host, page_run):
    """The nodes that ran in the classic renderer, after switching the setting: viewer, reports, buttons."""
    workflow = page_run["workflow"]
    page.evaluate("async (w) => app.loadGraphData(w)", workflow)
    set_renderer(page, True)
    ids = page_run["ids"]
    page.wait_for_selector(f"[data-node-id='{ids['loader']}'].lg-node", timeout=30_000)
    check_vue_nodes(page, ids, "old")
    check_sweep_viewer(page, ids["sweep"], "vue")


def check_vue_nodes(page, ids: dict, which: str) -> None:
    for key in ("loader", "multi", "inspect", "bake"):
        node = rect(page, f"[data-node-id='{ids[key]}'].lg-node")
        report = page.locator(f"[data-node-id='{ids[key]}'].lg-node [data-lora-lab-report]")
        report.wait_for(state="visible", timeout=10_000)
        assert inside(report.bounding_box(), node), (key, report.bounding_box(), node)
        assert report.evaluate("(e) => e.scrollWidth <= e.clientWidth + 1"), key
    button = page.locator(f"[data-node-id='{ids['loader']}'].lg-node button").filter(has_text=EDIT_BUTTON)
    assert button.inner_text().strip() == EDIT_BUTTON
    assert page.locator(f"[data-node-id='{ids['loader']}'].lg-node").get_by_text("lora_lab_edit_blocks").count() == 0
    chips = page.locator(f"[data-node-id='{ids['loader']}'].lg-node [data-lora-lab-triggers] button")
    assert chips.all_inner_texts()[:2] == TRIGGERS
    rows = page.locator(f"[data-node-id='{ids['multi']}'].lg-node [data-lora-lab-rows]")
    assert rows.is_visible() and rows.locator("[data-row]").count() >= 2
    # the hidden loras text is not drawn in Nodes 2.0
    assert page.locator(f"[data-node-id='{ids['multi']}'].lg-node textarea").count() == 0
    show_all(page)
    shot(page, f"22-nodes-2.0-{which}-nodes")


def test_nodes_2_0_the_editor_and_every_widget_kind(page, page_run):
    ids = page_run["ids"]
    loader = page.locator(f"[data-node-id='{ids['loader']}'].lg-node")
    page.evaluate(SHOW_NODE, ids["loader"])
    page.wait_for_timeout(400)
    loader.locator("button").filter(has_text=EDIT_BUTTON).click()
    page.wait_for_selector(f"[data-lora-lab-panel][data-node-id='{ids['loader']}'][data-state=ready]", timeout=30_000)
    assert not overlap(rect(page, "[data-lora-lab-panel]"), rect(page, "[data-testid='queue-button']"))
    # a STRING widget drawn by Nodes 2.0: typing into it moves the sliders
    text_input = loader.locator("input[aria-label='block_weights']").first
    text_input.fill("OUT*=0.25")
    text_input.press("Enter")
    page.wait_for_function("() => document.querySelector(\"[data-lora-lab-panel] input[data-block='OUT05']\").value === '0.25'",
                           timeout=10_000)
    # slider -> the Nodes 2.0 field
    slider(page, "IN04").fill("0.5")
    page.wait_for_function(f"(id) => ({WIDGET_VALUE})([id, 'block_weights']) === 'IN04=0.5, OUT*=0.25'",
                           arg=ids["loader"])
    shot(page, "23-nodes-2.0-editor")
    page.locator("[data-lora-lab-panel] [data-role=close]").click()
    check_multi_loader(page, ids["multi"], "vue")
    check_train_groups(page, "vue")


def test_nodes_2_0_new_nodes_show_their_results(page, web_host, page_run):
    """Nodes created in Nodes 2.0 and run there: the sweep (from ComfyUI's cache) and a loader run again."""
    server, ckpt, loras = web_host
    prompt = ww.page_graph(ckpt, loras, bake_name=page_run["bake"])
    prompt["10"]["inputs"]["loras"] = ww.multi_rows([(loras["diffusers"], 0.4, 0.5, "OUTALL", True)])
    load_workflow(page, prompt)
    ids = page_run["ids"]
    page.wait_for_selector(f"[data-node-id='{ids['sweep']}'].lg-node", timeout=30_000)
    # the new node's viewer is in the node already (hidden), so Nodes 2.0 attaches it
    assert page.locator(f"[data-node-id='{ids['sweep']}'].lg-node [data-lora-lab-sweep]").count() == 1
    run_from_page(page, server)
    check_sweep_viewer(page, ids["sweep"], "vue-new")
    report = page.locator(f"[data-node-id='{ids['multi']}'].lg-node [data-lora-lab-report]")
    report.wait_for(state="visible", timeout=30_000)
    assert "strength 0.4" in report.inner_text() or "0.4" in report.inner_text()
    assert inside(report.bounding_box(), rect(page, f"[data-node-id='{ids['multi']}'].lg-node"))
    show_all(page)
    shot(page, "24-nodes-2.0-new-nodes")
    set_renderer(page, False)


def test_no_errors_from_our_code_during_these_tests(page):
    assert page.log.ours() == [], "\n".join(page.log.ours())


# --- the shared run --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page_run(page, web_host):
    """The page graph loaded and run once in the classic renderer, with a core LoraLoader beside it (whose list
    must learn the baked file): node ids, the bake name, the workflow as the page saves it."""
    server, ckpt, loras = web_host
    set_renderer(page, False)
    bake = f"web_baked_{uuid.uuid4().hex[:8]}"
    prompt = ww.page_graph(ckpt, loras, bake_name=bake)
    load_workflow(page, prompt)
    page.evaluate("""() => { const n = LiteGraph.createNode('LoraLoader'); n.pos = [-500, 100]; app.graph.add(n);
      n.mode = 4; }""")  # bypassed: listed, not run
    ids = {"loader": 2, "positive": 3, "negative": 4, "inspect": 9, "multi": 10, "sweep": 11, "bake": 12}
    before = page.evaluate(NODE_BOXES)
    overlapping = {(a, b) for a in before for b in before if a < b and boxes_overlap(before[a], before[b])}
    started = time.monotonic()
    run_from_page(page, server)
    page.locator(f"[data-lora-lab-report][data-node-id='{ids['bake']}']").wait_for(state="visible", timeout=60_000)
    page.locator(f"[data-lora-lab-sweep][data-node-id='{ids['sweep']}']").wait_for(state="attached", timeout=60_000)
    return {"ids": ids, "bake": bake, "overlapping_before": overlapping, "seconds": time.monotonic() - started,
            "workflow": saved_workflow(page)}
