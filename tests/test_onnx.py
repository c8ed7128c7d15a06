"""ONNX export: the graph run by ONNX Runtime matches PyTorch to 1e-4; stochastic models are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskdn.errors import MaskdnError
from maskdn.idf import IDFNet
from maskdn.inference import model_pass
from maskdn.model import MaskedSwinIR, ModelConfig
from maskdn.onnx_export import check_deterministic, export_onnx, run_onnx
from maskdn.weights import load_model

pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, the exporter's dependency) is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")


def _close_to_torch(model: nn.Module, path, x: torch.Tensor) -> float:
    """Largest difference of the graph to PyTorch: to one pass as maskdn.denoise runs a maskdn model
    (border context included), to the module itself otherwise."""
    with torch.no_grad():
        want = model_pass(model, x) if isinstance(model, (MaskedSwinIR, IDFNet)) else model(x)
    got = run_onnx(path, x)
    assert got.shape == want.shape
    return float((got - want).abs().max())


def test_baseline_small_matches_pytorch(tmp_path):
    """The bundled unmasked model, fixed size not a window multiple (the graph pads and crops)."""
    model = load_model("baseline-small")
    path = tmp_path / "baseline-small.onnx"
    info = export_onnx(model, path, size=(20, 28), dynamic=False)
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] < 1e-4
    x = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(5))
    assert _close_to_torch(model, path, x) < 1e-4  # against the default (fast) attention path
    assert [p.name for p in tmp_path.iterdir()] == ["baseline-small.onnx"]  # one file, no temporaries


def test_dynamic_sizes_and_batch(tmp_path):
    """Two blocks (a plain and a shifted window) of an unmasked SwinIR: any batch, height and width."""
    torch.manual_seed(0)
    model = MaskedSwinIR(ModelConfig(embed_dim=12, depths=(2,), num_heads=(2,), attn_mask_ratio=0.0)).eval()
    path = tmp_path / "micro.onnx"
    info = export_onnx(model, path, size=(16, 24))
    assert info["dynamic"] and info["max_abs_diff"] < 1e-4
    for shape in ((1, 3, 19, 30), (3, 3, 8, 41), (1, 3, 5, 7)):  # smaller than a window: the border context covers it
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        assert _close_to_torch(model, path, x) < 1e-4


def test_any_deterministic_module(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    path = tmp_path / "conv.onnx"
    assert export_onnx(net, path, size=(12, 10))["max_abs_diff"] < 1e-5
    assert _close_to_torch(net, path, torch.rand(2, 3, 7, 33)) < 1e-5


def test_idf_matches_pytorch(tmp_path):
    idf = pytest.importorskip("maskdn.idf", reason="maskdn.idf is not in this checkout")
    torch.manual_seed(0)
    model = idf.IDFNet(idf.IDFConfig(iterations=2)).eval()  # two: a plain and a dilated application
    path = tmp_path / "idf.onnx"
    assert export_onnx(model, path, size=(21, 30), dynamic=False)["max_abs_diff"] < 1e-4
    x = torch.rand(1, 3, 21, 30, generator=torch.Generator().manual_seed(3))
    assert _close_to_torch(model, path, x) < 1e-4
    with torch.no_grad():  # and the graph is not the bare network: the border context is in it
        assert float((run_onnx(path, x) - model(x)).abs().max()) > 1e-3


class _Noisy(nn.Module):
    def forward(self, x):
        return x + 0.01 * torch.rand_like(x)


def test_stochastic_models_are_refused(tmp_path):
    masked = MaskedSwinIR(ModelConfig(embed_dim=12, depths=(2,), num_heads=(2,), attn_mask_ratio=0.75))
    for model, why in ((masked, "attention mask"), (_Noisy(), "two runs on one input differ")):
        with pytest.raises(MaskdnError, match=why):
            export_onnx(model, tmp_path / "x.onnx")
        with pytest.raises(MaskdnError, match="stochastic"):
            check_deterministic(model)
    assert list(tmp_path.iterdir()) == []


def test_without_the_extra_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    with pytest.raises(MaskdnError, match=r"pip install 'maskdn\[onnx\]'"):
        export_onnx(nn.Identity(), tmp_path / "x.onnx")


def test_command_line(tmp_path, capsys):
    from maskdn.cli import build_parser, main

    assert main(["export-onnx", "--model", "masked-small", "-o", str(tmp_path / "m.onnx")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "stochastic" in err[0] and not (tmp_path / "m.onnx").exists()
    torch.manual_seed(0)
    from maskdn.weights import save_model

    micro = save_model(MaskedSwinIR(ModelConfig(embed_dim=12, depths=(2,), num_heads=(2,), attn_mask_ratio=0.0)),
                       tmp_path / "micro.safetensors")
    assert main(["export-onnx", "--model", str(micro), "-o", str(tmp_path / "micro.onnx"), "--static",
                 "--size", "16", "16"]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime matches PyTorch" in out and (tmp_path / "micro.onnx").exists()
    # the training export's new name, the old one kept as an alias
    for name in ("export-weights", "export"):
        assert build_parser().parse_args([name, "run", "-o", "w.safetensors"]).out == "w.safetensors"
