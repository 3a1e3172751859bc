"""What the page needs from the nodes, in process on the real ComfyUI: the stack type that does not
collide with other packs' LORA_STACK (and takes their lists), seeds without "control after generate", the
multi-LoRA loader equal to LoraLabApplyStack, the Train node's advanced inputs, resuming a run under its own
name, the cancel notice, the LoRA info route (trigger words, blocks touched), and the sweep's row labels and
break rule for uneven steps."""

from __future__ import annotations

import json
import math

import comfy.model_management as mm
import pytest
import torch
from comfy_execution.validation import validate_node_input
from PIL import Image, ImageDraw

from testkit import fixtures, models
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops.chart import font
from lora_lab.lora_ops.errors import LoraLabError
from lora_lab.lora_ops.stack import LoraStack, StackRow
from lora_lab.lora_ops.sweep import LABEL_FONT, Cell, break_point, compose_grid, label_lines
from lora_lab.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, page_routes
from lora_lab.nodes.multi import LoraLabMultiLoader, rows_from_json
from lora_lab.nodes.stack import LoraLabApplyStack, LoraLabStack
from lora_lab.nodes.stack_types import FOREIGN_STACK_TYPE, STACK_INPUT, STACK_TYPE, read_stack


@pytest.fixture(scope="module")
def fx():
    return fixtures.build("sd15")


@pytest.fixture
def loras(fx, tmp_path):
    for name in ("kohya", "locon", "loha"):
        (tmp_path / f"sd15_{name}.safetensors").write_bytes(fx[name].path.read_bytes())
    with use_model_dirs(loras_dir=tmp_path):
        yield tmp_path


def _loaded(patcher) -> dict[str, torch.Tensor]:
    mm.load_models_gpu([patcher])
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


# --- the stack type --------------------------------------------------------------------------------------------

def _declared(node, name):
    inputs = node.INPUT_TYPES()
    return {**inputs["required"], **inputs.get("optional", {})}[name][0]


def test_stack_outputs_cannot_be_linked_to_other_packs_inputs_but_their_stacks_plug_into_ours():
    assert STACK_TYPE != FOREIGN_STACK_TYPE
    producers = [n for n in NODE_CLASS_MAPPINGS.values() if "lora_stack" in getattr(n, "RETURN_NAMES", ())]
    assert {p.__name__ for p in producers} == {"LoraLabStack", "LoraLabMultiLoader"}
    for node in producers:
        out = node.RETURN_TYPES[node.RETURN_NAMES.index("lora_stack")]
        assert out == STACK_TYPE
        # ComfyUI's own check, as the server validates a link: ours never goes into a LORA_STACK input
        assert not validate_node_input(out, FOREIGN_STACK_TYPE)
    readers = [n for n in NODE_CLASS_MAPPINGS.values()
               if "lora_stack" in {**n.INPUT_TYPES()["required"], **n.INPUT_TYPES().get("optional", {})}]
    assert {r.__name__ for r in readers} == {"LoraLabStack", "LoraLabApplyStack", "LoraLabConflicts", "LoraLabMerge",
                                             "LoraLabSweep", "LoraLabMultiLoader"}
    for node in readers:
        declared = _declared(node, "lora_stack")
        assert declared == STACK_INPUT
        assert validate_node_input(STACK_TYPE, declared) and validate_node_input(FOREIGN_STACK_TYPE, declared)


def test_other_packs_stacks_are_read_and_anything_else_is_refused_with_a_clear_error(loras):
    ours = LoraStack((StackRow("a.safetensors", 0.5, 0.5),))
    assert read_stack(ours) is ours and read_stack(None) == LoraStack()
    # Efficiency / Comfyroll / Easy-Use: tuples of (name, model strength, clip strength); "None" rows are empty
    got = read_stack([("sd15_kohya.safetensors", 0.8, 0.4), ("None", 1.0, 1.0), ["sd15_locon.safetensors", 1, 0]])
    assert got.rows == (StackRow("sd15_kohya.safetensors", 0.8, 0.4), StackRow("sd15_locon.safetensors", 1.0, 0.0))
    # LoRA Manager passes paths: one inside a loras folder becomes the name ComfyUI lists
    got = read_stack([(str(loras / "sd15_loha.safetensors"), 1.0, 1.0)])
    assert got.rows[0].lora_name == "sd15_loha.safetensors"
    for bad, words in [([("x.safetensors", "strong", 1.0)], "model strength is 'strong'"),
                       ([("x.safetensors", 1.0, math.nan)], "clip strength is nan"),
                       ([("x.safetensors", 1.0)], "entry 1 is"),
                       (["x.safetensors"], "entry 1 is 'x.safetensors'"),
                       ({"lora": "x"}, "received dict"),
                       (7, "received int 7")]:
        with pytest.raises(LoraLabError, match="LORA_STACK list of") as err:
            read_stack(bad)
        assert words in str(err.value)


