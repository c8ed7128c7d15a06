"""The first noises (demo and training) and PSNR: statistics, determinism, errors, hand values."""

from __future__ import annotations

import math

import pytest
import torch

from maskdn.errors import MaskdnError
from maskdn.metrics import psnr
from maskdn.noise import apply_noise, parse_noise


def test_gaussian_statistics():
    x = torch.full((3, 256, 256), 0.5)
    y = apply_noise(x, "gaussian:15", seed=0, quantize=False)
    d = y - x
    assert abs(d.mean().item()) < 1e-3
    assert abs(d.std().item() - 15 / 255) < 1e-3


def test_speckle_variance_matches_matlab_convention():
    x = torch.full((3, 256, 256), 0.5)
    y = apply_noise(x, "speckle:0.04", seed=0, quantize=False)
    n = (y - x) / x
    assert abs(n.mean().item()) < 2e-3
    assert abs(n.var().item() - 0.04) < 2e-3
    assert n.abs().max().item() <= math.sqrt(3 * 0.04) + 1e-6  # uniform support


def test_saltpepper_fraction():
    x = torch.full((3, 200, 200), 0.5)
    y = apply_noise(x, "saltpepper:0.02", seed=1, quantize=False)
    hit = (y != 0.5)
    assert abs(hit.float().mean().item() - 0.02) < 0.002
    assert abs((y == 1).float().mean().item() - 0.01) < 0.0015


def test_poisson_is_unbiased_and_scales_with_alpha():
    x = torch.rand(3, 128, 128) * 0.6 + 0.2
    x8 = torch.round(x * 255) / 255
    y1 = apply_noise(x, "poisson:1", seed=0, quantize=False)
    y3 = apply_noise(x, "poisson:3", seed=0, quantize=False)
    assert abs((y1 - x8).mean().item()) < 2e-3
    assert (y3 - x8).std() > 2.5 * (y1 - x8).std()


def test_seeded_and_quantized():
    x = torch.rand(3, 32, 32)
    a, b = apply_noise(x, "gaussian:25", seed=3), apply_noise(x, "gaussian:25", seed=3)
    assert torch.equal(a, b) and not torch.equal(a, apply_noise(x, "gaussian:25", seed=4))
    assert torch.equal(a, torch.round(a * 255) / 255) and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("spec", ["blur:3", "gaussian", "gaussian:abc", "gaussian:-1", "speckle:2"])
def test_bad_specs(spec):
    with pytest.raises(MaskdnError) as e:
        parse_noise(spec)
    assert spec in str(e.value) and "\n" not in str(e.value)


def test_psnr_hand_values():
    a = torch.zeros(3, 4, 4)
    b = a.clone()
    assert psnr(a, b) == math.inf
    b[0, 0, 0] = 10 / 255  # one value off by 10 levels among 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (100 / 48)), abs=1e-9)
    # Clamped and rounded to 8 bits before scoring.
    assert psnr(torch.full((1, 2, 2), 1.3), torch.ones(1, 2, 2)) == math.inf
