"""Float32 linear layers at the model's shapes: F.linear (MKL) against maskdn.fastpath.linear (oneDNN).

For each layer of the small and paper presets (65,536 tokens: the 16×64² training batch), times the
forward product, the input gradient and the weight gradient both ways, one thread, best of 10 after
two warm-ups, with maskdn's allocator setting. Prints a table, writes JSON. Shows why
``maskdn.fastpath.linear`` sends the forward and both gradients to oneDNN, the weight gradient with its
transposed operands as strided views (copying them first costs more than it saves).

    python benchmarks/linear.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from maskdn.fastpath.linear import onednn_linear, onednn_strided, uses_onednn
from maskdn.fastpath.runtime import keep_freed_memory

ROOT = Path(__file__).resolve().parent
TOKENS = 16 * 64 * 64
SHAPES = {  # (in, out): the layers of each preset
    "small": [(32, 96), (32, 32), (32, 64), (64, 32)],
    "paper": [(60, 180), (60, 60), (60, 120), (120, 60)],
}
NAMES = ["qkv", "proj", "fc1", "fc2"]


def _best_ms(fn, repeats: int = 10) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def measure(c_in: int, c_out: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, c_in, generator=g)
    w, b = torch.randn(c_out, c_in, generator=g), torch.randn(c_out, generator=g)
    grad = torch.randn(TOKENS, c_out, generator=g)
    w_t = w.t().contiguous()
    x_t, grad_t = x.t().contiguous(), grad.t().contiguous()
    return {
        "forward F.linear (MKL)": _best_ms(lambda: F.linear(x, w, b)),
        "forward oneDNN": _best_ms(lambda: onednn_linear(x, w, b)),
        "input grad MKL": _best_ms(lambda: grad.mm(w)),
        "input grad oneDNN": _best_ms(lambda: onednn_linear(grad, w_t)),
        "weight grad MKL": _best_ms(lambda: grad.t().mm(x)),
        "weight grad oneDNN (operands pre-transposed)": _best_ms(lambda: onednn_linear(grad_t, x_t)),
        "weight grad oneDNN (strided views, maskdn)": _best_ms(lambda: onednn_strided(grad.t(), x.t())),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "linear.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    keep_freed_memory()
    if not uses_onednn(torch.zeros(1, 1), torch.zeros(1, 1)):
        raise SystemExit("this PyTorch build has no oneDNN linear op (torch.ops.mkldnn._linear_pointwise)")
    rows = []
    for preset_name, shapes in SHAPES.items():
        for name, (c_in, c_out) in zip(NAMES, shapes):
            times = measure(c_in, c_out)
            gflop = 2 * TOKENS * c_in * c_out / 1e9
            rows.append({"preset": preset_name, "layer": name, "in": c_in, "out": c_out, "ms": times,
                         "gflops": {k: gflop / (v / 1000) for k, v in times.items()}})
    keys = list(rows[0]["ms"])
    print(f"{TOKENS} tokens, {a.threads} thread(s); ms (GFLOP/s)")
    print("| preset | layer | in→out | " + " | ".join(keys) + " |\n|" + "---|" * (3 + len(keys)))
    for r in rows:
        cells = " | ".join(f"{r['ms'][k]:.2f} ({r['gflops'][k]:.0f})" for k in keys)
        print(f"| {r['preset']} | {r['layer']} | {r['in']}→{r['out']} | {cells} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "threads": a.threads, "tokens": TOKENS, "rows": rows}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
