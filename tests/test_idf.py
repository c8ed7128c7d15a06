"""IDF (maskdn.idf): conformance with the authors' code on their released weights, loading (zoo, .ckpt), inference, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import shared_path
from maskdn.cli import main
from maskdn.errors import MaskdnError
from maskdn.idf import IDFConfig, IDFNet, checkpoint_filter_fn
from maskdn.inference import denoise_tensor
from maskdn.io import read_image, write_image
from maskdn.weights import describe_zoo, load_model, save_model
from maskdn.zoo import zoo_dir

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


# --------------------------------------------------------------------------------------------------
# Loading: the zoo entries and the authors' .ckpt files
# --------------------------------------------------------------------------------------------------

ZOO = {"idf-g15": "idf_g_15", "idf-g15-50": "idf_g_15_50", "idf-gp": "idf_gp"}


@pytest.mark.parametrize("name", ZOO)
def test_zoo_entries_reproduce_the_authors(name, reference_io):
    """The bundled files (what `maskdn ... --model idf-g15` runs) are the released weights."""
    model = load_model(name)
    assert isinstance(model, IDFNet) and not model.training
    with torch.inference_mode():
        got = model(reference_io["input_kodim_noisy"])
    assert (got - reference_io[f"{ZOO[name]}/kodim_noisy"]).abs().max().item() <= 1e-4


def test_zoo_listing_gives_provenance_noise_and_licence(capsys):
    rows = {r["name"]: r for r in describe_zoo()}
    for name in ZOO:
        r = rows[name]
        assert r["architecture"] == "idf" and r["parameters"] == 49_021 and r["attn_mask_ratio"] == 0
        assert "dongjinkim9/IDF" in r["training"]["source"] and "Apache-2.0" in r["training"]["licence"]
    assert rows["idf-g15"]["training"]["noise"] == "gaussian:15"
    for f in ("IDF-LICENSE.txt", "IDF-NOTICE.txt"):  # redistributed with the weights (package data)
        assert (zoo_dir() / f).stat().st_size > 0
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    from maskdn.zoo import DEFAULT_MODEL

    for name in ZOO:  # the default is marked so (idf-g15, by the default-model rule)
        label = name + (" (default)" if name == DEFAULT_MODEL else "")
        assert f"{label}: IDF (Kim et al., ICCV 2025), 49,021 parameters" in out
    assert "licence Apache-2.0" in out


_CALLED: list[str] = []


def _side_effect(*args):
    _CALLED.append("ran")


class _Hyper:
    """Stands for another library's object in a training checkpoint; unpickling it would run _side_effect."""

    def __reduce__(self):
        return (_side_effect, ("hyper-parameters",))


def _lightning_like(path, reference_state, extra):
    state = {f"model.{k}": v for k, v in reference_state.items()}
    torch.save({"epoch": 0, "global_step": 50000, "state_dict": state, "hyper_parameters": extra}, path)
    return path


def test_ckpt_loads_tensors_only(tmp_path, reference_io):
    """A Lightning checkpoint whose hyper-parameters are foreign objects: tensors loaded, nothing of them run."""
    state = load_file(str(shared_path("rivals", "idf", "idf_g_15.safetensors")))
    path = _lightning_like(tmp_path / "idf_g_15.ckpt", state, {"config": _Hyper(), "betas": [0.9, 0.999]})
    model = load_model(path)
    assert _CALLED == []
    with torch.inference_mode():
        got = model(reference_io["input_random"])
    assert (got - reference_io["idf_g_15/random"]).abs().max().item() <= 1e-4


class _Evil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", [_Evil(), torch.nn.Conv2d(3, 3, 1)], ids=["builtin-call", "pickled-module"])
def test_ckpt_with_code_or_modules_is_refused_in_one_line(tmp_path, payload):
    state = load_file(str(shared_path("rivals", "idf", "idf_g_15.safetensors")))
    path = _lightning_like(tmp_path / "bad.ckpt", state, {"x": payload})
    with pytest.raises(MaskdnError, match=r"bad\.ckpt: refused: not a plain tensor checkpoint") as e:
        load_model(path)
    assert "\n" not in str(e.value)


def test_saved_idf_round_trips_with_its_config(tmp_path, reference_io):
    model = IDFNet(IDFConfig(iterations=4))
    model.load_state_dict(load_model("idf-g15").state_dict())
    back = load_model(save_model(model, tmp_path / "idf4.safetensors"))
    assert back.config == model.config  # the config travels in the metadata
    with torch.inference_mode():
        got = back(reference_io["input_kodim_noisy"])
    assert (got - reference_io["idf_g_15/kodim_noisy_iter4"]).abs().max().item() <= 1e-4


# --------------------------------------------------------------------------------------------------
# Inference plumbing and the command line
# --------------------------------------------------------------------------------------------------


def test_inference_options_work_for_idf(reference_io):
    model = load_model("idf-g15")
    x = reference_io["input_kodim_noisy"]
    whole = denoise_tensor(model, x)
    assert torch.equal(denoise_tensor(model, x, passes=4), whole)  # deterministic: one pass whatever K
    tiled = denoise_tensor(model, x, tile=64, tile_overlap=32)
    # tiles see their own global statistics: close to the whole image, not equal
    assert (tiled - whole).abs().mean().item() < 0.005 < (whole - x).abs().mean().item()
    for other in (denoise_tensor(model, x, self_ensemble=True), denoise_tensor(model, x, bf16=True)):
        assert other.shape == x.shape and (other - whole).abs().mean().item() < 0.005


@pytest.fixture
def small_photo(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    yy, xx = np.indices((40, 56))
    clean = (128 + 60 * np.sin(xx / 7) * np.cos(yy / 9)).astype(np.uint8)  # smooth: a denoiser must gain
    write_image(d / "ramp.png", np.stack([clean, clean[::-1], clean[:, ::-1]], -1))
    return d


def test_denoise_and_bench_commands_end_to_end(tmp_path, small_photo, capsys):
    out = tmp_path / "dn.png"
    assert main(["denoise", str(small_photo / "ramp.png"), "-o", str(out), "--model", "idf-g15", "--tile", "32",
                 "--tile-overlap", "8"]) == 0
    assert read_image(out).shape == (40, 56, 3)
    bench = tmp_path / "bench"
    assert main(["bench", "--data", str(small_photo), "--model", "idf-g15", "--method", "noisy",
                 "--noise", "gaussian:25", "--passes", "4", "--out", str(bench)]) == 0
    records = json.loads((bench / "results.json").read_text())
    idf = [r for r in records if r["method"] == "idf-g15"]
    assert len(idf) == 1 and idf[0]["passes"] == 1  # deterministic: scored once, not at 1 and 4 passes
    noisy = next(r for r in records if r["method"] == "noisy")
    assert idf[0]["psnr"] > noisy["psnr"] + 3
