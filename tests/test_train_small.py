"""LoraLabTrain in process on the reduced-width SD1.5 model and a small seeded VAE.

Runs use one torch thread: on this shared 2-core machine two threads were up to 100x slower per step
under load from other processes, and one thread keeps every figure reproducible.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from testkit.host import import_pack, use_model_dirs
from testkit.train_workflows import loras_folder, one_torch_thread, pattern_images

import_pack()

import comfy.lora  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.utils  # noqa: E402

from lora_lab.lora_ops.errors import LoraLabError, OverflowRiskError  # noqa: E402
from lora_lab.lora_ops.inspection import training_info  # noqa: E402
from lora_lab.lora_ops.plan import load_lora  # noqa: E402
from lora_lab.nodes.planning import apply_lora  # noqa: E402
from lora_lab.nodes.train import prepare, train_and_report  # noqa: E402
from lora_lab.nodes import sampling, train_host  # noqa: E402
from lora_lab.train.checkpoint import read_checkpoint, state_path_for  # noqa: E402
from lora_lab.train.parity import image_difference  # noqa: E402
from lora_lab.train.settings import TrainSettings  # noqa: E402

OVERFIT_DROP = 0.30        # the saved LoRA lowers the eps loss on its training images by at least 30%
PARITY_MAX_LEVELS = 2      # saved fp32 file vs live previews: at most 2 of 255 levels apart anywhere
RESUME_RTOL = 1e-6         # 2N steps vs N + resume + N: max |diff| / max |value| (measured: 0, bit-identical)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield



CAPTIONS = "zxq style, red, blue\nzxq style, green, grey"


@pytest.fixture
def loras(tmp_path):
    with loras_folder(tmp_path) as folder:
        yield folder


def settings(**kw) -> TrainSettings:
    base = dict(output_name="t", rank=4, alpha=4.0, steps=4, learning_rate=1e-3, resolution=64)
    base.update(kw)
    return TrainSettings(**base)


def train(small, s: TrainSettings, *, images=None, captions=CAPTIONS, image_folder="", resume_from="none",
          overwrite=False, **session_kwargs):
    patcher, clip, vae = small
    with torch.inference_mode():
        plan = prepare(patcher, s, images=pattern_images() if images is None and not image_folder else images,
                       captions=captions, image_folder=image_folder, resume_from=resume_from, overwrite=overwrite)
        out, result = train_and_report(patcher, clip, vae, plan, **session_kwargs)
    return out, result


def state_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(state_path_for(path)), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("master.")}


def lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# --- learning ------------------------------------------------------------------------------------------


def eps_loss(model, vae, images: torch.Tensor, captions: list[str], clip) -> float:
    """Mean eps-prediction MSE over fixed draws, written out for an EPS model (independent of train/):
    x_t = x0 + sigma * n, eps_hat = (x_t - denoised) / sigma."""
    gen = torch.Generator().manual_seed(99)
    comfy.model_management.load_models_gpu([model])
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(images.shape[0]):
            x0 = model.model.process_latent_in(vae.encode(images[i:i + 1]))
            cond = clip.encode_from_tokens(clip.tokenize(captions[i]))
            for sigma in (0.1, 0.5, 1.5, 4.0):
                n = torch.randn(x0.shape, generator=gen)
                s = torch.tensor([sigma])
                denoised = model.model.apply_model(x0 + sigma * n, s, c_crossattn=cond)
                eps_hat = (x0 + sigma * n - denoised) / sigma
                total += float(((eps_hat - n) ** 2).mean())
                count += 1
    return total / count


def test_overfit_lowers_the_loss(small, loras):
    s = settings(algorithm="locon", targets="all linear and conv", rank=8, alpha=8.0, steps=30, learning_rate=5e-3)
    out, result = train(small, s)
    patcher, clip, vae = small
    caps = CAPTIONS.split("\n")
    before = eps_loss(patcher, vae, pattern_images(), caps, clip)
    applied = apply_lora(patcher, None, load_lora(result.saved.path), 1.0, 0.0)
    after = eps_loss(applied.model, vae, pattern_images(), caps, clip)
    assert after <= (1 - OVERFIT_DROP) * before, (before, after)
    assert out["result"][0] is not patcher and len(result.losses) == 30
    curve = out["result"][2]
    assert curve.ndim == 4 and curve.shape[-1] == 3 and float(curve.std()) > 0


# --- determinism, resume, cancel ---------------------------------------------------------------------


def test_same_seed_same_lora_other_seed_other_lora(small, loras):
    s = dict(steps=3, caption_dropout=0.3, shuffle_captions=True, flip=True, noise_offset=0.05, min_snr_gamma=5.0,
             batch_size=2)
    _, a = train(small, settings(output_name="a", seed=7, **s))
    _, b = train(small, settings(output_name="b", seed=7, **s))
    _, c = train(small, settings(output_name="c", seed=8, **s))
    ta, tb, tc = state_tensors(a.saved.path), state_tensors(b.saved.path), state_tensors(c.saved.path)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert lora_tensors(a.saved.path).keys() == lora_tensors(b.saved.path).keys()
    assert all(torch.equal(v, lora_tensors(b.saved.path)[k]) for k, v in lora_tensors(a.saved.path).items())
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)
    assert a.losses == b.losses and a.losses != c.losses


def test_cancel_leaves_a_resumable_checkpoint_and_resume_matches_an_uninterrupted_run(small, loras):
    common = dict(steps=6, lr_schedule="cosine", warmup_steps=2, caption_dropout=0.2, flip=True, noise_offset=0.05)
    _, full = train(small, settings(output_name="full", **common))

    def cancel_after_3(step, loss):
        if step == 3:
            comfy.model_management.interrupt_current_processing(True)

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(small, settings(output_name="cut", **common), after_step=cancel_after_3)
    assert not comfy.model_management.processing_interrupted()
    files = sorted(p.name for p in loras.iterdir())
    assert files == ["cut-step000003.lora_lab_state", "cut-step000003.safetensors", "full.lora_lab_state",
                     "full.safetensors"], files  # no final file, no temporary file left behind
    ckpt = read_checkpoint(loras / "cut-step000003.safetensors")
    assert ckpt.step == 3 and ckpt.settings.steps == 6 and ckpt.optimizer_tensors
    assert load_lora(loras / "cut-step000003.safetensors").parsed.modules  # a valid LoRA file as well

    # Resume under another name with other (ignored) identity settings: they come from the metadata.
    _, resumed = train(small, settings(output_name="resumed", seed=123, rank=8, learning_rate=0.5, **common),
                       resume_from="cut-step000003.safetensors")
    assert resumed.start_step == 3 and len(resumed.losses) == 3
    assert resumed.losses == full.losses[3:]
    a, b = state_tensors(full.saved.path), state_tensors(resumed.saved.path)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    scale = max(float(a[k].abs().max()) for k in a)
    assert worst <= RESUME_RTOL * scale, (worst, scale)


def test_resume_errors(small, loras):
    train(small, settings(output_name="done", steps=2))
    with pytest.raises(LoraLabError, match="already been trained for 2 steps"):
        train(small, settings(output_name="more", steps=2), resume_from="done.safetensors")
    out, longer = train(small, settings(output_name="longer", steps=3), resume_from="done.safetensors")
    assert longer.start_step == 2 and len(longer.losses) == 1
    assert "the LR schedule now ends at step 3 (it ended at 2)" in out["result"][5]
    (loras / "done.lora_lab_state").unlink()
    with pytest.raises(LoraLabError, match="missing"):
        train(small, settings(output_name="more", steps=3), resume_from="done.safetensors")
    assert not (loras / "more.safetensors").exists()


# --- the saved file: parity, core loader, metadata, precision -------------------------------------------


def test_parity_of_the_default_precision_and_previews_through_the_progress_bar(small, loras, monkeypatch):
    sent = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: sent.append((value, total, preview)))
    s = settings(steps=6, learning_rate=2e-2, preview_every=3, preview_prompt="zxq style", preview_seed=5,
                 preview_steps=3)
    out, result = train(small, s)
    live = result.final_preview
    lab, core = result.parity["lora_lab"], result.parity["core"]
    assert image_difference(lab, live).max_levels <= PARITY_MAX_LEVELS
    assert image_difference(core, live).max_levels <= PARITY_MAX_LEVELS
    assert result.parity["core_keys"] == len(result.targets)
    # The LoRA changes the picture, so agreement means something.
    patcher, clip, vae = small
    base = train_host.render(patcher, vae, sampling.encode_prompt(clip, "zxq style"), sampling.encode_prompt(clip, ""),
                             seed=5, steps=3, latent_shape=train_host.latent_shape(patcher, vae, 64, 64))
    assert image_difference(base, live).max_levels > 4 * PARITY_MAX_LEVELS
    # Previews: steps 3 and 6, returned as a batch and streamed with the progress updates.
    assert [step for step, _ in result.previews] == [3, 6]
    assert out["result"][4].shape == (2, 64, 64, 3)
    with_image = [(v, p) for v, t, p in sent if p is not None]
    assert [v for v, _ in with_image] == [3, 6] and with_image[0][1][0] == "JPEG"
    assert "saved file through core LoraLoader" in out["result"][5]


def test_saved_file_loads_in_core_with_every_key_and_metadata_reads_back(small, loras, caplog):
    s = settings(algorithm="locon", targets="all linear and conv", steps=2, save_every=1, rank=4, alpha=2.0)
    out, result = train(small, s)
    path = Path(out["result"][3])
    assert path == loras / "t.safetensors"
    patcher, _, _ = small
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(sd, key_map)
    assert "lora key not loaded" not in caplog.text
    assert len(patches) == len(result.targets) == len({k.rsplit(".", 2)[0] for k in sd})
    assert any(w.shape[-1] == 3 for w in sd.values() if w.ndim == 4)  # LoCon's 3x3 down convs
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2" and json.loads(meta["ss_network_args"])["conv_dim"] == "4"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_steps"] == "2" and meta["ss_learning_rate"] == "0.001" and meta["ss_resolution"] == "(64, 64)"
    assert json.loads(meta["ss_tag_frequency"])["lora_lab"]["zxq style"] == 2
    assert len(meta["lora_lab.base_model_sha256"]) == 64
    assert TrainSettings.from_json(meta["lora_lab.train.settings"]) == result_settings(s)
    fields = dict(training_info(meta).fields)
    assert fields["dim (rank)"] == "4" and fields["steps"] == "2"
    assert (loras / "t-step000001.safetensors").is_file()  # save_every
    # The LORA output is the saved file as loaders read it.
    assert set(out["result"][1].parsed.modules) == {k.rsplit(".", 2)[0] for k in sd if k.endswith("lora_up.weight")}


def result_settings(s: TrainSettings) -> TrainSettings:
    return TrainSettings.from_json(s.to_json())


def test_half_precision_saves_are_checked_and_reported(small, loras):
    out, result = train(small, settings(output_name="h", steps=2, learning_rate=1e-2, save_precision="fp16"))
    report = result.precision
    assert report.precision == "fp16" and report.overflow == 0 and report.changed > 0
    assert 0 < report.max_delta_error < 1e-2
    assert "save precision fp16" in out["result"][5]
    with safe_open(str(result.saved.path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if not k.endswith(".alpha")} == {torch.float16}
    # A resume still starts from the fp32 master weights, not the rounded file.
    assert {v.dtype for v in state_tensors(result.saved.path).values()} == {torch.float32}


def test_overflowing_fp16_save_is_refused_before_writing(tmp_path):
    from lora_lab.lora_ops.adapters import LoraWeights
    from lora_lab.train.checkpoint import save_checkpoint

    weights = {"lora_unet_x": LoraWeights(up=torch.full((4, 2), 1e5), down=torch.ones(2, 3), alpha=2.0)}
    with pytest.raises(OverflowRiskError, match="fp16"):
        save_checkpoint(tmp_path / "x.safetensors", weights=weights, master_state={}, optimizer_tensors={},
                        optimizer_json="{}", metadata={}, step=1, precision="fp16")
    assert list(tmp_path.iterdir()) == []


# --- every option does something ------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_lora(small, loras):
    _, a = train(small, settings(output_name="plain", steps=2, algorithm="locon", targets="all linear and conv"))
    _, b = train(small, settings(output_name="ckpt", steps=2, algorithm="locon", targets="all linear and conv",
                                 gradient_checkpointing=True))
    ta, tb = state_tensors(a.saved.path), state_tensors(b.saved.path)
    assert all(torch.allclose(ta[k], tb[k], rtol=0, atol=1e-6) for k in ta)
    assert any(float(v.abs().max()) > 0 for k, v in ta.items() if k.endswith(".up"))


@pytest.mark.parametrize("optimizer", ["AdamW", "Adam", "SGD", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam",
                                       "Adadelta"])
def test_every_optimizer_trains(small, loras, optimizer):
    _, r = train(small, settings(output_name=optimizer, steps=1, optimizer=optimizer, learning_rate=1e-2))
    ups = [v for k, v in state_tensors(r.saved.path).items() if k.endswith(".up")]
    assert any(float(v.abs().max()) > 0 for v in ups)


def test_bf16_training_keeps_fp32_master_weights(small, loras):
    _, r = train(small, settings(output_name="bf", steps=2, training_dtype="bf16", learning_rate=1e-2))
    assert all(v.dtype == torch.float32 for v in state_tensors(r.saved.path).values())
    assert all(torch.isfinite(torch.tensor(r.losses)))


def test_block_selection_trains_only_the_named_blocks(small, loras):
    _, r = train(small, settings(output_name="blocks", steps=1, targets="block selection",
                                 target_blocks="OUT*=1, *=0"))
    assert r.targets and all(t.name.startswith("output_blocks.") for t in r.targets)


def test_folder_with_buckets(small, loras, tmp_path):
    from PIL import Image

    folder = tmp_path / "input" / "data"
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate([(96, 48), (48, 96), (64, 64)]):
        Image.new("RGB", (w, h), (40 * i, 200, 90)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"zxq style, shape {i}")
    with use_model_dirs(input_dir=tmp_path / "input"):
        with pytest.raises(LoraLabError, match="very different shapes"):
            train(small, settings(output_name="nob", steps=1), image_folder="data")
        assert list(loras.iterdir()) == []
        _, r = train(small, settings(output_name="bucketed", steps=3, buckets=True, batch_size=2),
                     image_folder=str(folder))  # absolute inside the input folder
    meta = read_checkpoint(r.saved.path).metadata
    assert meta["ss_bucket_info"].count("x") == 3 and meta["ss_num_train_images"] == "3"


# --- bad input: our error, before anything is written -----------------------------------------------------

BAD_INPUTS = [
    ("no images", {"images": torch.zeros(0, 64, 64, 3)}, "No training images"),
    ("caption count", {"captions": "only one caption"}, "2 image\\(s\\) but 1 caption"),
    ("rank zero", {"settings": {"rank": 0}}, "rank 0 is out of range"),
    ("rank too large", {"settings": {"rank": 5000}}, "rank 5000 is out of range"),
    ("rank above a layer", {"settings": {"rank": 100}}, "larger than"),
    ("steps zero", {"settings": {"steps": 0}}, "steps 0 is out of range"),
    ("path separator", {"settings": {"output_name": "../escape"}}, "not a plain file name"),
    ("folder in name", {"settings": {"output_name": "sub/name"}}, "not a plain file name"),
    ("block selection without blocks", {"settings": {"targets": "block selection"}}, "target_blocks is empty"),
    ("not a checkpoint", {"resume_from": "plain.safetensors"}, "not a LoRA Lab training checkpoint"),
    ("both sources", {"image_folder": "somewhere", "images": pattern_images()}, "Both an IMAGE batch and image_folder"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_before_writing(small, loras, case):
    _, kwargs, message = case
    kwargs = dict(kwargs)
    if kwargs.get("resume_from") == "plain.safetensors":
        from safetensors.torch import save_file

        save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 1)}, str(loras / "plain.safetensors"))
    before = sorted(p.name for p in loras.iterdir())
    s = settings(**kwargs.pop("settings", {}))
    with pytest.raises(LoraLabError, match=message):
        train(small, s, **kwargs)
    assert sorted(p.name for p in loras.iterdir()) == before


def test_other_families_are_refused(loras):
    from testkit.families import small_family_model

    with torch.inference_mode():
        patcher = small_family_model("sd2")
    with pytest.raises(LoraLabError, match=r"trains SD1.x, SDXL, Flux, Flux schnell, Chroma, Z-Image, Wan T2V models; "
                                           r"this model is SD2.x"):
        prepare(patcher, settings(), images=pattern_images(), captions=CAPTIONS)
    assert list(loras.iterdir()) == []


def test_existing_output_needs_overwrite(small, loras):
    train(small, settings(output_name="same", steps=1))
    with pytest.raises(LoraLabError, match="already exists"):
        train(small, settings(output_name="same", steps=1))
    _, r = train(small, settings(output_name="same", steps=1), overwrite=True)
    assert r.saved.path.name == "same.safetensors"
