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
    """The plain model under ``torch.compile`` (``_orig_mod``) and DistributedDataParallel (``module``).

    Args:
        model: A plain, compiled, DDP-wrapped, or compiled DDP-wrapped model.

    Returns:
        The innermost module; ``model`` itself if it is not wrapped.
    """
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
    sync: bool = True,
) -> float | Tensor:
    """One optimisation step; returns the L1 loss (averaged over processes). The model must be in train mode.

    Forward (under bf16 autocast if asked), L1 loss in float32, then, when ``torch.distributed`` is
    initialised, an ``all_reduce`` mean of the loss value over processes; that value is checked before
    ``zero_grad``, ``backward``, optional gradient clipping, ``optimizer.step()`` and the EMA update,
    so a non-finite loss stops every process at the same iteration with the weights untouched.

    Reading the loss makes the host wait for the device. On a GPU that wait drains its queue every
    step, so ``sync=False`` skips it: the loss comes back as a tensor on the device, unread and
    unchecked, and the caller checks it when it reads it (the trainer: every ``log_every`` iterations;
    a non-finite loss then stops the run there, and its weights may have changed since).

    Args:
        model: The denoiser (plain, compiled and/or DDP-wrapped), in train mode so that the attention
            token masking is on; its forward takes ``generator=``.
        optimizer: The optimizer over ``model``'s parameters.
        noisy: ``[B, C, h, w]`` float input patches (noise added, then input-masked).
        clean: ``[B, C, h, w]`` float target patches, values in [0, 1], on the same device.
        generator: Drives the attention token masks; on ``noisy``'s device. None: torch's global RNG.
        bf16: Run the forward under bfloat16 autocast on ``noisy``'s device type.
        grad_clip: If nonzero, clip the gradients' global L2 norm to it (``clip_grad_norm_``).
        ema: If given, updated from :func:`unwrap` of ``model`` after the step.
        sync: Read and check the loss before the update (True), or return it unread (False).

    Returns:
        The step's L1 loss (mean absolute error over all elements), averaged over processes: a float,
        or with ``sync=False`` a 0-dim float32 tensor on the device.

    Raises:
        FloatingPointError: ``"loss is nan"`` or ``"loss is inf"``, before any weight changes (``sync=True``).
    """
    with torch.autocast(noisy.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(noisy, generator=generator)
    loss = F.l1_loss(out.float(), clean)
    value = loss.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    if sync:
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
