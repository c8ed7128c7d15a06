"""Input pixel mask and attention token mask: ratios, fill value, generator determinism."""

from __future__ import annotations

import pytest
import torch

from maskdn.errors import MaskdnError
from maskdn.masking import INPUT_MASK_FILL, input_mask, token_keep_mask


def test_input_mask_ratio_fill_and_channels():
    x = torch.rand(8, 3, 64, 64)
    assert INPUT_MASK_FILL == -0.1  # the paper's value, a value no image has
    masked, keep = input_mask(x, (0.8, 0.9), generator=torch.Generator().manual_seed(0))  # default fill
    assert keep.shape == (8, 1, 64, 64)
    hidden = 1 - keep.mean(dim=(1, 2, 3))
    assert ((hidden > 0.77) & (hidden < 0.93)).all()
    assert hidden.std() > 0.005  # a ratio is drawn per sample
    m = keep.bool().expand_as(x)
    assert torch.equal(masked[m], x[m])
    assert (masked[~m] == INPUT_MASK_FILL).all()  # all channels of a hidden pixel


def test_input_mask_is_seeded():
    x = torch.rand(2, 3, 16, 16)
    a, _ = input_mask(x, generator=torch.Generator().manual_seed(5))
    b, _ = input_mask(x, generator=torch.Generator().manual_seed(5))
    c, _ = input_mask(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_input_mask_rejects_bad_range():
    with pytest.raises(MaskdnError):
        input_mask(torch.rand(1, 3, 4, 4), (0.9, 0.8))


@pytest.mark.parametrize("device", ["cpu", "meta", *(["cuda"] if torch.cuda.is_available() else [])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75])
def test_token_keep_mask_ratio_dtype_device(ratio, dtype, device):
    """The mask drops about ``ratio`` of the tokens and is made in ``like``'s dtype, on its device."""
    like = torch.zeros(1, dtype=dtype, device=device)
    generator = None if device == "meta" else torch.Generator(device).manual_seed(0)
    keep = token_keep_mask((4, 64, 64, 1), ratio, like, generator)
    assert keep.shape == (4, 64, 64, 1) and keep.dtype == dtype and keep.device == like.device
    if device != "meta":  # a meta tensor has no values
        assert set(keep.unique().tolist()) <= {0.0, 1.0}
        assert abs(keep.float().mean().item() - (1 - ratio)) < 0.02  # 16,384 tokens: the mean's std is < 0.004