def test_a_foreign_stack_applies_like_the_same_rows_built_with_lora_lab_stack(loras):
    model, clip = models.small_sd15()
    (ours,) = LoraLabStack().add("sd15_kohya.safetensors", 0.7, 0.3, "", True)
    (ours,) = LoraLabStack().add("sd15_locon.safetensors", -0.4, 1.0, "", True, lora_stack=ours)
    theirs = [("sd15_kohya.safetensors", 0.7, 0.3), ("sd15_locon.safetensors", -0.4, 1.0)]
    a = LoraLabApplyStack().apply(model, ours, "none", 1.0, clip=clip)["result"]
    b = LoraLabApplyStack().apply(model, theirs, "none", 1.0, clip=clip)["result"]
    wa, wb = _loaded(a[0]), _loaded(b[0])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a foreign stack chains into a LoRA Lab Stack row too
    (chained,) = LoraLabStack().add("sd15_loha.safetensors", 1.0, 1.0, "OUTALL", True, lora_stack=theirs)
    assert [r.lora_name for r in chained.rows] == ["sd15_kohya.safetensors", "sd15_locon.safetensors",
                                                   "sd15_loha.safetensors"]


# --- seeds -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("node", ["LoraLabMerge", "LoraLabTrain"])
def test_seeds_that_would_re_run_a_node_on_every_run_have_no_control_after_generate(node):
    """The page adds "control after generate: randomize" to an input named seed unless the input says
    control_after_generate: false (frontend rule: `spec.control_after_generate ?? name in [seed, noise_seed]`)."""
    spec = _declared(NODE_CLASS_MAPPINGS[node], "seed")
    assert spec == "INT"
    options = {**NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]}["seed"][1]
    assert options["control_after_generate"] is False and options["default"] == 0


# --- the multi-LoRA loader ---------------------------------------------------------------------------------------

ROWS = [
    {"on": True, "lora": "sd15_kohya.safetensors", "strength": 0.8, "strength_clip": 0.5, "block_weights": "OUTALL"},
    {"on": False, "lora": "sd15_loha.safetensors", "strength": 1.0, "strength_clip": 1.0, "block_weights": ""},
    {"on": True, "lora": "sd15_locon.safetensors", "strength": -0.6, "strength_clip": 0.0,
     "block_weights": "IN04-IN08=0.5, M00=0"},
]


def test_multi_loader_patches_equal_lora_lab_apply_stack_bit_for_bit(loras):
    model, clip = models.small_sd15()
    multi = LoraLabMultiLoader().load(model, json.dumps(ROWS), clip=clip)
    stack = None
    for r in ROWS:
        (stack,) = LoraLabStack().add(r["lora"], r["strength"], r["strength_clip"], r["block_weights"], r["on"],
                                      lora_stack=stack)
    applied = LoraLabApplyStack().apply(model, stack, "none", 1.0, clip=clip)
    m_model, m_clip, m_report, m_stack = multi["result"]
    s_model, s_clip, s_report = applied["result"]
    assert m_stack == stack and m_report == s_report and multi["ui"] == applied["ui"]
    assert s_report.count("targets:") == 2
    for ours, reference in ((m_model, s_model), (m_clip.patcher, s_clip.patcher)):
        got, want = _loaded(ours), _loaded(reference)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    base = _loaded(model)
    assert any(not torch.equal(base[k], _loaded(m_model)[k]) for k in base)  # the rows did change the model


