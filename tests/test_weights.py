"""Loading and saving weights: our safetensors, the authors' files and .pth releases, bad files."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import shared_path
from maskdn.errors import MaskdnError
from maskdn.model import preset
from maskdn.weights import load_model, read_metadata, save_model

NO_MASK = preset("tiny", attn_mask_ratio=0.0)


def _authors_tiny():
    root = shared_path("conformance")
    return load_file(str(root / "tiny_weights.safetensors")), load_file(str(root / "tiny_io.safetensors"))


def _check_outputs(model, io):
    for key in ("x_64x64", "x_37x53"):
        with torch.no_grad():
            assert (model(io[f"input.{key}"]) - io[f"output.{key}"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_load_authors_safetensors(name):
    root = shared_path("conformance")
    cfg = preset(name, attn_mask_ratio=0.0)
    model = load_model(root / f"{name}_weights.safetensors", config=cfg)
    _check_outputs(model, load_file(str(root / f"{name}_io.safetensors")))


def test_authors_file_without_config_infers_architecture():
    root = shared_path("conformance")
    model = load_model(root / "tiny_weights.safetensors")
    assert model.config.embed_dim == 24 and model.config.depths == (2, 2)
    assert model.config.attn_mask_ratio == 0.75  # masking fields keep the paper default


@pytest.mark.parametrize("wrap", ["plain", "params", "params_ema", "module"])
def test_load_pth_releases(tmp_path, wrap):
    weights, io = _authors_tiny()
    sd = {k: v.clone() for k, v in weights.items()}
    obj = {
        "plain": sd,
        "params": {"params": sd},
        "params_ema": {"params": {k: torch.zeros_like(v) for k, v in sd.items()}, "params_ema": sd},
        "module": {f"module.{k}": v for k, v in sd.items()},
    }[wrap]
    path = tmp_path / "release.pth"
    torch.save(obj, path)
    _check_outputs(load_model(path, config=NO_MASK), io)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state": Payload()}, f, protocol=2)
    with pytest.raises(MaskdnError, match="evil.pth: refused"):
        load_model(path)
    assert not marker.exists()


def test_own_format_round_trip(tmp_path, tiny_masked_model):
    path = save_model(tiny_masked_model, tmp_path / "m.safetensors", training={"iterations": 7})
    meta = read_metadata(path)
    assert meta["training"] == {"iterations": 7}
    loaded = load_model(path)
    assert loaded.config == tiny_masked_model.config
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        a = loaded(x, generator=torch.Generator().manual_seed(0))
        b = tiny_masked_model(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp*"))
    # A given config overrides the stored one, e.g. to switch masking off.
    assert load_model(path, config=NO_MASK).config.attn_mask_ratio == 0.0


def _bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a weights file\n")
    elif kind == "truncated":
        save_file({"w": torch.zeros(1000)}, str(path))
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "wrong_arch":
        save_file({"conv_first.weight": torch.zeros(24, 3, 1, 1)}, str(path))
    elif kind == "standard_swinir":
        save_file({"conv_first.weight": torch.zeros(60, 3, 3, 3)}, str(path))
    return path


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "wrong_arch", "standard_swinir"])
def test_bad_weights_files_are_one_line_errors(tmp_path, kind):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(MaskdnError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg


def test_config_mismatch_lists_keys(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    with pytest.raises(MaskdnError, match="do not fit.*missing"):
        load_model(path, config=preset("small"))


def test_missing_file_and_unknown_zoo_name(tmp_path):
    with pytest.raises(MaskdnError, match="no such"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(MaskdnError, match="no-such-model: no such zoo model"):
        load_model("no-such-model")
