"""maskdn.fastpath.linear: the oneDNN float32 linear layer against F.linear, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import maskdn.fastpath.linear as lin


@pytest.fixture
def onednn():
    x, w = torch.zeros(1, 1), torch.zeros(1, 1)
    if not lin.uses_onednn(x, w):
        pytest.skip("this PyTorch build has no oneDNN linear op")


@pytest.fixture
def calls(monkeypatch):
    """Counts the oneDNN calls, so a silent fallback to F.linear fails the test."""
    count = {"n": 0}
    real = lin.onednn_linear

    def spy(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(lin, "onednn_linear", spy)
    return count


def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("width", [24, 64], ids=["weight_grad_mkl", "weight_grad_onednn"])
def test_linear_matches_f_linear_with_gradients(onednn, calls, monkeypatch, bias, width):
    strided = {"n": 0}
    real = lin.onednn_strided

    def spy(*args):
        strided["n"] += 1
        return real(*args)

    monkeypatch.setattr(lin, "onednn_strided", spy)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, width, generator=g).transpose(0, 1)  # non-contiguous input
    w, b = torch.randn(40, width, generator=g), torch.randn(40, generator=g)
    args = (x, w, b) if bias else (x, w)
    got, got_grads = _grads(lin.linear, *args)
    want, want_grads = _grads(F.linear, *args)
    assert calls["n"] == 2  # forward and the input gradient
    assert strided["n"] == (width >= lin.STRIDED_WEIGHT_GRAD_MIN_IN)  # the weight gradient's library
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    for a, e in zip(got_grads, want_grads):
        assert a.shape == e.shape and torch.allclose(a, e, atol=1e-4, rtol=1e-5)


def test_linear_gelu_fuses_without_autograd_and_differentiates_with_it(onednn, calls):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(200, 16, generator=g), torch.randn(32, 16, generator=g), torch.randn(32, generator=g)
    with torch.no_grad():
        fused = lin.linear_gelu(x, w, b)
    assert calls["n"] == 1 and torch.allclose(fused, F.gelu(F.linear(x, w, b)), atol=1e-5)
    got, got_grads = _grads(lin.linear_gelu, x, w, b)
    want, want_grads = _grads(lambda *a: F.gelu(F.linear(*a)), x, w, b)
    assert torch.allclose(got, want, atol=1e-5)
    for a, e in zip(got_grads, want_grads):
        assert torch.allclose(a, e, atol=1e-4, rtol=1e-5)


def test_falls_back_under_autocast_and_for_other_dtypes(onednn, calls):
    x, w, b = torch.randn(8, 4), torch.randn(3, 4), torch.randn(3)
    with torch.autocast("cpu", torch.bfloat16):
        assert lin.linear(x, w, b).dtype == torch.bfloat16
    assert lin.linear(x.double(), w.double(), b.double()).dtype == torch.float64
    assert calls["n"] == 0


def test_environment_switch_turns_it_off(monkeypatch, calls):
    monkeypatch.setenv("MASKDN_ONEDNN_LINEAR", "0")
    monkeypatch.setattr(lin, "_available", None)
    x, w = torch.randn(8, 4), torch.randn(3, 4)
    assert not lin.uses_onednn(x, w)
    assert torch.equal(lin.linear(x, w), F.linear(x, w)) and calls["n"] == 0


def test_probe_leaves_the_global_rng_alone(monkeypatch):
    """The first fast-path call probes the op; that must not shift a seeded run's random draws."""
    monkeypatch.setattr(lin, "_available", None)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    lin.uses_onednn(torch.zeros(1, 1), torch.zeros(1, 1))
    assert torch.equal(torch.rand(3), expected)
