"""Peak memory of one forward pass against maskdn.memory's prediction: prints a table, writes JSON.

Automatic tiling (maskdn.memory.plan_tile) trusts ``forward_bytes_per_pixel`` to be an upper bound of
the peak a forward pass adds, per input pixel. This measures that peak for each preset, attention path
and size, each in its own process: the resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident set just before the forward, under
``MALLOC_MMAP_THRESHOLD_=131072`` so that freed blocks go back to the system and the mark is the live
peak (Linux only). On a CUDA device it reads ``torch.cuda.max_memory_allocated`` instead.

    python benchmarks/inference_memory.py                      # tiny/small/paper × fast/reference/sdpa, 256² and 512²
    python benchmarks/inference_memory.py --presets small --sizes 512 1024 --paths fast
    python benchmarks/inference_memory.py --device cuda --paths batched sdpa
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_WORKER = r"""
import json, re, sys, torch
from maskdn.memory import forward_bytes_per_pixel
from maskdn.model import MaskedSwinIR, preset

name, size, impl, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
model = MaskedSwinIR(preset(name)).eval().set_attention(impl).to(device)
x = torch.rand(1, 3, size, size, device=device)
with torch.inference_mode():
    model(torch.rand(1, 3, 16, 16, device=device))  # buffers and caches of the first call
if device == "cpu":
    def status(key):
        return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS")
    with torch.inference_mode():
        model(x)
    peak = status("VmHWM") - before
else:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.inference_mode():
        model(x)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
print(json.dumps({"measured": peak / size**2, "predicted": forward_bytes_per_pixel(model)}))
"""


def measure(name: str, size: int, impl: str, device: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MASKDN_KEEP_FREED_MEMORY": "0"}
    out = subprocess.run([sys.executable, "-c", _WORKER, name, str(size), impl, device], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    p.add_argument("--paths", nargs="+", default=["fast", "reference", "sdpa"])
    p.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/inference_memory.json")
    a = p.parse_args()
    rows = []
    print(f"{'preset':8} {'path':10} {'size':>5} {'measured B/px':>14} {'predicted B/px':>15} {'ratio':>6}")
    for name in a.presets:
        for impl in a.paths:
            for size in a.sizes:
                r = measure(name, size, impl, a.device)
                row = {"preset": name, "path": impl, "size": size, "device": a.device, **r,
                       "ratio": r["predicted"] / r["measured"]}
                rows.append(row)
                print(f"{name:8} {impl:10} {size:5d} {r['measured']:14.0f} {r['predicted']:15.0f} {row['ratio']:6.2f}",
                      flush=True)
    under = [r for r in rows if r["ratio"] < 1]
    print("every prediction is an upper bound" if not under else f"{len(under)} predictions BELOW the measured peak")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
