"""Quick out-of-distribution grid for recipe search: mean PSNR on center 256² crops of the first N
images of a folder (Kodak24 in docs/training.md) under nine noises, one seeded pass (or K), bf16
inference, one thread.

    python benchmarks/quick_grid.py --data ../shared/data/Kodak24 N PASSES MODEL [MODEL ...]
    # e.g. --data ../shared/data/Kodak24 6 1 baseline-small runs/x/model.safetensors

Much faster than `maskdn bench` on whole images; used to compare training runs, never for README tables.
Scored by the evaluator, `maskdn.generalization.run_bench` (one seeded pass per image, PSNR on 8-bit
RGB levels), on crops made here: this grid's protocol predates the evaluator's `crop` option and is
kept so that its numbers stay comparable with the tables in docs/training.md. The *clean* image is
cropped first and the noise added to the crop, seeded by the file name with its suffix
(`noise_seed(0, "kodim01.png", noise)`), whereas `run_bench(..., crop=256)` adds the noise to the whole
image first (the training validation's protocol).
"""
import argparse
from pathlib import Path

import torch

from maskdn.datasets import Sample, load_image
from maskdn.fastpath.runtime import keep_freed_memory
from maskdn.generalization import model_method, run_bench
from maskdn.geometry import center_crop
from maskdn.noise import parse_noise
from maskdn.report import condition_of
from maskdn.weights import load_model

NOISES = ["gaussian:15", "gaussian:25", "poisson:2", "poisson:3", "speckle:0.03", "speckle:0.04", "correlated:50", "saltpepper:0.02", "mixture:3"]
CROP = 256


def grid_samples(folder: Path, n: int, crop: int = CROP) -> list[Sample]:
    """The center ``crop``² crops of the first ``n`` PNG images of ``folder`` (name order), named by file name."""
    return [Sample(f.name, center_crop(load_image(f), crop)) for f in sorted(folder.glob("*.png"))[:n]]


def grid_row(samples: list[Sample], model_spec: str, passes: int, dataset: str = "grid") -> list[float]:
    """Mean PSNR (dB) of one model over ``samples`` under each of :data:`NOISES`, in order."""
    method = model_method(load_model(model_spec), "model", [passes], bf16=True)
    records = run_bench([(dataset, samples)], [method], NOISES, None, seed=0, passes=passes, progress=False,
                        lpips=False, with_ssim=False)
    row = []
    for n in NOISES:
        vals = [r["psnr"] for r in records if condition_of(r) == str(parse_noise(n))]
        row.append(sum(vals) / len(vals))
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="folder of clean PNG images, e.g. ../shared/data/Kodak24")
    p.add_argument("n", type=int, help="the first N images")
    p.add_argument("passes", type=int, help="averaged passes per image")
    p.add_argument("models", nargs="+", help="zoo names or weights files")
    a = p.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(1)
    samples = grid_samples(a.data, a.n)
    if not samples:
        raise SystemExit(f"{a.data}: no PNG images")
    for spec in a.models:
        r = grid_row(samples, spec, a.passes, a.data.name)
        print(f"{Path(spec).parent.name or spec:28}", " ".join(f"{v:6.2f}" for v in r), flush=True)
    print(" "*28, " ".join(f"{n.split(':')[0][:3]+n.split(':')[1]:>6}" for n in NOISES))


if __name__ == "__main__":
    main()
