"""Input pixel mask and attention token mask: ratios, fill value, generator determinism."""

from __future__ import annotations

import pytest
import torch

from maskdn.masking import input_mask, token_keep_mask


def test_input_mask_ratio_fill_and_channels():
    x = torch.rand(8, 3, 64, 64)
    masked, keep = input_mask(x, (0.8, 0.9), -0.1, torch.Generator().manual_seed(0))
    assert keep.shape == (8, 1, 64, 64)
    hidden = 1 - keep.mean(dim=(1, 2, 3))
    assert ((hidden > 0.77) & (hidden < 0.93)).all()
    assert hidden.std() > 0.005  # a ratio is drawn per sample
    m = keep.bool().expand_as(x)
    assert torch.equal(masked[m], x[m])
    assert (masked[~m] == -0.1).all()  # all channels of a hidden pixel


def test_input_mask_is_seeded():
    x = torch.rand(2, 3, 16, 16)
    a, _ = input_mask(x, generator=torch.Generator().manual_seed(5))
    b, _ = input_mask(x, generator=torch.Generator().manual_seed(5))
    c, _ = input_mask(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_input_mask_rejects_bad_range():
    with pytest.raises(ValueError):
        input_mask(torch.rand(1, 3, 4, 4), (0.9, 0.8))


def test_token_keep_mask_ratio_dtype_device():
    like = torch.zeros(1, dtype=torch.bfloat16)
    keep = token_keep_mask((4, 64, 64, 1), 0.75, like, torch.Generator().manual_seed(0))
    assert keep.dtype == torch.bfloat16 and keep.shape == (4, 64, 64, 1)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    assert abs(keep.float().mean().item() - 0.25) < 0.02
