"""deepinv interop: a maskdn model as a deepinv denoiser in deepinv's own algorithms, and the reverse."""

from __future__ import annotations

import builtins
import importlib.util
import sys

import pytest
import torch

from maskdn.datasets import Sample
from maskdn.demo import sample_paths
from maskdn.datasets import load_image
from maskdn.errors import MaskdnError
from maskdn.inference import denoise_tensor, model_pass
from maskdn.metrics import psnr
from maskdn.model import MaskedSwinIR, preset

_TORCHVISION_STAND_IN = None


def _import_deepinv():
    """deepinv, importable also where PyPI's torchvision cannot load its C ops.

    PyPI's torchvision wheels are built against the CUDA build of torch; next to the CPU build (what
    this project's machines and CI install) their C extension does not load, and torchvision's import
    then stops at registering a fake kernel for its ``nms`` operator. deepinv imports torchvision but
    none of its detection operators; declaring the two operator schemas torchvision's import needs
    (no kernels) lets it import. Where torchvision imports normally this does nothing.
    """
    global _TORCHVISION_STAND_IN
    if importlib.util.find_spec("deepinv") is None:  # (importorskip would import it, torchvision first)
        pytest.skip("the deepinv extra is not installed")
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        _TORCHVISION_STAND_IN = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            _TORCHVISION_STAND_IN.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import deepinv

    return deepinv


@pytest.fixture(scope="module")
def dinv():
    return _import_deepinv()


@pytest.fixture(scope="module")
def photo():
    """A 48×48 crop of a bundled Kodak sample, [1, 3, 48, 48] in [0, 1]."""
    return load_image(sample_paths()[0])[None, :, 100:148, 100:148].contiguous()


def test_a_deepinv_denoiser(dinv):
    from maskdn.interop.deepinv import to_deepinv

    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny")).eval()  # masked: stochastic at test time
    den = to_deepinv(model, passes=2, seed=7)
    assert isinstance(den, dinv.models.Denoiser)
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = den(x, 0.1)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the passes maskdn.denoise runs (border context), masks drawn in order from the seed
        want = (model_pass(model, x, g) + model_pass(model, x, g)) / 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.equal(den(x, 0.1), got)  # the next call draws new masks
        gray = den(x[:, :1], 0.1)
    assert gray.shape == (2, 1, 16, 24)
    with pytest.raises(MaskdnError, match="2-channel"):
        den(x[:, :2], 0.1)


def test_an_idf_model_as_a_deepinv_denoiser(dinv, photo):
    """IDF (deterministic) through the same wrapper: one pass whatever ``passes``, the estimate of maskdn.denoise."""
    from maskdn.interop.deepinv import to_deepinv
    from maskdn.weights import load_model

    idf = load_model("idf-g15")
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        got = to_deepinv(idf, passes=3)(noisy, 0.1)
        assert torch.equal(to_deepinv("idf-g15")(noisy, 0.1), got)
    torch.testing.assert_close(got.clamp(0, 1), denoise_tensor(idf, noisy), atol=1e-6, rtol=0)
    assert psnr(got.clamp(0, 1)[0], photo[0]) > psnr(noisy[0], photo[0]) + 5


def test_gradients_flow_for_unfolded_training(dinv):
    from maskdn.interop.deepinv import to_deepinv

    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny")).train()
    den = to_deepinv(model)
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    den(x, 0.05).square().mean().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in model.conv_first.parameters())


def test_plug_and_play_in_deepinv(dinv, photo):
    """deepinv's PnP half-quadratic splitting with the bundled baseline as its prior: it denoises."""
    from maskdn.interop.deepinv import to_deepinv

    physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(sigma=15 / 255, rng=torch.Generator().manual_seed(0)))
    y = physics(photo)
    model = dinv.optim.optim_builder(
        iteration="HQS", prior=dinv.optim.PnP(denoiser=to_deepinv("baseline-small")),
        data_fidelity=dinv.optim.data_fidelity.L2(), max_iter=3,
        params_algo={"stepsize": 1.0, "g_param": 15 / 255, "lambda": 1.0})
    with torch.no_grad():
        x_hat = model(y, physics)
    assert x_hat.shape == photo.shape and bool(torch.isfinite(x_hat).all())
    assert psnr(x_hat.clamp(0, 1)[0], photo[0]) > psnr(y.clamp(0, 1)[0], photo[0]) + 3


def test_a_deepinv_denoiser_in_the_benchmark(dinv, photo):
    from maskdn.generalization import run_bench
    from maskdn.interop.deepinv import from_deepinv

    name, fn = from_deepinv(dinv.models.MedianFilter(), 25 / 255)
    assert name == "MedianFilter-s25"
    records = run_bench([("crop", [Sample("kodim", photo[0])])], [(name, fn)], ["gaussian:25"], None,
                        progress=False, lpips=False)
    (r,) = [r for r in records if r["method"] == name]
    assert r["psnr"] > 20  # a 3×3 median of σ=25 noise (about 20.2 dB noisy)


def test_without_deepinv_is_one_line(monkeypatch):
    from maskdn.interop import deepinv as bridge

    real_import = builtins.__import__

    def no_deepinv(name, *args, **kwargs):
        if name == "deepinv":
            raise ImportError("No module named 'deepinv'", name="deepinv")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_deepinv)
    monkeypatch.setattr(bridge, "_CLASS", None)
    with pytest.raises(MaskdnError, match=r"pip install 'maskdn\[deepinv\]'"):
        bridge.to_deepinv("baseline-small")
