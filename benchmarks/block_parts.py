"""Where one transformer block's training time goes: forward + backward of a block and of its parts.

One Swin block at the training shape of ``benchmarks/speed.py`` (16 patches of 64×64, window 8, 75%
attention mask), one thread, with maskdn's allocator setting; each part is timed alone on the same
inputs (median of 5 runs after a warm-up). Prints a table, writes JSON.

    python benchmarks/block_parts.py                     # both presets, shifted windows
    python benchmarks/block_parts.py --presets small --shift 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from maskdn import fastpath
from maskdn.fastpath import kernels
from maskdn.fastpath.linear import linear
from maskdn.fastpath.runtime import keep_freed_memory
from maskdn.model import SwinTransformerBlock, preset

ROOT = Path(__file__).resolve().parent
BATCH, PATCH = 16, 64


def _median_ms(fn, leaf: torch.Tensor, module: torch.nn.Module, repeats: int = 5) -> tuple[float, float]:
    fwd, bwd = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        out.backward(torch.ones_like(out))
        t2 = time.perf_counter()
        leaf.grad = None
        module.zero_grad(set_to_none=True)
        if i:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return 1000 * statistics.median(fwd), 1000 * statistics.median(bwd)


def parts(preset_name: str, shift: int, ratio: float) -> dict[str, tuple[float, float]]:
    cfg = preset(preset_name)
    C, heads, ws = cfg.embed_dim, cfg.num_heads[0], cfg.window_size
    torch.manual_seed(0)
    block = SwinTransformerBlock(C, heads, ws, shift, cfg.mlp_ratio)
    x = torch.randn(BATCH, PATCH * PATCH, C, requires_grad=True)
    keep = (torch.rand(BATCH * (PATCH // ws) ** 2, ws * ws, 1) >= ratio).float()
    size = (PATCH, PATCH)

    runs = {
        "block (fast)": lambda: block(x, size, keep),
        "attention: norm, gathers, kept keys, projection": lambda: block.attention(x, size, keep),
        "attention: output projection alone": lambda: linear(x, block.attn.proj.weight, block.attn.proj.bias),
        "MLP with its LayerNorm": lambda: fastpath.mlp(block.mlp, block.norm2(x)),
        "MLP with its LayerNorm, F.linear (as the literal path)": lambda: block.mlp(block.norm2(x)),
    }
    out = {name: _median_ms(fn, x, block) for name, fn in runs.items()}
    with kernels.disabled():  # the attention core on PyTorch ops, as without a C compiler
        out["block (fast, PyTorch attention core)"] = _median_ms(lambda: block(x, size, keep), x, block)
        out["attention, PyTorch attention core"] = _median_ms(lambda: block.attention(x, size, keep), x, block)
    block.attn.impl = "reference"
    out["block (literal reference path)"] = _median_ms(lambda: block(x, size, keep), x, block)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["small", "paper"])
    p.add_argument("--shift", type=int, default=4, help="0: regular windows; 4: shifted (window 8)")
    p.add_argument("--ratio", type=float, default=0.75, help="attention-mask ratio")
    p.add_argument("--out", default=str(ROOT / "results" / "block_parts.json"))
    a = p.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    results = {name: parts(name, a.shift, a.ratio) for name in a.presets}
    print(f"one block, {BATCH}×{PATCH}², shift {a.shift}, mask {a.ratio:.0%}, one thread; ms, median of 5; "
          f"attention kernel: {kernels.kernel_status()}")
    print("| preset | part | forward | backward | total |\n|---|---|---|---|---|")
    for name, rows in results.items():
        for part, (f, b) in rows.items():
            print(f"| {name} | {part} | {f:.1f} | {b:.1f} | {f + b:.1f} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"shape": [BATCH, PATCH, PATCH], "shift": a.shift, "ratio": a.ratio, "threads": 1,
                               "cpu_kernel": kernels.kernel_status(),
                               "ms": {n: {k: {"forward": f, "backward": b} for k, (f, b) in r.items()}
                                      for n, r in results.items()}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