def test_multi_loader_rows_an_incoming_stack_and_nothing_switched_on(loras):
    model, clip = models.small_sd15()
    out = LoraLabMultiLoader().load(model, json.dumps([{"on": False, "lora": "sd15_kohya.safetensors"}]), clip=clip)
    assert out["result"][0] is model and out["result"][1] is clip and "pass through" in out["result"][2]
    got = LoraLabMultiLoader().load(model, json.dumps(ROWS[:1]), clip=clip,
                                    lora_stack=[("sd15_loha.safetensors", 0.5, 0.5)])["result"][3]
    assert [r.lora_name for r in got.rows] == ["sd15_loha.safetensors", "sd15_kohya.safetensors"]


@pytest.mark.parametrize("text, words", [
    ("[{", "not readable JSON"), ('{"a": 1}', "not a list"), ("[3]", "row 1 is 3"),
    ('[{"lora": "a", "strength": "x"}]', "strength is 'x'"), ('[{"lora": "a", "on": "yes"}]', "on is 'yes'"),
    ('[{"lora": 5}]', "lora is 5"), ('[{"lora": "a", "block_weights": 1}]', "block_weights is 1"),
])
def test_multi_loader_bad_rows_are_named(text, words):
    with pytest.raises(LoraLabError, match="Add LoRA") as err:
        rows_from_json(text)
    assert words in str(err.value)


def test_multi_loader_defaults_clip_strength_to_model_strength_and_skips_empty_rows():
    rows = rows_from_json('[{"lora": "a", "strength": 0.4}, {"lora": ""}, {"lora": "b", "on": false}]')
    assert rows == [StackRow("a", 0.4, 0.4, "", True), StackRow("b", 1.0, 1.0, "", False)]


# --- names the page's search finds ----------------------------------------------------------------------------------

def test_block_weight_nodes_say_so_in_their_names():
    """The page's node search matches the node's name and display name only (frontend 1.32-1.35)."""
    with_blocks = {name for name, node in NODE_CLASS_MAPPINGS.items()
                   if "block_weights" in {**node.INPUT_TYPES()["required"], **node.INPUT_TYPES().get("optional", {})}}
    assert {"LoraLabLoader", "LoraLabStack", "LoraLabSweep", "LoraLabBake"} <= with_blocks
    for name in ("LoraLabLoader", "LoraLabStack", "LoraLabBake"):
        assert "block weight" in NODE_DISPLAY_NAME_MAPPINGS[name].lower(), name


# --- Train: advanced inputs, resume under the same name, the cancel notice ------------------------------------------

def test_train_groups_its_advanced_inputs():
    required = NODE_CLASS_MAPPINGS["LoraLabTrain"].INPUT_TYPES()["required"]
    widgets = [n for n, spec in required.items() if not (isinstance(spec[0], str) and spec[0] in ("MODEL", "CLIP", "VAE"))]
    shown = [n for n in widgets if not (len(required[n]) > 1 and required[n][1].get("advanced"))]
    assert len(widgets) >= 30 and len(shown) <= 15, shown
    assert {"output_name", "steps", "learning_rate", "rank", "resolution", "preview_every"} <= set(shown)
    assert required["preview_every"][1]["default"] == 0


# --- the LoRA info route -----------------------------------------------------------------------------------------

def test_lora_info_trigger_words_come_from_sidecars_then_metadata_then_caption_tags(loras, fx, tmp_path):
    target = loras / "tagged.safetensors"
    from safetensors.torch import load_file, save_file

    tags = {"img": {"zxq style": 12, "red": 3, "blue": 2}}
    save_file(load_file(str(fx["kohya"].path)), str(target),
              {"ss_tag_frequency": json.dumps(tags), "modelspec.trigger_phrase": "zxq, glowing"})
    (loras / "tagged.civitai.info").write_text(json.dumps({"trainedWords": ["civ word", "zxq"]}))
    (loras / "tagged.metadata.json").write_text(json.dumps({"civitai": {"trainedWords": ["manager word"]}}))
    (loras / "tagged.json").write_text(json.dumps({"activation text": "webui word, civ word"}))
    info = page_routes.lora_info("tagged.safetensors")
    assert [t["text"] for t in info["triggers"]] == ["civ word", "zxq", "manager word", "webui word", "glowing",
                                                     "zxq style", "red", "blue"]
    assert info["triggers"][0]["source"] == "Civitai" and info["triggers"][-1]["source"] == "caption tags"
    (loras / "broken.civitai.info").write_text("{not json")
    target.rename(loras / "broken.safetensors")
    unreadable_sidecar = page_routes.lora_info("broken.safetensors")["triggers"]
    assert [t["text"] for t in unreadable_sidecar[:2]] == ["zxq", "glowing"]  # the file's own metadata still counts
    assert "not in the loras folder" in page_routes.lora_info("nope.safetensors")["error"]


