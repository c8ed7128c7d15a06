"""Turning a user's device name into a ``torch.device`` that this PyTorch can use, or one clear line."""

from __future__ import annotations

import torch

from .errors import MaskdnError


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` named by ``device``, checked against what this PyTorch build and machine have.

    Args:
        device: A ``torch.device`` or a name PyTorch accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``,
            ``"mps"``, ...).

    Returns:
        The device.

    Raises:
        MaskdnError: ``"--device NAME: ..."`` for a name PyTorch does not know, or a CUDA/MPS device
            this build or machine does not have (e.g. a CPU-only PyTorch).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise MaskdnError(f"--device {device}: not a device name (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise MaskdnError(f"--device {device}: {why}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MaskdnError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise MaskdnError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise MaskdnError(f"--device {device}: maskdn runs on cpu, cuda or mps, not {dev.type}")
    return dev


__all__ = ["resolve_device"]
