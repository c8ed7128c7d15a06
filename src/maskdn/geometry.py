"""The 8 flips/rotations of an image (the dihedral group), used for training augmentation and for
the self-ensemble at test time, so both always mean the same transforms."""

from __future__ import annotations

import torch
from torch import Tensor


def dihedral(x: Tensor, k: int) -> Tensor:
    """The ``k``-th (0–7) transform of ``[..., H, W]``: rotate by ``k mod 4`` quarter turns, then flip if ``k ≥ 4``."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def dihedral_inverse(y: Tensor, k: int) -> Tensor:
    """Undo :func:`dihedral`."""
    if k >= 4:
        y = y.flip(-1)
    return torch.rot90(y, -(k % 4), dims=(-2, -1))
