"""LoRA Lab demo: real workflows on a real ComfyUI host, images saved to demo-output/.

Run with `make demo`. It builds the synthetic models and LoRA files (cached under .cache/lora-lab),
starts ComfyUI headless on a free loopback port (CPU, files in .cache/demo-host), submits workflows
through `/prompt`, and writes what they produce to demo-output/, printing the paths.

The models carry seeded random weights (no model hub is reachable here), so the pictures are
textures rather than lighthouses; what they show is which runs differ and which are identical.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from testkit import fixtures, models  # noqa: E402
from testkit.host import ComfyServer, copy_outputs  # noqa: E402
from testkit.workflows import Sampling, merge_and_save, stack_nodes, stack_txt2img, sweep, txt2img  # noqa: E402

DEMO_OUTPUT = REPO_ROOT / "demo-output"
DEMO_HOST = REPO_ROOT / ".cache" / "demo-host"
SAMPLING = Sampling(width=128, height=128, steps=4)


def shown(path: Path) -> Path:
    """``path`` as printed: relative to the repository when it lies inside it."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def run_workflow(server: ComfyServer, prompt: dict, name: str, timeout: float = 900) -> tuple[list[Path], dict]:
    """Run an API-format prompt and copy its saved images to demo-output/<name>_NN.png."""
    history = server.run_prompt(prompt, timeout=timeout)
    copied = copy_outputs(server.output_files(history), DEMO_OUTPUT, name)
    for path in copied:
        print(f"  {shown(path)}")
    return copied, history


def labelled_strip(cells: list[tuple[str, Path]], title: str, out: Path) -> Path:
    """Images side by side with a label under each, a title line on top, and below each image its
    difference from the first one (amplified 8x), so that small changes are visible."""
    images = [Image.open(p).convert("RGB") for _, p in cells]
    w, h = images[0].size
    pad, label_h, title_h = 8, 18, 22
    sheet = Image.new("RGB", (pad + len(images) * (w + pad), title_h + 2 * (h + label_h) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), title, fill="black")
    first = np.asarray(images[0], dtype=np.int16)
    for i, ((label, _), img) in enumerate(zip(cells, images)):
        x = pad + i * (w + pad)
        sheet.paste(img, (x, title_h))
        draw.text((x, title_h + h + 3), label, fill="black")
        diff = np.abs(np.asarray(img, dtype=np.int16) - first)
        sheet.paste(Image.fromarray(np.clip(diff * 8, 0, 255).astype(np.uint8)), (x, title_h + h + label_h))
        draw.text((x, title_h + 2 * h + label_h + 3), f"|diff| mean {diff.mean():.1f}", fill="black")
    sheet.save(out)
    return out


def diagnostics_workflow(checkpoint: str, lora: str, rows) -> dict:
    """LoraLabInspect and LoraLabConflicts, their charts saved by core SaveImage."""
    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
         "inspect": {"class_type": "LoraLabInspect", "inputs": {"lora_name": lora, "model": ["ckpt", 0],
                                                                "clip": ["ckpt", 1]}},
         "save_inspect": {"class_type": "SaveImage", "inputs": {"images": ["inspect", 1],
                                                                "filename_prefix": "demo_inspect"}}}
    link = stack_nodes(g, rows)
    g["conflicts"] = {"class_type": "LoraLabConflicts", "inputs": {"model": ["ckpt", 0], "lora_stack": link}}
    g["save_conflicts"] = {"class_type": "SaveImage", "inputs": {"images": ["conflicts", 1],
                                                                 "filename_prefix": "demo_conflicts"}}
    return g