def test_lora_info_blocks_are_the_blocks_the_file_touches_with_their_energy(loras, fx):
    from lora_lab.lora_ops.inspection import file_block
    from lora_lab.nodes.lora_files import cached_lora

    info = page_routes.lora_info("sd15_kohya.safetensors", blocks=True)
    assert "blocks" not in page_routes.lora_info("sd15_kohya.safetensors")  # trigger words only: the header
    lora = cached_lora(str(loras / "sd15_kohya.safetensors"))
    assert info["family"] == "sd1" and info["block_family"] == "sd1"
    counts: dict[str, int] = {}
    energy: dict[str, float] = {}
    for name, adapter in lora.parsed.modules.items():
        block = file_block(name, "sd1")
        counts[block] = counts.get(block, 0) + 1
        up, down, scale = adapter.low_rank()
        dense = scale * up.double().reshape(up.shape[0], -1) @ down.double().reshape(down.shape[0], -1)
        energy[block] = energy.get(block, 0.0) + float((dense ** 2).sum())  # float64 reference, full matrices
    assert {b: v["targets"] for b, v in info["blocks"].items()} == counts
    top = max(math.sqrt(e) for e in energy.values())
    for block, e in energy.items():
        assert info["blocks"][block]["energy"] == pytest.approx(math.sqrt(e) / top, rel=1e-4)
    assert max(v["energy"] for v in info["blocks"].values()) == pytest.approx(1.0)


# --- sweep: row labels and uneven weight steps ------------------------------------------------------------------------

def test_long_row_labels_wrap_and_keep_their_end():
    draw, f = ImageDraw.Draw(Image.new("RGB", (1, 1))), font(LABEL_FONT)
    name = "my_character_lora_v3_final_really_final_epoch_000012.safetensors"
    a, b = label_lines(f"{name} 0.3", draw, f), label_lines(f"{name} 0.7", draw, f)
    assert a != b and a[-1].endswith("0.3") and b[-1].endswith("0.7") and len(a) <= 3
    assert label_lines("OUTALL", draw, f) == ["OUTALL"]
    # drawn in the grid: the two rows' label pixels differ where the strengths are
    cell = Image.new("RGB", (64, 64), (40, 90, 140))
    grid, geo = compose_grid([[cell], [cell]], ["0.5"], [f"{name} 0.3", f"{name} 0.7"], "t", [[[]], [[]]],
                             [None, None], (64, 64))
    assert geo.left < 8 + 240
    top, bottom = [grid.crop((0, geo.cell_box(r, 0)[1], geo.left, geo.cell_box(r, 0)[3])) for r in (0, 1)]
    assert top.tobytes() != bottom.tobytes()


def _cells(weights, changes):
    out = [Cell(0, 0, None, "ref", 0)]
    for i, (w, d) in enumerate(zip(weights, changes)):
        c = Cell(0, i + 1, w, "", i + 1)
        c.change_prev = d
        out.append(c)
    return out


def test_uneven_weight_steps_do_not_flag_a_break_but_a_real_jump_does():
    # 0.1, 1.05, 2.0: the second step is 9.5x longer, the change grows with it: no break
    assert break_point(_cells([0.1, 1.05, 2.0], [0.02, 0.19, 0.19])) is None
    # a sweep from -1 to 1 taken from the weakest up (steps of 0.5 then 1 across zero)
    assert break_point(_cells([-0.25, 0.25, -0.75, 0.75], [0.03, 0.06, 0.12, 0.18])) is None
    # the same spacing with a change 8x the trend per unit of weight is still found
    bp = break_point(_cells([0.1, 1.05, 2.0], [0.02, 0.19, 1.5 * 0.95]))
    assert bp is not None and bp[0].weight == 2.0 and "over a step of 0.95" in bp[1]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_inputs(**overrides):
    from lora_lab.nodes.train import LoraLabTrain

    inputs = {}
    for name, spec in LoraLabTrain.INPUT_TYPES()["required"].items():
        if len(spec) > 1 and "default" in spec[1]:
            inputs[name] = spec[1]["default"]
        elif isinstance(spec[0], list):
            inputs[name] = spec[0][0]
    inputs.update(dict(rank=4, alpha=4.0, steps=4, learning_rate=1e-3, resolution=64, captions="zxq, red\nzxq, blue"))
    inputs.update(overrides)
    return inputs


