"""``maskdn demo``: the bundled models side by side on the bundled sample photos under a few noises.

The project's story in one figure: the masked model and the unmasked baseline (and any other bundled
model) denoise the very same noisy inputs, Gaussian σ=15 (the training noise) and noises neither saw.
Writes the noisy and denoised images, ``comparison.png`` (every photo: a center crop per noise, the
noisy input and each model's result, model names on the rows, PSNR under each), ``psnr.md`` and
``psnr.json``. Noises are seeded, so a rerun gives the same numbers. The scores come from the
evaluator, :func:`maskdn.generalization.run_bench`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import partial
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from . import zoo
from .datasets import Sample
from .devices import module_device, on_device, resolve_device
from .errors import MaskdnError
from .generalization import model_method, resolve_method, run_bench
from .io import atomic_write, from_float_rgb, make_output_dir, read_image, to_float_rgb, write_image
from .model import MaskedSwinIR
from .noise import parse_noise
from .report import condition_of
from .weights import load_model

DEMO_NOISES = ("gaussian:15", "gaussian:25", "poisson:2", "speckle:0.03", "saltpepper:0.02")
"""In-distribution Gaussian σ=15 first, then noises the models never saw in training."""

CROP = 128
"""Side in pixels of the center crop each photo shows in ``comparison.png`` (the files are whole)."""

ModelSource = MaskedSwinIR | str | os.PathLike


def sample_paths() -> list[Path]:
    """The bundled sample photos (crops of Kodak images, which are free to redistribute)."""
    return sorted(Path(str(files("maskdn") / "samples")).glob("*.png"))


def psnr_table(rows: list[dict], models: list[str]) -> str:
    """The demo's Markdown table (``psnr.md``): a row per noise, the mean PSNR of the noisy inputs and
    of each model's results over the photos, the default model's column marked.

    Args:
        rows: ``psnr.json``'s rows: ``{image, noise, model, psnr_noisy, psnr_denoised}`` (PSNR in dB).
        models: The models' labels, in column order.

    Returns:
        The table (2 decimals), noises in their first-seen order.
    """
    head = [f"`{m}`" + (" (default)" if m == zoo.DEFAULT_MODEL else "") for m in models]
    table = ["| noise | noisy PSNR (dB) | " + " | ".join(head) + " |", "|---" * (len(models) + 2) + "|"]
    for spec in dict.fromkeys(r["noise"] for r in rows):
        sel = [r for r in rows if r["noise"] == spec]
        noisy = {r["image"]: r["psnr_noisy"] for r in sel}
        cells = [f"{np.mean([r['psnr_denoised'] for r in sel if r['model'] == m]):.2f}" for m in models]
        table.append(f"| {spec} | {np.mean(list(noisy.values())):.2f} | " + " | ".join(cells) + " |")
    return "\n".join(table)


def _label_of(source: ModelSource, i: int) -> str:
    """A model's name on the figure: its zoo name, its file's stem, or ``model<i>`` for an object."""
    if isinstance(source, MaskedSwinIR):
        return f"model{i}"
    return Path(source).stem if Path(source).suffix in (".safetensors", ".pth", ".pt") else str(source)


def _load(
    models: Sequence[ModelSource], device: torch.device | None, attn_mask_ratio: float | None
) -> list[tuple[str, MaskedSwinIR]]:
    """``(unique label, model)`` per source; objects run where they are (or a copy on ``device``)."""
    out: list[tuple[str, MaskedSwinIR]] = []
    for i, m in enumerate(models, 1):
        label, k = _label_of(m, i), 1
        while any(label == lb for lb, _ in out):
            k += 1
            label = f"{_label_of(m, i)}-{k}"
        net = (on_device(m, device) if isinstance(m, MaskedSwinIR)
               else load_model(m, device=device or "cpu", attn_mask_ratio=attn_mask_ratio))
        out.append((label, net))
    return out


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font where Pillow has FreeType
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def _crop_u8(img: np.ndarray, side: int = CROP) -> np.ndarray:
    """The center ``side``×``side`` crop (smaller where the image is) of an RGB uint8 image."""
    h, w = img.shape[:2]
    s = min(side, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top : top + s, left : left + s]


def _comparison(
    photos: list[str], noises: Sequence[str], labels: list[str], clean: dict[str, np.ndarray],
    tiles: dict[tuple[str, str, str], tuple[np.ndarray, float]],
) -> Image.Image:
    """The figure: per photo, a row for the noisy input and one per model; a column per noise, clean first.

    ``tiles[(photo, noise, row label)] = (RGB uint8 crop, PSNR dB)``; the row label is ``noisy`` or a model.
    """
    font, bold = _font(12), _font(14)
    side = max(max(t.shape[0], t.shape[1]) for t, _ in tiles.values())
    margin, head, cap, gap = 130, 22, 16, 8
    rows = ["noisy", *labels]
    cols = ["clean", *noises]
    width = margin + len(cols) * (side + 4)
    block = len(rows) * (side + cap) + gap
    canvas = Image.new("RGB", (width, head + len(photos) * block), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(cols):
        draw.text((margin + c * (side + 4) + 2, 4), name, fill="black", font=bold)
    for p, photo in enumerate(photos):
        y0 = head + p * block
        for r, row in enumerate(rows):
            y = y0 + r * (side + cap)
            draw.text((4, y + side // 2 - 14), photo if r == 0 else "", fill="gray", font=font)
            draw.text((4, y + side // 2), row, fill="black", font=bold)
            if r == 0:
                canvas.paste(Image.fromarray(clean[photo]), (margin, y))
                draw.text((margin + 2, y + side + 1), "clean", fill="black", font=font)
            for c, noise in enumerate(noises, 1):
                crop, score = tiles[(photo, noise, row)]
                x = margin + c * (side + 4)
                canvas.paste(Image.fromarray(crop), (x, y))
                draw.text((x + 2, y + side + 1), f"{score:.2f} dB", fill="black", font=font)
    return canvas


def _noise_index_seed(index: dict[str, int], seed: int, image: str, cond: str) -> int:
    """The demo's noise seeds: ``seed`` plus the position of the noise in the demo's list (whatever the image)."""
    return seed + index[cond]


def run_demo(
    out_dir: str | Path,
    models: Sequence[ModelSource] | ModelSource | None = None,
    noises: Sequence[str] = DEMO_NOISES,
    seed: int = 0,
    passes: int = 1,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
    tile: int | None = None,
    bf16: bool = False,
    attn_mask_ratio: float | None = None,
) -> dict:
    """Denoise every sample photo under every noise with every model, write the images and their scores.

    Scored by :func:`maskdn.generalization.run_bench`: the noise of the ``i``-th spec is
    :func:`~maskdn.noise.apply_noise` seeded with ``seed + i`` (clipped, 8-bit quantized), the same for
    every photo and every model; each model run gets a generator freshly seeded with ``seed``; PSNR in
    dB on 8-bit RGB levels (:func:`maskdn.metrics.psnr`, as BasicSR/KAIR).

    Args:
        out_dir: The folder to write into (created): ``noisy/<photo>_<name>-<level>.png``,
            ``denoised/<model>/<photo>_<name>-<level>.png``, ``comparison.png``, ``psnr.md`` and
            ``psnr.json``.
        models: Models to compare: zoo names, weights files or loaded models (one or a sequence);
            None: every bundled model, the default first (:func:`maskdn.zoo.names_default_first`).
        noises: Noise specs (``name:level``), each once.
        seed: Seeds the noise and the attention masks.
        passes: Averaged stochastic passes per image (int >= 1).
        progress: Show a progress bar on stderr.
        device: Where the models run (None: a loaded object where it is, the others on the CPU); a
            caller's model is never moved (a copy runs elsewhere).
        tile: Denoise in ``tile``×``tile`` tiles (None: whole images).
        bf16: Run the models under bfloat16 autocast.
        attn_mask_ratio: Sets the attention-mask ratio of the models loaded here
            (:func:`maskdn.weights.load_model`); None: as stored.

    Returns:
        ``{"models": [labels], "rows": [{"image", "noise", "model", "psnr_noisy", "psnr_denoised"}, ...],
        "table": markdown}``: rows photo by photo, noise by noise, model by model; the table holds the
        means over photos, a column per model.

    Raises:
        MaskdnError: No model (none given and none bundled), an unknown model or unreadable weights, a
            device this machine lacks, an invalid noise spec, pass count or tile, or an output folder
            that cannot be written.
    """
    dev = None if device is None else resolve_device(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MaskdnError(f"{out}: exists and is not a folder; choose another output folder")
    if models is None:
        models = zoo.names_default_first()
    elif isinstance(models, (MaskedSwinIR, str, os.PathLike)):
        models = [models]
    if not models:
        raise MaskdnError("no model to demonstrate: none given and none bundled")
    nets = _load(list(models), dev, attn_mask_ratio)
    labels = [lb for lb, _ in nets]
    methods = [resolve_method("noisy")] + [
        model_method(net, lb, [passes], tile=tile, device=module_device(net), bf16=bf16) for lb, net in nets]
    make_output_dir(out)
    for sub in ("noisy", *(f"denoised/{lb}" for lb in labels)):
        make_output_dir(out / sub)

    paths = sample_paths()
    arrays = {p.stem: read_image(p) for p in paths}
    images = {name: to_float_rgb(arr) for name, arr in arrays.items()}  # (clean [3, H, W], layout info)
    spelled = {str(parse_noise(n)): n for n in noises}  # canonical name:level → as the caller wrote it
    index = {str(parse_noise(n)): i for i, n in enumerate(noises)}
    rows: list[dict] = []
    noisy_psnr: dict[tuple[str, str], float] = {}
    tiles: dict[tuple[str, str, str], tuple[np.ndarray, float]] = {}

    def keep(record: dict, noisy: Tensor, est: Tensor) -> None:
        photo, spec = record["image"], spelled[condition_of(record)]
        info = images[photo][1]
        name = f"{photo}_{spec.replace(':', '-')}.png"
        if record["method"] == "noisy":
            noisy_psnr[(photo, spec)] = record["psnr"]
            noisy_img = from_float_rgb(noisy, info)
            write_image(out / "noisy" / name, noisy_img)
            tiles[(photo, spec, "noisy")] = (_crop_u8(noisy_img), record["psnr"])
            return
        den_img = from_float_rgb(est.clamp(0, 1), info)
        write_image(out / "denoised" / record["method"] / name, den_img)
        tiles[(photo, spec, record["method"])] = (_crop_u8(den_img), record["psnr"])
        rows.append({"image": photo, "noise": spec, "model": record["method"],
                     "psnr_noisy": noisy_psnr[(photo, spec)], "psnr_denoised": record["psnr"]})

    samples = [Sample(name, clean) for name, (clean, _) in images.items()]
    run_bench([("samples", samples)], methods, list(noises), None, seed=seed, passes=passes,
              progress="demo" if progress else False, lpips=False, with_ssim=False,
              noise_seeding=partial(_noise_index_seed, index), on_estimate=keep)
    figure = _comparison(list(arrays), list(noises), labels, {k: _crop_u8(v) for k, v in arrays.items()}, tiles)
    with atomic_write(out / "comparison.png") as tmp:
        figure.save(tmp, format="PNG")
    table_md = psnr_table(rows, labels)
    with atomic_write(out / "psnr.md") as tmp:
        tmp.write_text(f"Mean PSNR over {len(samples)} sample photos, seed {seed}, {passes} pass(es).\n\n{table_md}\n")
    with atomic_write(out / "psnr.json") as tmp:
        tmp.write_text(json.dumps({"seed": seed, "passes": passes, "models": labels, "rows": rows}, indent=2))
    return {"models": labels, "rows": rows, "table": table_md}