def sweep_demo(server: ComfyServer, ckpt: str, names: dict[str, str]) -> bool:
    """The headline: a LoRA at 0.1 ... 1.0 next to a no-LoRA reference in one batch, with its metrics
    chart, then a two-LoRA grid (kohya file across, the diffusers file's strength down)."""
    import json
    import shutil

    print("1. LoraLabSweep: the kohya LoRA at 0.1 ... 1.0 plus a no-LoRA reference, same seed, one batch:")
    g = sweep(ckpt, names["kohya"], "demo_sweep", weight_start=0.1, weight_end=1.0, weight_count=10,
              sampling=SAMPLING)
    g["chart"] = {"class_type": "SaveImage", "inputs": {"images": ["sweep", 2], "filename_prefix": "demo_sweep_chart"}}
    files, history = run_workflow(server, g, "sweep")
    payload = history["outputs"]["sweep"]["lora_lab_sweep"][0]
    report = json.loads((server.output_dir / payload["grid"]["subfolder"] / payload["grid"]["filename"])
                        .with_suffix(".json").read_text())
    shutil.copy(server.output_dir / payload["grid"]["subfolder"] / Path(payload["grid"]["filename"]).with_suffix(".json"),
                DEMO_OUTPUT / "sweep_report.json")
    print(f"   mode: {report['mode']}; {report['seconds']:.1f} s for {len(report['cells'])} cells")
    for cell in report["cells"]:
        m = cell["metrics"]
        if cell["weight"] is not None:
            print(f"   weight {cell['weight']:>4}: change vs reference {m['change_ref']:.3f}, vs previous "
                  f"{m['change_prev']:.3f}, PSNR {m['psnr_ref']:.1f} dB {' '.join(cell['flags'])}")
    bp = report["break_points"][0]
    print(f"   break point: {bp['reason'] if bp else 'none found (no flag, no jump)'}")
    print("2. LoraLabSweep, two LoRAs: kohya across, diffusers-format LoRA at 0.3 / 0.7 down:")
    g = sweep(ckpt, names["kohya"], "demo_sweep_2d", weight_start=0.3, weight_end=1.0, weight_count=3,
              axis="lora_b_strength", axis_values="0.3, 0.7", lora_b=names["diffusers"], sampling=SAMPLING)
    run_workflow(server, g, "sweep_2d")
    return len(report["cells"]) == 11


