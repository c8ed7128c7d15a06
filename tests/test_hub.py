"""``hf://`` weights references: resolved through huggingface_hub's cache, offline, against a local cache folder."""

from __future__ import annotations

import shutil

import pytest
import torch

from maskdn import load_model
from maskdn.errors import MaskdnError
from maskdn.zoo import parse_hub_reference, resolve, zoo_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_parse_hub_reference():
    assert parse_hub_reference("hf://owner/repo/model.safetensors") == ("owner/repo", "model.safetensors", None)
    assert parse_hub_reference("hf://owner/repo@v1.0/sub/dir/m.safetensors") == ("owner/repo", "sub/dir/m.safetensors", "v1.0")
    for bad in ("hf://owner/repo", "hf://owner//m.safetensors", "hf://owner/repo@/m.safetensors", "hf://owner/repo/"):
        with pytest.raises(MaskdnError, match="hf://"):
            parse_hub_reference(bad)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """A Hub cache folder holding owner/repo at COMMIT (main) with the bundled baseline-small, offline."""
    hub = pytest.importorskip("huggingface_hub", reason="the hub extra (huggingface_hub) is not installed")
    from huggingface_hub import constants

    repo = tmp_path / "models--owner--repo"
    snapshot = repo / "snapshots" / COMMIT / "weights"
    snapshot.mkdir(parents=True)
    shutil.copy(zoo_dir() / "baseline-small.safetensors", snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub, snapshot


def test_load_model_from_hub_cache(offline_cache):
    _, snapshot = offline_cache
    ref = "hf://owner/repo/weights/model.safetensors"
    assert resolve(ref) == snapshot / "model.safetensors"
    assert resolve(f"hf://owner/repo@{COMMIT}/weights/model.safetensors") == snapshot / "model.safetensors"
    model = load_model(ref)
    reference = load_model("baseline-small")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_hub_file_not_cached_is_one_line(offline_cache):
    for ref in ("hf://owner/repo/weights/other.safetensors", "hf://someone/else/model.safetensors"):
        with pytest.raises(MaskdnError) as e:
            load_model(ref)
        message = str(e.value)
        assert message.startswith(ref) and "\n" not in message


def test_hub_without_package_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(MaskdnError, match=r"pip install 'maskdn\[hub\]'"):
        resolve("hf://owner/repo/model.safetensors")
