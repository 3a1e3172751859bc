"""Training data: images and captions in, seeded batches out.

* Sources: an ``IMAGE`` batch (``(B, H, W, 3)`` floats in 0..1) with captions one per line, or a folder
  of images with a ``.txt`` caption beside each (same stem).
* Sizes: without buckets every image is trained at one size (the first image's aspect ratio at about
  ``resolution**2`` pixels); images whose aspect ratios differ by more than :data:`MAX_ASPECT_SPREAD`
  are refused, since cropping them to one shape would cut off much of some of them. With buckets
  (kohya's aspect-ratio bucketing) each image goes to the bucket of about ``resolution**2`` pixels
  whose aspect ratio is closest to its own; sides are multiples of ``resolution // 8`` (64 at 512).
* Images are resized to cover their bucket and centre-cropped.
* Order and augmentation are *stateless*: the batch, flips and caption variants of micro-batch ``i``
  depend only on ``(seed, i)`` (:func:`derive_seed`), so a resumed run draws exactly what the
  uninterrupted run would have drawn, and no global RNG is touched.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..lora_ops.errors import LoraLabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest training image read (64 Mpx: 768 MB as float32 RGB); PIL's own bomb check starts at 89 Mpx."""
MAX_FOLDER_IMAGES = 10_000
DOWNSCALE = "downscale it (training resizes every image to about resolution x resolution anyway) and train again."
MAX_CAPTION_BYTES = 64 * 1024
MAX_ASPECT_SPREAD = 1.25
MAX_BUCKET_ASPECT = 2.0