def family_demo() -> bool:
    """A non-SD family end to end: a small Flux model built from ComfyUI's own Flux classes (seeded), a
    LoRA saved the way diffusers' Flux pipeline saves a PEFT LoRA, and one in kohya naming, run through
    LoRA Lab's nodes in this process on the same real host (no text encoder of Flux's size fits here, so
    the conditioning is seeded, as a Flux encode node would hand it over; ComfyUI's tiny autoencoder
    decodes). Returns whether every check held."""
    import shutil
    import tempfile

    import torch
    from safetensors.torch import load_file

    from testkit.host import import_comfy, import_pack, use_model_dirs

    import_comfy()  # the host on sys.path in this process (the earlier steps ran in the server's)
    import_pack()
    import comfy.model_management as mm
    import comfy.sample
    import comfy.sd

    from testkit import core_ref, family_loras
    from testkit.families import family_conditioning, small_family_model
    from testkit.small_vae import small_taesd
    from lora_lab.nodes.loader import LoraLabLoader
    from lora_lab.nodes.merge import LoraLabMerge, LoraLabSave
    from lora_lab.nodes.stack import LoraLabApplyStack, LoraLabStack
    from lora_lab.nodes.sweep import LoraLabSweep

    print("10. a non-SD family end to end: small Flux (ComfyUI's Flux classes), diffusers/PEFT and kohya LoRAs")
    model = small_family_model("flux")
    vae = small_taesd(16)
    pos, neg = family_conditioning("flux", 0), family_conditioning("flux", 1)
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros([1, 4, 16, 16]))
    noise = comfy.sample.prepare_noise(latent, 5)
    work = Path(tempfile.mkdtemp(prefix="flux-demo-", dir=DEMO_HOST.parent))
    loras, out_dir = work / "loras", work / "output"
    loras.mkdir()
    out_dir.mkdir()
    files = {naming: family_loras.family_lora("flux", naming) for naming in ("diffusers", "kohya")}
    for path in files.values():
        shutil.copy(path, loras / path.name)

    def render(patcher) -> Path:
        with torch.inference_mode():
            try:
                lat = comfy.sample.sample(patcher, noise, 4, 3.0, "euler", "simple", pos, neg, latent,
                                          disable_pbar=True, seed=5)
            finally:
                mm.unload_all_models()
            img = vae.decode(lat)[0]
        path = work / f"flux_{len(list(work.glob('flux_*.png'))):02d}.png"
        Image.fromarray(np.clip(255.0 * img.float().numpy(), 0, 255).astype(np.uint8)).save(path)
        return path

    ok = True
    with use_model_dirs(loras_dir=loras, output_dir=out_dir), torch.inference_mode():
        diffusers_name = files["diffusers"].name
        ours, _, report = LoraLabLoader().load(model, diffusers_name, 1.0, 0.0)["result"]
        print("   LoraLabLoader report (diffusers/PEFT file):\n    " + report.replace("\n", "\n    "))
        core, _ = comfy.sd.load_lora_for_models(model, None, load_file(str(files["diffusers"])), 1.0, 0.0)
        # the weights each clone changes once ComfyUI loads it (the shared model checked restored after each)
        w_ours, w_core = core_ref.loaded_weights(model, ours), core_ref.loaded_weights(model, core)
        key = next(iter(w_core))
        base = core_ref.decoded_weight(model.model, key)
        ratio = float((w_ours[key] - base).norm() / (w_core[key] - base).norm())
        ok &= set(w_ours) == set(w_core)
        print(f"   core LoraLoader on the same file: {len(w_core)} weights "
              f"changed, at scale 1 (it does not read the lora_alpha the file's header carries); LoRA Lab's delta "
              f"is {ratio:.2f}x core's, alpha / rank = 1.5, as PEFT merges it")
        ok &= abs(ratio - 1.5) < 1e-3
        cells = [("no LoRA", render(model)), ("LoRA Lab", render(ours)), ("core LoraLoader", render(core))]
        stack = None
        for path, strength in ((files["kohya"], 0.8), (files["diffusers"], -0.5)):
            stack = LoraLabStack().add(path.name, strength, 0.0, "", True, lora_stack=stack)[0]
        stacked = LoraLabApplyStack().apply(model, stack, "none", 1.0)["result"][0]
        merged = LoraLabMerge().merge(model=model, lora_stack=stack, method="concat", rank=0, energy=0.0,
                                      density=0.5, seed=0, normalization="none", normalization_target=1.0,
                                      name="flux_merged")["result"][0]
        LoraLabSave().save(merged, "flux_merged", overwrite=True)
        reloaded = LoraLabLoader().load(model, "flux_merged.safetensors", 1.0, 0.0)["result"][0]
        w_stack, w_merged = core_ref.loaded_weights(model, stacked), core_ref.loaded_weights(model, reloaded)
        ok &= set(w_stack) == set(w_merged)
        worst = max(float((w_stack[k] - w_merged[k]).abs().max()) for k in w_stack)
        print(f"   stack (kohya 0.8, diffusers -0.5) merged (concat), saved, loaded again: largest weight "
              f"difference from the live stack {worst:.2e}")
        ok &= worst < 1e-5
        cells += [("stack", render(stacked)), ("merged file", render(reloaded))]
        sweep = LoraLabSweep().sweep(
            model=model, clip=None, vae=vae, lora_name=files["kohya"].name, positive="", negative="", seed=5,
            steps=4, cfg=3.0, sampler_name="euler", scheduler="simple", width=128, height=128, weight_start=0.25,
            weight_end=1.5, weight_count=6, include_reference=True, block_weights="", axis="none", axis_values="",
            filename_prefix="flux_sweep", positive_cond=pos, negative_cond=neg)
        grid = next(out_dir.rglob("flux_sweep*.png"))
        shutil.copy(grid, DEMO_OUTPUT / "flux_sweep.png")
        print(f"   LoraLabSweep on Flux (your own conditioning connected): {DEMO_OUTPUT.name}/flux_sweep.png, "
              f"mode {json.loads(sweep['result'][3])['mode']}")
    strip = labelled_strip(cells, "LoRA Lab on a small Flux (random weights): loader, core, stack, merged file",
                           DEMO_OUTPUT / "flux_strip.png")
    print(f"   {shown(strip)}")
    shutil.rmtree(work, ignore_errors=True)
    return ok


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    DEMO_OUTPUT.mkdir(exist_ok=True)
    t0 = time.monotonic()
    print("building the synthetic SD1.5-architecture checkpoint and LoRA files (cached after the first run)...")
    checkpoint = models.sd15_checkpoint()
    loras = fixtures.build("sd15_full")
    with ComfyServer(DEMO_HOST) as server:
        ckpt = server.add_checkpoint(checkpoint)
        names = {key: server.add_lora(fx.path) for key, fx in loras.items()}
        print(f"ComfyUI up at {server.url} after {server.startup_seconds:.1f} s (log: {server.log_path})")

        swept = sweep_demo(server, ckpt, names)
        print("3. no LoRA:")
        (plain,), _ = run_workflow(server, txt2img(ckpt, "demo_plain", sampling=SAMPLING), "plain")
        cells = [("no LoRA", plain)]
        for strength in (0.5, 1.0, 1.5):
            print(f"4. LoraLabLoader, kohya file, strength {strength}:")
            (img,), history = run_workflow(
                server, txt2img(ckpt, f"demo_kohya_{strength}", lora=names["kohya"], strength_model=strength,
                                sampling=SAMPLING), f"kohya_strength_{strength}")
            cells.append((f"kohya x{strength}", img))
        print("   report:\n    " + history["outputs"]["lora"]["text"][0].replace("\n", "\n    "))
        print("5. LoraLabLoader, diffusers-format file (core LoraLoader skips its attention layers):")
        (img,), history = run_workflow(
            server, txt2img(ckpt, "demo_diffusers", lora=names["diffusers"], sampling=SAMPLING), "diffusers")
        cells.append(("diffusers x1.0", img))
        print("   report:\n    " + history["outputs"]["lora"]["text"][0].replace("\n", "\n    "))
        print("6. no LoRA again (must equal image 1: nothing leaked into the shared model):")
        (again,), _ = run_workflow(server, txt2img(ckpt, "demo_plain_again", sampling=SAMPLING), "plain_again")
        same = Image.open(again).tobytes() == Image.open(plain).tobytes()
        print(f"   identical to the first no-LoRA image: {same}")
        cells.append(("no LoRA again", again))

        rows = [(names["kohya"], 0.7, 0.5), (names["diffusers"], -0.4, 0.8)]
        print("7. LoraLabStack x2 -> LoraLabApplyStack (one patch pass):")
        (stacked,), history = run_workflow(server, stack_txt2img(ckpt, "demo_stack", rows, sampling=SAMPLING), "stack")
        cells.append(("stack", stacked))
        print("8. the same stack merged (concat, exact) and saved, then loaded with LoraLabLoader:")
        saved = server.run_prompt(merge_and_save(ckpt, rows, "demo_merged_concat", overwrite=True))
        print("   " + saved["outputs"]["save"]["text"][0])
        (merged,), _ = run_workflow(server, txt2img(ckpt, "demo_merged", lora="demo_merged_concat.safetensors",
                                                    sampling=SAMPLING), "merged")
        diff = np.abs(np.asarray(Image.open(merged), dtype=int) - np.asarray(Image.open(stacked), dtype=int)).max()
        print(f"   largest pixel difference between the merged file's image and the stack's: {diff}")
        cells.append(("merged file", merged))
        print("9. LoraLabInspect (against the model) and LoraLabConflicts charts:")
        run_workflow(server, diagnostics_workflow(ckpt, names["kohya"], rows), "charts")

    strip = labelled_strip(cells, f"LoRA Lab loader, seed {SAMPLING.seed}, synthetic SD1.5 (random weights)",
                           DEMO_OUTPUT / "loader_strip.png")
    print(f"summary picture: {shown(strip)}")
    flux_ok = family_demo()
    print(f"({time.monotonic() - t0:.0f} s in all)")
    return 0 if same and diff <= 2 and swept and flux_ok else 1


if __name__ == "__main__":
    sys.exit(main())
