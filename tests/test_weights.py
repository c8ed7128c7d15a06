"""Loading and saving weights: our safetensors, the authors' files and .pth releases, bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import shared_path
from maskdn.errors import MaskdnError
from maskdn.model import MaskedSwinIR, preset
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


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, tiny_model):
    for bad in (float("nan"), float("inf")):
        tensors = {k: v.clone() for k, v in tiny_model.state_dict().items()}
        tensors["conv_last.weight"].view(-1)[3] = bad
        tiny_model_copy = type(tiny_model)(tiny_model.config)
        tiny_model_copy.load_state_dict(tensors)
        save_model(tiny_model_copy, tmp_path / "bad.safetensors")
        with pytest.raises(MaskdnError, match=r"bad.safetensors: tensor conv_last.weight holds NaN or inf"):
            load_model(tmp_path / "bad.safetensors")


def test_safetensors_recognized_by_structure_not_first_byte(tmp_path, tiny_model):
    """A header length whose low byte is 0x80 (a pickle's first byte) must still be read as safetensors,
    keeping its metadata: here an unmasked config that a pickle fallback would replace by the 0.75 default."""
    from maskdn.model import MaskedSwinIR

    model = MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0))
    for pad in range(300):
        path = tmp_path / "w.safetensors"
        save_model(model, path, training={"note": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    assert load_model(path).config.attn_mask_ratio == 0.0


@pytest.mark.parametrize("config, why", [
    ("not json", "Expecting value"),
    ("[1, 2]", "a JSON list, not an object"),
    ('{"depths": 5}', "int' object is not iterable"),
])
def test_broken_config_metadata_is_one_line(tmp_path, tiny_model, config, why):
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"maskdn.config": config})
    with pytest.raises(MaskdnError, match=rf"m.safetensors: broken maskdn.config metadata \(.*{why}") as e:
        load_model(tmp_path / "m.safetensors")
    assert "\n" not in str(e.value)


def test_weights_files_get_the_users_umask(tmp_path, tiny_model):
    import os

    old = os.umask(0o022)
    try:
        save_model(tiny_model, tmp_path / "a.safetensors")
        assert os.stat(tmp_path / "a.safetensors").st_mode & 0o777 == 0o644
        os.umask(0o077)
        save_model(tiny_model, tmp_path / "b.safetensors")
        assert os.stat(tmp_path / "b.safetensors").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_a_failed_write_is_one_line_and_keeps_the_old_file(tmp_path, tiny_model, monkeypatch):
    """A full disk surfaces from safetensors (its own error type) or torch.save (RuntimeError), not as
    OSError: both become one line naming the file, and the previous file stays."""
    import maskdn.weights as w
    from maskdn.train.checkpoint import save_state

    path = tmp_path / "m.safetensors"
    save_model(tiny_model, path)
    before = path.read_bytes()

    class SafetensorError(Exception):
        pass

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(w, "save_file", full)
    with pytest.raises(MaskdnError, match=r"m.safetensors: cannot write \(Error while serializing: .*No space left"):
        save_model(tiny_model, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]

    save_state(tmp_path / "state.pt", {"iteration": 1})

    def torch_full(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", torch_full)
    with pytest.raises(MaskdnError, match=r"state.pt: cannot write \(PytorchStreamWriter failed .*\); the previous state is kept"):
        save_state(tmp_path / "state.pt", {"iteration": 2})
    monkeypatch.undo()
    assert torch.load(tmp_path / "state.pt", weights_only=True) == {"iteration": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "state.pt"]


def _release(tmp_path, name: str) -> Path:
    """A tensors-only .pth named as the authors name their releases (our tiny model's state dict)."""
    torch.manual_seed(0)
    path = tmp_path / name
    torch.save(MaskedSwinIR(preset("tiny")).state_dict(), path)
    return path


@pytest.mark.parametrize("name, ratio", [("baseline.pth", 0.0), ("input_mask_80_90.pth", 0.75), ("Baseline_ema.pth", 0.0)])
def test_authors_release_names_set_the_mask_ratio(tmp_path, name, ratio, recwarn):
    assert load_model(_release(tmp_path, name)).config.attn_mask_ratio == ratio
    assert not [w for w in recwarn if "guessed" in str(w.message)]


def test_other_names_say_what_was_guessed_and_the_ratio_can_be_set(tmp_path):
    path = _release(tmp_path, "release.pth")
    with pytest.warns(UserWarning, match=r"release.pth: stores no config; guessed attention mask ratio 0.75"):
        assert load_model(path).config.attn_mask_ratio == 0.75
    plain = load_model(path, attn_mask_ratio=0)
    assert plain.config.attn_mask_ratio == 0 and not plain.masks_attention
    with pytest.raises(MaskdnError, match=r"--attn-mask-ratio 1.5: .*attn_mask_ratio must be in \[0, 1\)"):
        load_model(path, attn_mask_ratio=1.5)


def test_cli_warns_in_one_line_and_takes_the_ratio(tmp_path, capsys):
    """maskdn denoise on a config-less .pth: one warning line; --attn-mask-ratio 0 runs the unmasked model."""
    import numpy as np

    from maskdn.cli import main
    from maskdn.inference import denoise
    from maskdn.io import read_image, write_image

    path = _release(tmp_path, "release.pth")
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    write_image(tmp_path / "x.png", img)
    assert main(["denoise", str(tmp_path / "x.png"), "-o", str(tmp_path / "a.png"), "--model", str(path)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and err[0].startswith("maskdn: warning: ") and "guessed attention mask ratio 0.75" in err[0]
    assert main(["denoise", str(tmp_path / "x.png"), "-o", str(tmp_path / "b.png"), "--model", str(path),
                 "--attn-mask-ratio", "0"]) == 0
    assert "warning" not in capsys.readouterr().err
    ref = MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0)).eval()
    ref.load_state_dict(torch.load(path, weights_only=True))
    assert np.array_equal(read_image(tmp_path / "b.png"), denoise(img, ref))  # the unmasked model ran
    assert not np.array_equal(read_image(tmp_path / "a.png"), read_image(tmp_path / "b.png"))  # the guess differs


def test_featured_pair_is_the_most_trained_masked_and_unmasked_swinir():
    from maskdn.weights import featured_pair

    def row(name, arch="masked-swinir", ratio=0.0, **training):
        return {"name": name, "architecture": arch, "attn_mask_ratio": ratio, "training": training}

    small = {"preset": "small", "patch_size": 48}
    long = {"preset": "small", "patch_size": 64, "patches_seen": 1_050_000}
    rows = [row("baseline-small", patches_seen=128000, **small), row("masked-small", ratio=0.75, patches_seen=128000, **small),
            row("idf-g15", arch="idf"), row("baseline-1m", **long), row("masked-1m", ratio=0.75, input_mask=[0.0, 0.9], **long),
            row("inputmask-only", patches_seen=9_000_000, input_mask=[0.0, 0.9]),  # neither masked nor a baseline
            row("masked-paper", ratio=0.75, preset="paper", patch_size=64, patches_seen=5_000_000)]  # no twin
    assert featured_pair(rows) == ("masked-1m", "baseline-1m")
    assert featured_pair(rows[:3]) == ("masked-small", "baseline-small")
    assert featured_pair(rows[:4]) == ("masked-small", "baseline-small")  # baseline-1m alone does not pair
    assert featured_pair([r for r in rows if r["attn_mask_ratio"] == 0]) is None