def test_cancel_names_the_checkpoint_and_resuming_under_the_same_name_continues(tmp_path, monkeypatch, one_thread):
    """The cancel notice names the saved checkpoint; picking it in resume_from with the same output name (what
    the notice and the README say) trains on instead of refusing the name."""
    from comfy.model_management import InterruptProcessingException, interrupt_current_processing
    from lora_lab.nodes import train as train_node

    from testkit.small_vae import small_vae

    with torch.inference_mode():
        patcher, clip = models.small_sd15()
        vae = small_vae()
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    original = train_node.train_and_report

    def cancel_after_2(*args, after_step=None, **kwargs):
        def step(s, loss):
            after_step(s, loss)
            if s == 2:
                interrupt_current_processing(True)
        return original(*args, after_step=step, **kwargs)

    sent = []
    monkeypatch.setattr(train_node.notices, "send", lambda kind, text, saved=None, node=None: sent.append((kind, text, saved)))
    folder = tmp_path / "loras"
    folder.mkdir()
    with use_model_dirs(loras_dir=folder), torch.inference_mode():
        monkeypatch.setattr(train_node, "train_and_report", cancel_after_2)
        with pytest.raises(InterruptProcessingException):
            train_node.LoraLabTrain().train(patcher, clip, vae, images=images, **_train_inputs(output_name="run"))
        assert sorted(p.name for p in folder.iterdir()) == ["run-step000002.lora_lab_state", "run-step000002.safetensors"]
        assert len(sent) == 1 and sent[0][0] == "cancelled" and sent[0][2] == ["run-step000002.safetensors"]
        assert "after step 2 of 4" in sent[0][1] and "run-step000002.safetensors" in sent[0][1]
        assert "resume_from" in sent[0][1]
        monkeypatch.setattr(train_node, "train_and_report", original)
        out = train_node.LoraLabTrain().train(patcher, clip, vae, images=images, **_train_inputs(
            output_name="run", resume_from="run-step000002.safetensors"))
        assert "resumed from step 2" in out["result"][5]
        assert (folder / "run.safetensors").is_file()
        # the same name with another run's checkpoint, or without resuming, is still refused
        with pytest.raises(LoraLabError, match="already exists"):
            train_node.LoraLabTrain().train(patcher, clip, vae, images=images, **_train_inputs(output_name="run"))
        with pytest.raises(LoraLabError, match="earlier run named 'other'"):
            (folder / "other-step000001.safetensors").write_bytes(b"")
            train_node.LoraLabTrain().train(patcher, clip, vae, images=images, **_train_inputs(
                output_name="other", resume_from="run-step000002.safetensors"))


# --- what the registry and the Templates menu show ---------------------------------------------------------------

def test_registry_metadata_and_example_workflows():
    import tomllib

    from testkit.host import REPO_ROOT

    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert {"Repository", "Documentation", "Bug Tracker"} <= set(meta["project"]["urls"])
    icon = meta["tool"]["comfy"]["Icon"]
    assert icon.startswith("https://") and icon.endswith("/docs/icon.png")
    with Image.open(REPO_ROOT / "docs" / "icon.png") as im:
        assert im.size[0] == im.size[1] <= 400
    examples = sorted((REPO_ROOT / "example_workflows").glob("*.json"))
    assert len(examples) >= 5
    import nodes as core_nodes  # ComfyUI's own node list

    known = set(NODE_CLASS_MAPPINGS) | set(core_nodes.NODE_CLASS_MAPPINGS)
    for path in examples:
        workflow = json.loads(path.read_text())
        types = {n["type"] for n in workflow["nodes"]}
        assert types <= known and any(t.startswith("LoraLab") for t in types), path.name
        assert path.with_suffix(".jpg").is_file(), f"{path.name} has no thumbnail for the Templates menu"
        for node in workflow["nodes"]:
            if node["type"] == "LoraLabMultiLoader":
                assert rows_from_json(node["widgets_values"][0])  # the rows are readable
