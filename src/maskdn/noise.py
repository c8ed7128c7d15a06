"""The noise zoo: named, seeded degradations of float RGB images in [0, 1], written ``name:level``.

Every noise is a pure function of (image, level, seed): the same inputs give the same noisy image.
By default the result is clipped to [0, 1] and quantized to 8 bits, as the authors' saved test PNGs
are; ``quantize=False`` keeps the float values (still clipped).

Conventions follow the published protocols so numbers are comparable:

* ``gaussian:σ`` — additive N(0, (σ/255)²) per channel.
* ``poisson:α`` — the authors' convention: quantize to 8 bits, ``v = 2^ceil(log2(#distinct values))``,
  ``P = Poisson(x·v)/v``, output ``x + α·(P − x)``.
* ``speckle:v`` — MATLAB ``imnoise(x,'speckle',v)``: ``x + x·n`` with ``n`` uniform, mean 0, variance v.
* ``saltpepper:d`` — MATLAB ``imnoise(x,'salt & pepper',d)``: each value hit with probability d, half
  set to 0, half to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .errors import MaskdnError

__all__ = ["NOISES", "NoiseSpec", "parse_noise", "apply_noise"]


def _gaussian(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    return x + torch.randn(x.shape, generator=g, dtype=x.dtype) * (sigma / 255.0)


def _poisson(x: Tensor, alpha: float, g: torch.Generator) -> Tensor:
    x8 = torch.round(x.clamp(0, 1) * 255.0) / 255.0
    vals = max(2, torch.unique(x8).numel())
    v = 2.0 ** math.ceil(math.log2(vals))
    p = torch.poisson(x8 * v, generator=g) / v
    return x8 + alpha * (p - x8)


def _speckle(x: Tensor, var: float, g: torch.Generator) -> Tensor:
    n = (torch.rand(x.shape, generator=g, dtype=x.dtype) - 0.5) * math.sqrt(12.0 * var)
    return x + x * n


def _saltpepper(x: Tensor, d: float, g: torch.Generator) -> Tensor:
    u = torch.rand(x.shape, generator=g, dtype=x.dtype)
    out = x.clone()
    out[u < d / 2] = 0.0
    out[(u >= d / 2) & (u < d)] = 1.0
    return out


@dataclass(frozen=True)
class Noise:
    """One noise family: its transform, the valid level range and a one-line description."""

    fn: Callable[[Tensor, float, torch.Generator], Tensor]
    low: float
    high: float
    doc: str


NOISES: dict[str, Noise] = {
    "gaussian": Noise(_gaussian, 0.0, 255.0, "additive N(0, (σ/255)²), level σ on the 0–255 scale"),
    "poisson": Noise(_poisson, 0.0, 10.0, "authors' Poisson: x + α·(Poisson(x·v)/v − x), level α"),
    "speckle": Noise(_speckle, 0.0, 1.0, "MATLAB speckle: x + x·n, n uniform with variance v"),
    "saltpepper": Noise(_saltpepper, 0.0, 1.0, "MATLAB salt & pepper: density d of values set to 0 or 1"),
}


@dataclass(frozen=True)
class NoiseSpec:
    """A parsed ``name:level`` noise."""

    name: str
    level: float

    def __str__(self) -> str:
        return f"{self.name}:{self.level:g}"


def parse_noise(spec: str) -> NoiseSpec:
    """``"poisson:2"`` → ``NoiseSpec("poisson", 2.0)``; unknown names or bad levels are one-line errors."""
    name, sep, level_text = spec.partition(":")
    name = name.strip().lower()
    if name not in NOISES:
        raise MaskdnError(f"{spec}: unknown noise (valid: {', '.join(NOISES)}; written name:level)")
    try:
        level = float(level_text) if sep else float("nan")
    except ValueError:
        level = float("nan")
    noise = NOISES[name]
    if not noise.low <= level <= noise.high:
        raise MaskdnError(f"{spec}: level must be a number in [{noise.low:g}, {noise.high:g}] for {name}")
    return NoiseSpec(name, level)


def apply_noise(x: Tensor, spec: str | NoiseSpec, seed: int = 0, quantize: bool = True) -> Tensor:
    """Noisy copy of ``x`` (float, values in [0, 1], any shape), clipped and optionally 8-bit quantized."""
    spec = parse_noise(spec) if isinstance(spec, str) else spec
    g = torch.Generator().manual_seed(seed)
    y = NOISES[spec.name].fn(x.detach().float().cpu(), spec.level, g).clamp_(0.0, 1.0)
    if quantize:
        y = torch.round(y * 255.0) / 255.0
    return y.to(x.device)
