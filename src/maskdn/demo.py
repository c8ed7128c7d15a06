"""``maskdn demo``: the bundled sample photos, a few noises, the default model, and what it scored.

Writes the noisy and denoised images, a side-by-side ``comparison.png`` (clean | noisy | denoised per
noise, PSNR under each), ``psnr.md`` and ``psnr.json``. Noises are seeded, so a rerun gives the same
numbers. The scores come from the evaluator, :func:`maskdn.generalization.run_bench`.
"""

from __future__ import annotations

import json
from functools import partial
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .datasets import Sample
from .generalization import model_method, resolve_method, run_bench
from .io import atomic_write, from_float_rgb, read_image, to_float_rgb, write_image
from .model import MaskedSwinIR
from .noise import parse_noise
from .report import condition_of
from .weights import load_model

DEMO_NOISES = ("gaussian:15", "gaussian:25", "poisson:2", "speckle:0.03", "saltpepper:0.02")
"""In-distribution Gaussian σ=15 first, then noises the models never saw in training."""


def sample_paths() -> list[Path]:
    """The bundled sample photos (crops of Kodak images, which are free to redistribute)."""
    return sorted(Path(str(files("maskdn") / "samples")).glob("*.png"))


def _labelled(img: np.ndarray, label: str) -> Image.Image:
    """An RGB uint8 image with a caption strip underneath."""
    h, w = img.shape[:2]
    canvas = Image.new("RGB", (w, h + 18), "white")
    canvas.paste(Image.fromarray(img), (0, 0))
    ImageDraw.Draw(canvas).text((4, h + 3), label, fill="black", font=ImageFont.load_default())
    return canvas


def _grid(rows: list[list[Image.Image]]) -> Image.Image:
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * len(rows[0]) + 4 * (len(rows[0]) - 1), h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            grid.paste(tile, (c * (w + 4), r * h))
    return grid


def _noise_index_seed(index: dict[str, int], seed: int, image: str, cond: str) -> int:
    """The demo's noise seeds: ``seed`` plus the position of the noise in the demo's list (whatever the image)."""
    return seed + index[cond]


def run_demo(
    out_dir: str | Path,
    model: MaskedSwinIR | str | Path | None = None,
    noises: tuple[str, ...] = DEMO_NOISES,
    seed: int = 0,
    passes: int = 1,
    progress: bool = True,
) -> dict:
    """Denoise every sample photo under every noise, write the images and what they scored.

    Scored by :func:`maskdn.generalization.run_bench` (the noisy input and the model, on the CPU): the
    noise of the ``i``-th spec is :func:`~maskdn.noise.apply_noise` seeded with ``seed + i`` (clipped,
    8-bit quantized), the same for every photo; each model run gets a generator freshly seeded with
    ``seed``; PSNR in dB on 8-bit RGB levels (:func:`maskdn.metrics.psnr`, as BasicSR/KAIR).

    Args:
        out_dir: The folder to write into (created): ``noisy/`` and ``denoised/`` images, named
            ``<photo>_<name>-<level>.png``, ``comparison.png`` (the first photo), ``psnr.md`` and
            ``psnr.json``.
        model: A loaded CPU model, a zoo name or weights file, or None for the default zoo model.
        noises: Noise specs (``name:level``), each once.
        seed: Seeds the noise and the attention masks.
        passes: Averaged stochastic passes per image (int >= 1).
        progress: Show a progress bar on stderr.

    Returns:
        ``{"rows": [{"image", "noise", "psnr_noisy", "psnr_denoised"}, ...], "table": markdown}``, rows
        photo by photo, each under every noise in order; the table holds the means over photos.

    Raises:
        MaskdnError: An unknown model or unreadable weights, an invalid noise spec or pass count, or
            an output folder that cannot be written.
    """
    out = Path(out_dir)
    (out / "noisy").mkdir(parents=True, exist_ok=True)
    (out / "denoised").mkdir(parents=True, exist_ok=True)
    net = model if isinstance(model, MaskedSwinIR) else load_model(model)
    paths = sample_paths()
    arrays = {p.stem: read_image(p) for p in paths}
    images = {name: to_float_rgb(arr) for name, arr in arrays.items()}  # (clean [3, H, W], layout info)
    spelled = {str(parse_noise(n)): n for n in noises}  # canonical name:level → as the caller wrote it
    index = {str(parse_noise(n)): i for i, n in enumerate(noises)}
    first = paths[0].stem if paths else None
    rows, panels, noisy_psnr = [], [], {}

    def keep(record: dict, noisy: Tensor, est: Tensor) -> None:
        spec = spelled[condition_of(record)]
        if record["method"] == "noisy":
            noisy_psnr[(record["image"], spec)] = record["psnr"]
            return
        info = images[record["image"]][1]
        name = f"{record['image']}_{spec.replace(':', '-')}.png"
        noisy_img, den_img = from_float_rgb(noisy, info), from_float_rgb(est.clamp(0, 1), info)
        write_image(out / "noisy" / name, noisy_img)
        write_image(out / "denoised" / name, den_img)
        row = {"image": record["image"], "noise": spec, "psnr_noisy": noisy_psnr[(record["image"], spec)],
               "psnr_denoised": record["psnr"]}
        rows.append(row)
        if record["image"] == first:
            panels.append([
                _labelled(arrays[first], "clean"),
                _labelled(noisy_img, f"{spec}  {row['psnr_noisy']:.2f} dB"),
                _labelled(den_img, f"denoised  {row['psnr_denoised']:.2f} dB"),
            ])

    samples = [Sample(name, clean) for name, (clean, _) in images.items()]
    methods = [resolve_method("noisy"), model_method(net, "model", [passes])]
    run_bench([("samples", samples)], methods, list(noises), None, seed=seed, passes=passes,
              progress="demo" if progress else False, lpips=False, with_ssim=False,
              noise_seeding=partial(_noise_index_seed, index), on_estimate=keep)
    with atomic_write(out / "comparison.png") as tmp:
        _grid(panels).save(tmp, format="PNG")
    table = ["| noise | noisy PSNR (dB) | denoised PSNR (dB) |", "|---|---|---|"]
    for spec in noises:
        sel = [r for r in rows if r["noise"] == spec]
        table.append(f"| {spec} | {np.mean([r['psnr_noisy'] for r in sel]):.2f} | "
                     f"{np.mean([r['psnr_denoised'] for r in sel]):.2f} |")
    table_md = "\n".join(table)
    with atomic_write(out / "psnr.md") as tmp:
        tmp.write_text(f"Mean over {len(samples)} sample photos, seed {seed}, {passes} pass(es).\n\n{table_md}\n")
    with atomic_write(out / "psnr.json") as tmp:
        tmp.write_text(json.dumps({"seed": seed, "passes": passes, "rows": rows}, indent=2))
    return {"rows": rows, "table": table_md}
