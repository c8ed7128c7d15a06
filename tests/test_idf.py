"""IDF (maskdn.idf): conformance with the authors' code on their released weights, and its config."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import shared_path
from maskdn.errors import MaskdnError
from maskdn.idf import IDFConfig, IDFNet, checkpoint_filter_fn

RELEASES = ["idf_g_15", "idf_g_15_50", "idf_gp"]
"""The authors' three checkpoints, as converted into ../shared/rivals/idf/ (keys as in the .ckpt)."""

CASES = {  # reference output key suffix → (input key, forward options)
    "random": ("input_random", {}),
    "kodim_noisy": ("input_kodim_noisy", {}),
    "kodim_noisy_adaptive": ("input_kodim_noisy", {"adaptive": True}),
    "kodim_noisy_iter4": ("input_kodim_noisy", {"iterations": 4}),
}


@pytest.fixture(scope="module")
def reference_io() -> dict[str, torch.Tensor]:
    return load_file(str(shared_path("rivals", "idf", "idf_io.safetensors")))


def _release(name: str) -> IDFNet:
    model = IDFNet().eval()
    model.load_state_dict(checkpoint_filter_fn(load_file(str(shared_path("rivals", "idf", f"{name}.safetensors")))))
    return model


@pytest.mark.parametrize("release", RELEASES)
def test_matches_the_authors_outputs(release, reference_io):
    """Every output the authors' code produced with these weights: full, adaptive, 4 iterations; odd sizes."""
    model = _release(release)
    with torch.inference_mode():
        for case, (inp, options) in CASES.items():
            got = model(reference_io[inp], **options)
            want = reference_io[f"{release}/{case}"]
            assert got.shape == want.shape
            assert (got - want).abs().max().item() <= 1e-4, (release, case)


def test_adaptive_halting_stops_early_and_only_then(reference_io):
    """The reference's adaptive output differs from the full one; ours halts where theirs did, per image."""
    model = _release("idf_g_15")
    x = reference_io["input_kodim_noisy"]
    with torch.inference_mode():
        xn = x * model.scale + model.shift
        _, full = model.forward_normalized(xn)
        _, halted = model.forward_normalized(xn, adaptive=True)
        assert full == 10 and 3 < halted < 10
        # a batch halts each image on its own: the noisy crop's result does not depend on its batch mate
        mate = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
        both = model(torch.cat([x, mate]), adaptive=True)
        assert (both[:1] - reference_io["idf_g_15/kodim_noisy_adaptive"]).abs().max().item() <= 1e-4


def test_parameter_count_and_determinism(reference_io):
    model = _release("idf_gp")
    assert sum(p.numel() for p in model.parameters()) == 49_021  # the paper's count
    x = reference_io["input_random"]
    with torch.inference_mode():
        assert torch.equal(model(x), model(x, generator=torch.Generator().manual_seed(5)))


def test_config_checks_and_round_trip():
    config = IDFConfig(iterations=6, adaptive=True)
    assert IDFConfig.from_dict(config.to_dict()) == config
    with pytest.raises(MaskdnError, match="kernel_size must be odd"):
        IDFConfig(kernel_size=4)
    with pytest.raises(MaskdnError, match="one per channel"):
        IDFConfig(in_chans=1)
    with pytest.raises(MaskdnError, match="unknown IDFConfig field"):
        IDFConfig.from_dict({"window_size": 8})


def test_input_checks():
    model = IDFNet().eval()
    with pytest.raises(MaskdnError, match=r"expected input \[B, 3, H, W\]"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(MaskdnError, match="at least 3×3"):
        model(torch.rand(1, 3, 2, 40))
