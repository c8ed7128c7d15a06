"""The fused CPU attention kernel (maskdn.fastpath.kernels): build, numerics against the PyTorch path, fallbacks."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import HAS_C_COMPILER

from maskdn.fastpath import kernels
from maskdn.model import MaskedSwinIR, SwinTransformerBlock, preset


@pytest.fixture
def fresh_kernel_state(monkeypatch):
    """Forget the process's build result, so a test can build (or fail to) under its own settings."""
    monkeypatch.setattr(kernels, "_status", None)
    monkeypatch.setattr(kernels, "_lib", None)


@pytest.mark.skipif(not HAS_C_COMPILER, reason="no C compiler on this machine")
def test_kernel_builds_where_a_compiler_exists():
    assert kernels.kernel_status() == "compiled"


def _block_run(block, x, size, keep, grad_out):
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = block(x, size, keep)
    out.backward(grad_out)
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in block.named_parameters()}


@pytest.mark.skipif(not HAS_C_COMPILER, reason="no C compiler on this machine")
@pytest.mark.parametrize("ws", [8, 4], ids=["window8", "window4"])  # 64 queries: the specialised loop; 16: generic
@pytest.mark.parametrize("ratio", [0.05, 0.75, 0.97])  # 0.05: windows with no masked key; 0.97: nearly none kept
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dim", [24, 30], ids=["head8", "head10"])  # head width 8: the vector loops; 10: generic
def test_kernel_matches_pytorch_path(monkeypatch, ws, ratio, threads, dim):
    """Output and every gradient of a shifted block, kernel against the PyTorch kept-keys path. Weights are
    made large (bias, position table) so that a wrong key row, bias gradient or fold shows."""
    torch.manual_seed(0)
    block = SwinTransformerBlock(dim, 3, ws, ws // 2, 2.0)
    with torch.no_grad():
        block.attn.qkv.weight.mul_(10)
        block.attn.qkv.bias.normal_()
        block.attn.relative_position_bias_table.normal_(std=2)
    size = (24, 40)
    x = torch.randn(2, size[0] * size[1], dim)
    n_windows = 2 * size[0] * size[1] // ws**2
    keep = (torch.rand(n_windows, ws * ws, 1) >= ratio).float()
    grad_out = torch.randn_like(x)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the kernel's split, not torch's own pool
    results = {}
    assert kernels.kernel_status() == "compiled"
    for on in (True, False):
        with contextlib.nullcontext() if on else kernels.disabled():
            results[on] = _block_run(block, x, size, keep, grad_out)
            with torch.no_grad():
                results[on, "no_grad"] = block(x, size, keep)
    (out_k, dx_k, g_k), (out_t, dx_t, g_t) = results[True], results[False]
    assert (out_k - out_t).abs().max().item() <= 1e-5 * out_t.abs().max().item()
    assert (results[True, "no_grad"] - results[False, "no_grad"]).abs().max().item() <= 1e-5 * out_t.abs().max().item()
    assert torch.allclose(dx_k, dx_t, rtol=1e-4, atol=1e-5 * dx_t.abs().max().item())
    for name, g in g_t.items():
        assert torch.isfinite(g_k[name]).all(), name
        assert torch.allclose(g_k[name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item()), name


@pytest.mark.skipif(not HAS_C_COMPILER, reason="no C compiler on this machine")
def test_masked_model_runs_the_kernel_in_training_and_inference(monkeypatch):
    """A silent fallback to the PyTorch path would pass every numeric test: count the kernel's calls."""
    calls = {"forward": 0, "backward": 0}
    forward, backward = kernels._KeptAttention.forward, kernels._KeptAttention.backward

    def count(kind, fn):
        def wrapped(*args):
            calls[kind] += 1
            return fn(*args)
        return staticmethod(wrapped)

    monkeypatch.setattr(kernels._KeptAttention, "forward", count("forward", forward))
    monkeypatch.setattr(kernels._KeptAttention, "backward", count("backward", backward))
    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny"))
    model.train()(torch.rand(1, 3, 16, 16)).mean().backward()
    # four blocks, each attending its four windows in four groups (maskdn.fastpath.block.KEPT_KEY_CUTS)
    assert calls == {"forward": 16, "backward": 16}
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 16, 16))
    assert calls["forward"] == 20  # one group of windows per block


def test_kernel_takes_float32_and_bf16_autocast_only(monkeypatch):
    """Under bf16 autocast the kernel computes in float32 from the bf16 projection; a bf16 tensor outside
    autocast, or float64, keeps the PyTorch path."""
    monkeypatch.setattr(kernels, "kernel_status", lambda: "compiled")
    x = torch.zeros(2, 3, 6)
    assert kernels.kernel_available(x)
    assert not kernels.kernel_available(x.double())
    assert not kernels.kernel_available(x.bfloat16())
    with torch.autocast("cpu", torch.bfloat16):
        assert kernels.kernel_available(x.bfloat16())
        assert kernels.kernel_available(x)


def test_environment_switch_turns_it_off(monkeypatch, fresh_kernel_state):
    monkeypatch.setenv("MASKDN_CPU_KERNEL", "0")
    assert kernels.kernel_status() == "off (MASKDN_CPU_KERNEL=0)"
    assert not kernels.kernel_available(torch.zeros(1))


@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_without_a_working_compiler_the_model_falls_back(monkeypatch, fresh_kernel_state, tmp_path, compiler):
    """No compiler, or one that fails: a one-line reason, no exception, and the model still computes
    the reference's function on its PyTorch path."""
    if compiler == "missing":
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    else:
        fake = tmp_path / "cc"
        fake.write_text("#!/bin/sh\necho 'fake cc 1.0'\n[ \"$1\" = --version ] && exit 0\necho 'error: broken' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("MASKDN_CACHE_DIR", str(tmp_path / "cache"))
    status = kernels.kernel_status()
    assert status.startswith("unavailable: ") and "\n" not in status
    if compiler == "failing":
        assert "broken" in status
    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny")).eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        fast = model(x, generator=torch.Generator().manual_seed(1))
        reference = model.set_attention("reference")(x, generator=torch.Generator().manual_seed(1))
    assert (fast - reference).abs().max().item() <= 1e-4


@pytest.mark.skipif(not HAS_C_COMPILER, reason="no C compiler on this machine")
def test_build_is_cached_and_reused(monkeypatch, fresh_kernel_state, tmp_path):
    monkeypatch.setenv("MASKDN_CACHE_DIR", str(tmp_path))
    assert kernels.kernel_status() == "compiled"
    built = list((tmp_path / "kernels").glob("kept_attention-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    kernels._build()
    assert built[0].stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "kernels").iterdir() if p != built[0]]  # no temporary leftovers


def test_disabled_is_scoped(monkeypatch):
    monkeypatch.setattr(kernels, "kernel_status", lambda: "compiled")
    x = torch.zeros(2, 3, 6)
    with kernels.disabled():
        assert not kernels.kernel_available(x)
        with kernels.disabled():
            pass
        assert not kernels.kernel_available(x)  # a nested exit does not re-enable it
    assert kernels.kernel_available(x)
