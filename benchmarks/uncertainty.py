"""Does the spread of a masked model's passes say where its errors are? Std map vs actual error on Kodak24.

    python benchmarks/uncertainty.py --data ../shared/data/Kodak24 [--model masked-small] [--passes 8]
        [--crop 256] [--limit N] [--noise gaussian:15 ...] [--out benchmarks/results/uncertainty.json]

Per image (the center ``crop``² of each clean image; the noise added to the crop, seeded by the file name
as in ``benchmarks/quick_grid.py``, clipped and 8-bit quantized) and noise: ``K`` seeded passes of the
model, their mean (the estimate, clamped to [0, 1]) and their per-pixel std
(``maskdn.denoise_tensor(..., uncertainty=True)``, channels combined by root mean square); the actual
error is the channel mean of ``|estimate − clean|``. The agreement of the two maps is measured per image
with :func:`maskdn.uncertainty.error_agreement` (Pearson r, Spearman ρ, and the mean error over the 10%
of pixels with the largest std relative to the mean error over all pixels) and averaged over images.
For scale, the same numbers for a predictor that knows nothing of the model: the gradient magnitude of
the estimate (Sobel), i.e. "errors sit on edges". Prints a Markdown table and writes JSON; one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maskdn.datasets import load_image
from maskdn.fastpath.runtime import keep_freed_memory
from maskdn.geometry import center_crop
from maskdn.inference import denoise_tensor
from maskdn.io import atomic_write
from maskdn.metrics import psnr
from maskdn.noise import apply_noise, noise_seed
from maskdn.uncertainty import channel_rms, check_uncertainty, error_agreement
from maskdn.weights import load_model

NOISES = ["gaussian:15", "gaussian:50", "poisson:3", "speckle:0.03", "saltpepper:0.02", "mixture:3"]
"""Levels of the paper's grid (``maskdn.generalization.PAPER_GRID``): the training noise and five unseen ones."""

METRICS = ("pearson", "spearman", "top_error_ratio")


def sobel_magnitude(image: torch.Tensor) -> np.ndarray:
    """Gradient magnitude ``[H, W]`` of a ``[3, H, W]`` image (channel mean, Sobel, replicate padding)."""
    gray = image.mean(0)[None, None]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    k = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), k)
    return g.square().sum(1)[0].sqrt().numpy()


def measure(data: Path, model_spec: str, noises: list[str], passes: int, crop: int, limit: int | None,
            seed: int, save=None) -> dict:
    """The agreement table's numbers; ``save(result)`` is called after each noise (partial results kept)."""
    model = load_model(model_spec)
    check_uncertainty(model, passes)
    files = sorted(data.glob("*.png"))[:limit]
    rows: list[dict] = []
    start = time.perf_counter()
    result = {"model": model_spec, "data": str(data), "images": len(files), "crop": crop, "passes": passes,
              "seed": seed, "threads": torch.get_num_threads(), "rows": rows}
    for noise in noises:
        per_image = []
        for f in files:
            clean = center_crop(load_image(f), crop)
            noisy = apply_noise(clean, noise, seed=noise_seed(seed, f.name, noise))
            g = torch.Generator().manual_seed(seed)
            mean, std = denoise_tensor(model, noisy[None], passes=passes, generator=g, uncertainty=True)
            estimate = mean[0].clamp(0, 1)
            std_map = channel_rms(std)[0].numpy()
            error = (estimate - clean).abs().mean(0).numpy()
            per_image.append({
                "image": f.name,
                "psnr": psnr(estimate, clean),
                "mean_std_levels": float(std_map.mean() * 255),
                "mean_abs_error_levels": float(error.mean() * 255),
                "std": error_agreement(std_map, error),
                "edges": error_agreement(sobel_magnitude(estimate), error),
            })
        row = {"noise": noise, "images": per_image,
               **{k: float(np.mean([r[k] for r in per_image])) for k in ("psnr", "mean_std_levels", "mean_abs_error_levels")}}
        for source in ("std", "edges"):
            row[source] = {m: float(np.nanmean([r[source][m] for r in per_image])) for m in METRICS}
        rows.append(row)
        result["seconds"] = time.perf_counter() - start
        print(f"{noise}: r {row['std']['pearson']:.3f} (edges {row['edges']['pearson']:.3f}), "
              f"{result['seconds']:.0f} s", flush=True)
        if save is not None:
            save(result)
    return result


def table(result: dict) -> str:
    lines = ["| noise | PSNR (dB) | mean std | mean abs error | Pearson r: std / edges | Spearman ρ: std / edges "
             "| top-10% error ratio: std / edges |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        s, e = r["std"], r["edges"]
        lines.append(f"| {r['noise']} | {r['psnr']:.2f} | {r['mean_std_levels']:.2f} | {r['mean_abs_error_levels']:.2f} "
                     f"| {s['pearson']:.3f} / {e['pearson']:.3f} | {s['spearman']:.3f} / {e['spearman']:.3f} "
                     f"| {s['top_error_ratio']:.2f} / {e['top_error_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="folder of clean PNG images, e.g. ../shared/data/Kodak24")
    p.add_argument("--model", default="masked-small", help="a masked model (stochastic at test time)")
    p.add_argument("--noise", nargs="+", default=NOISES, metavar="NAME:LEVEL")
    p.add_argument("--passes", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="center crop side in pixels")
    p.add_argument("--limit", type=int, default=None, help="first N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/uncertainty.json"))
    a = p.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(1)
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save(result: dict) -> None:
        with atomic_write(a.out) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    result = measure(a.data, a.model, a.noise, a.passes, a.crop, a.limit, a.seed, save)
    print(f"\n{result['model']}, {result['images']} images, {a.crop}² center crops, K={a.passes} passes, "
          f"{result['seconds']:.0f} s on {result['threads']} thread(s); std and error in 8-bit levels\n")
    print(table(result))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