class TrainDataError(LoraLabError):
    """The training images or captions cannot be used as given."""


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and a path of labels (``derive_seed(s, "noise", 12)``)."""
    text = ":".join([str(int(seed))] + [str(p) for p in parts]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


@dataclass
class TrainImage:
    """One training image: ``pixels (H, W, 3)`` float32 in 0..1, its caption, and where it came from."""

    pixels: torch.Tensor
    caption: str
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def split_captions(text: str) -> list[str]:
    """Captions one per line; trailing empty lines are ignored, empty lines inside count as empty captions."""
    lines = [line.strip() for line in (text or "").replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def images_from_batch(images: torch.Tensor | None, captions: str) -> list[TrainImage]:
    """An ``IMAGE`` batch and one caption per line (exactly one line per image)."""
    if images is None or images.ndim != 4 or images.shape[0] == 0:
        raise TrainDataError("No training images were given.",
                             "connect an IMAGE batch to 'images', or set image_folder to a folder of images "
                             "with .txt captions.")
    lines = split_captions(captions)
    count = int(images.shape[0])
    if len(lines) != count:
        raise TrainDataError(f"{count} image(s) but {len(lines)} caption line(s).",
                             "write one caption per line in 'captions', in the order of the images.")
    pixels = images[..., :3].float().clamp(0, 1)
    return [TrainImage(pixels[i].clone(), lines[i], f"image {i + 1}") for i in range(count)]


def _inside(path: Path, roots) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == root or real.is_relative_to(root) for root in roots)


def read_image(path: Path) -> torch.Tensor:
    """One training image file as ``(H, W, 3)`` float32 in 0..1 (EXIF orientation applied).

    Only PNG, JPEG, WebP and BMP are decoded (PIL would otherwise pick a decoder by content, EPS among
    them); the size is checked against :data:`MAX_IMAGE_PIXELS` from the file's header, before decoding.
    """
    from PIL import Image, ImageOps  # noqa: PLC0415

    fix = "remove or replace the file."
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_IMAGE_SIDE:
                raise TrainDataError(too_large(path.name, width, height), DOWNSCALE)
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except Image.DecompressionBombError:
        raise TrainDataError(too_large(path.name), DOWNSCALE) from None
    except TrainDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders of damaged files raise many types (OSError, SyntaxError...)
        raise TrainDataError(f"'{path.name}' could not be read as a PNG, JPEG, WebP or BMP image "
                             f"({type(exc).__name__}: {str(exc)[:200]}).", fix) from None
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)


def too_large(name: str, width: int | None = None, height: int | None = None) -> str:
    size = f" ({width}x{height})" if width is not None else ""
    return (f"'{name}' is too large{size}: training images may have at most {MAX_IMAGE_PIXELS:,} pixels and "
            f"{MAX_IMAGE_SIDE} pixels a side.")


def images_from_folder(folder: str | Path, *, allowed_roots=None) -> list[TrainImage]:
    """Every image in ``folder`` (sorted by name) with the caption from ``<stem>.txt`` beside it.

    With ``allowed_roots`` (real paths), images and captions whose real location (links followed) is
    outside all of them are refused.
    """
    path = Path(folder)
    if not path.is_dir():
        raise TrainDataError(f"Image folder '{folder}' does not exist.",
                             "give the name of a folder inside ComfyUI's input folder.")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise TrainDataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in '{folder}'.",
                             "put the training images in that folder, each with a .txt caption.")
    if len(files) > MAX_FOLDER_IMAGES:
        raise TrainDataError(f"'{folder}' holds {len(files)} images; LoraLabTrain reads at most {MAX_FOLDER_IMAGES}.",
                             "train on a selection of them (a LoRA rarely needs more than a few hundred).")
    missing = [p.name for p in files if not p.with_suffix(".txt").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise TrainDataError(f"{len(missing)} image(s) in '{folder}' have no caption file: {shown}.",
                             "add a .txt file with the same name beside each image (it may be empty).")
    if allowed_roots is not None:
        outside = [p.name for p in files for q in (p, p.with_suffix(".txt")) if not _inside(q, allowed_roots)]
        if outside:
            raise TrainDataError(f"'{outside[0]}' in '{folder}' links to a file outside the allowed folders.",
                                 "copy the file into the folder instead of linking to it.")
    out = []
    for p in files:
        caption_path = p.with_suffix(".txt")
        if caption_path.stat().st_size > MAX_CAPTION_BYTES:
            raise TrainDataError(f"The caption file '{caption_path.name}' is larger than {MAX_CAPTION_BYTES} bytes.",
                                 "write a caption of a few lines at most.")
        pixels = read_image(p)
        caption = caption_path.read_text(encoding="utf-8", errors="replace").strip().replace("\n", " ")
        out.append(TrainImage(pixels, caption, p.name))
    return out


def _round_to(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


def bucket_step(resolution: int) -> int:
    """Side granularity of buckets: ``resolution // 8`` rounded to a multiple of 8 (64 at 512)."""
    return max(8, (resolution // 8) // 8 * 8)


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """``(width, height)`` buckets of at most ``resolution**2`` pixels, aspect ratios 1:2 to 2:1."""
    step = bucket_step(resolution)
    area = resolution * resolution
    sizes = set()
    for w in range(step, 2 * resolution + 1, step):
        h = (area // w) // step * step
        if h >= step and 1 / MAX_BUCKET_ASPECT <= w / h <= MAX_BUCKET_ASPECT:
            sizes.add((w, h))
    return sorted(sizes)


def size_for_aspect(aspect: float, resolution: int) -> tuple[int, int]:
    """One size of about ``resolution**2`` pixels with aspect ``width / height``, sides multiples of 8."""
    h = resolution / math.sqrt(aspect)
    return _round_to(h * aspect, 8), _round_to(h, 8)


def assign_sizes(images: list[TrainImage], resolution: int, buckets: bool) -> list[tuple[int, int]]:
    """The training size of each image; refuses mixed aspect ratios without buckets."""
    aspects = [w / h for w, h in (im.size for im in images)]
    if not buckets:
        spread = max(aspects) / min(aspects)
        if spread > MAX_ASPECT_SPREAD:
            wide = images[aspects.index(max(aspects))]
            tall = images[aspects.index(min(aspects))]
            raise TrainDataError(
                f"The images have very different shapes ({wide.source} is {wide.size[0]}x{wide.size[1]}, "
                f"{tall.source} is {tall.size[0]}x{tall.size[1]}); training them at one size would crop away "
                "much of some of them.",
                "enable buckets (each image is trained at the size closest to its shape), or crop the images "
                "to one shape first.")
        return [size_for_aspect(aspects[0], resolution)] * len(images)
    sizes = bucket_sizes(resolution)
    return [min(sizes, key=lambda s, a=a: abs(math.log((s[0] / s[1]) / a))) for a in aspects]


def cover_crop(w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """How a ``w x h`` image covers ``width x height``: its resized ``(new_w, new_h)`` and the centred crop's
    ``(top, left)`` in the resized image (SDXL's crop conditioning)."""
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    return nw, nh, (nh - height) // 2, (nw - width) // 2


def fit_image(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``(H, W, 3)`` resized to cover ``width x height`` (bicubic, antialiased), centre-cropped, clamped."""
    h, w = pixels.shape[:2]
    nw, nh, top, left = cover_crop(w, h, width, height)
    x = pixels.permute(2, 0, 1).unsqueeze(0)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    x = x[:, :, top:top + height, left:left + width]
    return x[0].permute(1, 2, 0).clamp(0, 1).contiguous()


def caption_variant(caption: str, gen: torch.Generator, *, dropout: float, shuffle: bool) -> str:
    """The caption as this micro-batch sees it: dropped to ``""`` with probability ``dropout``; with
    ``shuffle`` its comma-separated tags after the first (the trigger word stays first) are shuffled."""
    drop = float(torch.rand((), generator=gen))
    order_seed = int(torch.randint(0, 2**62, (), generator=gen))
    if dropout > 0 and drop < dropout:
        return ""
    if not shuffle:
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    if len(tags) <= 2:
        return ", ".join(tags)
    rest = tags[1:]
    perm = torch.randperm(len(rest), generator=torch.Generator().manual_seed(order_seed)).tolist()
    return ", ".join([tags[0]] + [rest[i] for i in perm])


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """kohya's ``ss_tag_frequency`` counts: comma-separated tags, lower-cased, spaces collapsed."""
    counts: Counter[str] = Counter()
    for c in captions:
        for tag in c.split(","):
            tag = re.sub(r"\s+", " ", tag.strip().lower())
            if tag:
                counts[tag] += 1
    return dict(counts.most_common())


class BatchOrder:
    """Which images micro-batch ``i`` holds: per epoch, each bucket's images shuffled and cut into
    batches of ``batch_size`` (the last one may be smaller), then the epoch's batches shuffled; all drawn
    from ``(seed, "order", epoch)``. Every epoch has the same number of batches."""

    def __init__(self, buckets: list[tuple[int, int]], batch_size: int, seed: int):
        self.batch_size = batch_size
        self.seed = seed
        self.groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(buckets):
            self.groups.setdefault(size, []).append(index)
        self.per_epoch = sum(math.ceil(len(v) / batch_size) for v in self.groups.values())
        self._epoch: tuple[int, list[list[int]]] | None = None

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        gen = generator(self.seed, "order", epoch)
        batches = []
        for size in sorted(self.groups):
            items = self.groups[size]
            perm = torch.randperm(len(items), generator=gen).tolist()
            shuffled = [items[i] for i in perm]
            batches += [shuffled[i:i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)]
        order = torch.randperm(len(batches), generator=gen).tolist()
        batches = [batches[i] for i in order]
        self._epoch = (epoch, batches)
        return batches

    def batch(self, index: int) -> list[int]:
        epoch, within = divmod(index, self.per_epoch)
        return self._batches(epoch)[within]
