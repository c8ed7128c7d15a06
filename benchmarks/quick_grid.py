"""Quick out-of-distribution grid for recipe search: mean PSNR on center 256² crops of the first N
Kodak24 images under nine noises, one seeded pass (or K), bf16 inference, one thread.

    python benchmarks/quick_grid.py N PASSES MODEL [MODEL ...]   # e.g. 6 1 baseline-small runs/x/model.safetensors

Much faster than `maskdn bench` on whole images; used to compare training runs, never for README tables.
"""
import sys, time, torch, json
from pathlib import Path
from maskdn.weights import load_model
from maskdn.io import read_image, to_float_rgb
from maskdn.noise import apply_noise, noise_seed
from maskdn.metrics import psnr
from maskdn.inference import denoise_tensor
from maskdn.runtime import keep_freed_memory
keep_freed_memory()
torch.set_num_threads(1)
NOISES = ["gaussian:15", "gaussian:25", "poisson:2", "poisson:3", "speckle:0.03", "speckle:0.04", "correlated:50", "saltpepper:0.02", "mixture:3"]
files = sorted(Path(__file__).resolve().parents[2].joinpath("shared/data/Kodak24").glob("*.png"))[:int(sys.argv[1])]
crop = 256
imgs = []
for f in files:
    x = to_float_rgb(read_image(f))[0]
    x = x if x.ndim == 4 else x[None]
    H, W = x.shape[-2:]
    imgs.append((f.name, x[..., (H-crop)//2:(H+crop)//2, (W-crop)//2:(W+crop)//2]))
rows = {}
passes = int(sys.argv[2])
for spec in sys.argv[3:]:
    m = load_model(spec)
    r = []
    for n in NOISES:
        vals = []
        for name, x in imgs:
            y = apply_noise(x, n, seed=noise_seed(0, name, n))
            out = denoise_tensor(m, y, passes=passes, generator=torch.Generator().manual_seed(0), bf16=True)
            vals.append(psnr(out.clamp(0,1), x))
        r.append(sum(vals)/len(vals))
    rows[spec] = r
    print(f"{Path(spec).parent.name or spec:28}", " ".join(f"{v:6.2f}" for v in r), flush=True)
print(" "*28, " ".join(f"{n.split(':')[0][:3]+n.split(':')[1]:>6}" for n in NOISES))
