"""The core step of masked image training, as library code.

noisy (already input-masked) patches → model (attention mask on in train mode, drawn from
``generator``) → L1 loss against the clean patches → optimizer step → EMA update.

In a distributed run the loss is averaged over the processes before it is checked, so every process
sees the same value and a non-finite loss stops them all at the same iteration, before the weights
are touched.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .ema import EMA


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under ``torch.compile`` (``_orig_mod``) and DistributedDataParallel (``module``)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    noisy: Tensor,
    clean: Tensor,
    *,
    generator: torch.Generator | None = None,
    bf16: bool = False,
    grad_clip: float = 0.0,
    ema: EMA | None = None,
) -> float:
    """One optimisation step; returns the L1 loss (averaged over processes). The model must be in train mode.

    Raises ``FloatingPointError`` on a NaN/inf loss, before any weight changes.
    """
    with torch.autocast(noisy.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(noisy, generator=generator)
    loss = F.l1_loss(out.float(), clean)
    value = loss.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    value = value.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(unwrap(model))
    return value
