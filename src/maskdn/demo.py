"""``maskdn demo``: the bundled sample photos, a few noises, the default model, and what it scored.

Writes the noisy and denoised images, a side-by-side ``comparison.png`` (clean | noisy | denoised per
noise, PSNR under each), ``psnr.md`` and ``psnr.json``. Noises are seeded, so a rerun gives the same
numbers.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from .inference import denoise_tensor
from .io import atomic_write, from_float_rgb, read_image, to_float_rgb, write_image
from .metrics import psnr
from .model import MaskedSwinIR
from .noise import apply_noise
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


def run_demo(
    out_dir: str | Path,
    model: MaskedSwinIR | str | Path | None = None,
    noises: tuple[str, ...] = DEMO_NOISES,
    seed: int = 0,
    passes: int = 1,
    progress: bool = True,
) -> dict:
    """Denoise every sample photo under every noise; returns ``{"rows": [...], "table": markdown}``."""
    out = Path(out_dir)
    (out / "noisy").mkdir(parents=True, exist_ok=True)
    (out / "denoised").mkdir(parents=True, exist_ok=True)
    net = model if isinstance(model, MaskedSwinIR) else load_model(model)
    rows, panels = [], []
    samples = sample_paths()
    jobs = [(p, i, n) for p in samples for i, n in enumerate(noises)]
    for path, i, spec in tqdm(jobs, desc="demo", disable=not progress):
        arr = read_image(path)
        clean, info = to_float_rgb(arr)
        noisy = apply_noise(clean, spec, seed=seed + i)
        gen = torch.Generator().manual_seed(seed)
        den = denoise_tensor(net, noisy[None], passes=passes, generator=gen)[0].clamp(0, 1)
        name = f"{path.stem}_{spec.replace(':', '-')}.png"
        noisy_img, den_img = from_float_rgb(noisy, info), from_float_rgb(den, info)
        write_image(out / "noisy" / name, noisy_img)
        write_image(out / "denoised" / name, den_img)
        row = {"image": path.stem, "noise": spec, "psnr_noisy": psnr(noisy, clean), "psnr_denoised": psnr(den, clean)}
        rows.append(row)
        if path == samples[0]:
            panels.append([
                _labelled(arr, "clean"),
                _labelled(noisy_img, f"{spec}  {row['psnr_noisy']:.2f} dB"),
                _labelled(den_img, f"denoised  {row['psnr_denoised']:.2f} dB"),
            ])
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
