"""Experiment for the training-speed issue: window attention over the kept keys only, against the full one.

A token zeroed by the attention mask projects to the qkv bias, so every masked key of a window is the
same vector ``b_k`` with the same value ``b_v``; only its relative-position bias differs. The masked keys
therefore fold into ONE aggregated key whose logit is ``q·b_k·scale + log Σ_masked exp(bias)``: a window
attends to its ~16 kept keys (padded to the batch maximum) plus one, instead of 64. Exact up to float
rounding. Not yet in ``maskdn.model``; this script checks the algebra and times one block's attention
core (forward, and forward + backward) at a given shape:

    python benchmarks/kept_keys_attention.py                    # paper training shape: 6 heads, 1024 windows, d=10
    python benchmarks/kept_keys_attention.py --heads 4 --head-dim 8

Shift masks are left out (they add to the bias of border windows only). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def full_attention(q, k, v, bias, scale):
    """``q, k, v`` ``[heads, windows, N, d]``, ``bias`` ``[heads, N, N]``: the literal computation."""
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn + bias[:, None]
    return attn.softmax(-1) @ v


def kept_keys_attention(q, k, v, bias, keep, scale, b_k, b_v):
    """The same function from the kept keys (``keep`` ``[windows, N]`` bool) and one aggregated masked key."""
    h, W, N, d = q.shape
    n_kept = keep.sum(1)
    K = int(n_kept.max())
    order = torch.argsort(keep.to(torch.uint8), dim=1, descending=True, stable=True)[:, :K]  # kept first
    column = torch.where(torch.arange(K) < n_kept[:, None], order, N)  # N: a padding column of −inf bias
    index = order.view(1, W, K, 1).expand(h, W, K, d)
    keys = torch.cat([k.gather(2, index), b_k.view(h, 1, 1, d).expand(h, W, 1, d)], 2)
    values = torch.cat([v.gather(2, index), b_v.view(h, 1, 1, d).expand(h, W, 1, d)], 2)
    table = F.pad(bias, (0, 1), value=float("-inf"))
    kept_bias = table.unsqueeze(1).expand(h, W, N, N + 1).gather(3, column.view(1, W, 1, K).expand(h, W, N, K))
    top = bias.amax(-1, keepdim=True)  # log-sum-exp of the masked keys' biases, stabilised
    masked_sum = ((bias - top).exp() @ (~keep).to(bias.dtype).t()).transpose(1, 2)  # [h, W, N]
    masked_bias = masked_sum.clamp_min(1e-30).log() + top.view(h, 1, N)
    logits_bias = torch.cat([kept_bias, masked_bias.unsqueeze(-1)], -1)
    attn = torch.baddbmm(logits_bias.view(h * W, N, K + 1), q.reshape(h * W, N, d),
                         keys.view(h * W, K + 1, d).transpose(1, 2), alpha=scale)
    return torch.bmm(attn.softmax(-1), values.view(h * W, K + 1, d)).view(h, W, N, d)


def _best_ms(fn, grad: bool, repeats: int = 4) -> float:
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        if grad:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--windows", type=int, default=1024, help="16 patches of 64² with window 8")
    p.add_argument("--head-dim", type=int, default=10)
    p.add_argument("--ratio", type=float, default=0.75, help="attention-mask ratio")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "kept_keys_attention.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    h, W, N, d = a.heads, a.windows, 64, a.head_dim
    keep = torch.rand(W, N) >= a.ratio
    b_k, b_v = torch.randn(h, d), torch.randn(h, d)
    mask = keep[None, :, :, None]
    q = torch.randn(h, W, N, d, requires_grad=True)
    k = torch.where(mask, torch.randn(h, W, N, d), b_k[:, None, None]).requires_grad_()
    v = torch.where(mask, torch.randn(h, W, N, d), b_v[:, None, None]).requires_grad_()
    bias = (2 * torch.randn(h, N, N)).requires_grad_()
    scale = d**-0.5
    diff = (full_attention(q, k, v, bias, scale) - kept_keys_attention(q, k, v, bias, keep, scale, b_k, b_v)).abs().max().item()
    runs = {"full": lambda: full_attention(q, k, v, bias, scale),
            "kept keys": lambda: kept_keys_attention(q, k, v, bias, keep, scale, b_k, b_v)}
    rows = {name: {"forward_ms": _best_ms(fn, False), "forward_backward_ms": _best_ms(fn, True)} for name, fn in runs.items()}
    print(f"heads {h}, windows {W}, head dim {d}, mask {a.ratio:.0%}, keys kept per window ≤ {int(keep.sum(1).max())}; "
          f"max |difference| {diff:.1e}")
    print("| attention | forward ms | forward + backward ms |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['forward_ms']:.1f} | {r['forward_backward_ms']:.1f} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"shape": {"heads": h, "windows": W, "tokens": N, "head_dim": d}, "ratio": a.ratio,
                               "threads": a.threads, "max_abs_difference": diff, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
