"""Image geometry: the 8 flips/rotations of an image (the dihedral group), used for training
augmentation and for the self-ensemble at test time, so both always mean the same transforms; and
reflection padding (the model's padding to a window multiple, small training images, the noises'
3x3 filters)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def dihedral(x: Tensor, k: int) -> Tensor:
    """The ``k``-th (0–7) transform of ``[..., H, W]``: rotate by ``k mod 4`` quarter turns, then flip if ``k ≥ 4``.

    Args:
        x: Tensor ``[..., H, W]``, any dtype and device.
        k: Transform index in 0–7 (rotation ``torch.rot90`` over the last two dims, counter-clockwise;
            the flip is left–right).

    Returns:
        The transformed tensor, ``[..., H, W]`` for even ``k mod 4``, else ``[..., W, H]``.
    """
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def dihedral_inverse(y: Tensor, k: int) -> Tensor:
    """Undo :func:`dihedral`.

    Args:
        y: Output of ``dihedral(x, k)``.
        k: The same index, 0–7.

    Returns:
        ``x`` (equal values, shape ``[..., H, W]``).
    """
    if k >= 4:
        y = y.flip(-1)
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


def reflect_pad(x: Tensor, bottom: int = 0, right: int = 0, *, top: int = 0, left: int = 0,
                too_small: Literal["steps", "replicate"] = "steps") -> Tensor:
    """Reflection-pad ``[..., H, W]`` by ``bottom`` rows and ``right`` columns (and ``top``, ``left``).

    One reflection cannot reach further than the size minus one; ``too_small`` says what larger pads do:

    * ``"steps"``: reflect in several steps, each as far as the grown image allows; a side of a single
      pixel is replicated (the model's padding to a window multiple, small training images);
    * ``"replicate"``: one reflection where every side fits in it, else every side replicated
      (``[N, C, H, W]`` only; the noises' 3x3 filters).

    Args:
        x: Tensor ``[..., H, W]`` (``"steps"``: at least 2-D; ``"replicate"``: ``[N, C, H, W]``).
        bottom: Rows added below (pixels, ≥ 0).
        right: Columns added on the right (pixels, ≥ 0).
        top: Rows added above (pixels, ≥ 0).
        left: Columns added on the left (pixels, ≥ 0).
        too_small: ``"steps"`` or ``"replicate"``, as above.

    Returns:
        ``[..., H + top + bottom, W + left + right]``, same dtype and device.
    """
    if too_small == "replicate":
        H, W = x.shape[-2:]
        fits = max(top, bottom) < H and max(left, right) < W
        return F.pad(x, (left, right, top, bottom), mode="reflect" if fits else "replicate")
    while top > 0 or bottom > 0 or left > 0 or right > 0:
        H, W = x.shape[-2:]
        step_t, step_b, step_l, step_r = min(top, H - 1), min(bottom, H - 1), min(left, W - 1), min(right, W - 1)
        if step_t <= 0 and step_b <= 0 and step_l <= 0 and step_r <= 0:
            batch = x.reshape(-1, *x.shape[-3:]) if x.ndim >= 3 else x[None]
            out = F.pad(batch.float(), (left, right, top, bottom), mode="replicate").to(x.dtype)
            return out.reshape(*x.shape[:-2], *out.shape[-2:])
        x = F.pad(x, (step_l, step_r, step_t, step_b), mode="reflect")
        top, bottom, left, right = top - step_t, bottom - step_b, left - step_l, right - step_r
    return x


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflection-pad ``[B, C, H, W]`` at the bottom/right up to a multiple of ``multiple``.

    Args:
        x: Images ``[B, C, H, W]``.
        multiple: The multiple in pixels (the model's window size).

    Returns:
        ``[B, C, ⌈H/multiple⌉·multiple, ⌈W/multiple⌉·multiple]`` (``x`` unpadded where already a
        multiple), via :func:`reflect_pad` with ``too_small="steps"``.
    """
    H, W = x.shape[-2:]
    return reflect_pad(x, (-H) % multiple, (-W) % multiple)


def center_crop(x: Tensor, size: int | None) -> Tensor:
    """The central ``size``×``size`` window of ``[..., H, W]`` (a view, no copy).

    The window starts at row ``(H - size) // 2`` and column ``(W - size) // 2`` (rounding up and left
    when the margin is odd), as the center crops of the training validation, the benchmark gallery and
    the feature analysis always did; a side shorter than ``size`` is kept whole.

    Args:
        x: A tensor ``[..., H, W]`` (any dtype and device).
        size: The window's side in pixels; 0 or None keeps the whole image.

    Returns:
        ``x[..., top : top + min(size, H), left : left + min(size, W)]``, or ``x`` itself for 0/None.
    """
    if not size:
        return x
    H, W = x.shape[-2:]
    h, w = min(size, H), min(size, W)
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top : top + h, left : left + w]
