"""The core step of masked image training, as library code.

clean patches → Gaussian noise (clipped to [0,1]) → input mask → model (attention mask on in train mode)
→ L1 loss against the clean patches → optimizer step → EMA update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..masking import input_mask
from .ema import EMA


@dataclass(frozen=True)
class StepConfig:
    """What one training step does to a clean batch. ``input_mask_range=None`` disables input masking."""

    sigma: float = 15.0
    input_mask_range: tuple[float, float] | None = (0.8, 0.9)
    input_mask_fill: float = -0.1
    grad_clip: float | None = None
    bf16: bool = False


def make_noisy(clean: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Clean ``[B, C, H, W]`` in [0,1] plus N(0, (σ/255)²), clipped to [0,1] as the paper trains."""
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    return (clean + noise * (sigma / 255.0)).clamp_(0.0, 1.0)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    clean: Tensor,
    cfg: StepConfig,
    generator: torch.Generator | None = None,
    ema: EMA | None = None,
) -> float:
    """One optimisation step on a clean batch; returns the L1 loss. The model must be in train mode."""
    noisy = make_noisy(clean, cfg.sigma, generator)
    if cfg.input_mask_range is not None:
        noisy, _ = input_mask(noisy, cfg.input_mask_range, cfg.input_mask_fill, generator)
    with torch.autocast(clean.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        out = model(noisy, generator=generator)
    loss = F.l1_loss(out.float(), clean)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(model)
    return loss.item()
