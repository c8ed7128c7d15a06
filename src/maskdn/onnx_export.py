"""ONNX export of deterministic denoisers: the unmasked SwinIR models, IDF, any ``torch.nn.Module`` image map.

``maskdn export-onnx`` writes a graph that maps a float32 batch ``[B, C, H, W]`` with values in [0, 1]
(input ``image``) to the denoised batch of the same shape (output ``denoised``, not clamped): for a
maskdn model, one pass as :func:`maskdn.denoise` runs it (:func:`maskdn.inference.model_pass`: the
image grown by :data:`~maskdn.inference.BORDER_CONTEXT` replicated pixels on every side, cropped back
after), so ONNX Runtime, TensorRT or a browser runtime give what maskdn gives, without PyTorch or
maskdn. It uses PyTorch's ``torch.export``-based exporter (``torch.onnx.export(dynamo=True)``, which
needs ``onnxscript``), with the batch, height and width dynamic by default: one file serves every
image size, the padding to the attention window included.

What is exported, and what cannot be:

* :class:`~maskdn.model.MaskedSwinIR` models run through the literal attention path
  (``set_attention("reference")``, the same function to 1e-4 as the default CPU fast path, whose C
  kernel and oneDNN calls have no ONNX form); the border context and the reflection padding to a
  window multiple are done by the graph, so any size in, the same size out.
* **Stochastic models are refused**: a masked model whose attention mask stays on at test time
  (``masked-small``, the paper's models) draws a fresh random token mask for every block of every
  pass from a seeded ``torch.Generator``. A graph would either freeze one draw for ever (always the
  same masked tokens: a different, worse denoiser than the one evaluated) or use ONNX's own random
  ops, whose stream is not torch's, so results would neither match maskdn's nor be reproducible
  across runtimes, and averaging K passes would need K copies of the network. Export such a model's
  weights with the mask switched off only if that is what you mean (``load_model(...,
  config=replace(config, attn_mask_ratio=0))``); it is then a different model.
* IDF (:class:`maskdn.idf.IDFNet`) is exported with the same border context; any other module as
  it is (its own ``forward``), padded to its ``size_multiple`` when it declares one. Both after a
  check that two runs on the same input agree exactly (a stochastic module is refused the same way). A data-dependent loop, such as IDF's
  optional early halting, is traced as the example input ran it: export IDF without ``adaptive``.

After writing, the graph is checked with ONNX Runtime when it is installed (the ``onnx`` extra):
the largest absolute difference to PyTorch on the example input (and, for a dynamic graph, on a
second, odd size) is returned.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import MaskdnError, first_line
from .idf import IDFNet
from .inference import BORDER_CONTEXT, model_pass
from .io import atomic_write
from .model import MaskedSwinIR

__all__ = ["ExportableDenoiser", "check_deterministic", "export_onnx", "run_onnx"]

_MASKDN_NETS = (MaskedSwinIR, IDFNet)  # exported as maskdn runs them: with the border context


class ExportableDenoiser(nn.Module):
    """``model`` in the form the exporter traces: one image argument, padding inside the graph.

    Grows ``[B, C, H, W]`` by ``border`` replicated pixels on every side (what
    :func:`maskdn.inference.model_pass` does), pads by reflection at the bottom/right to a multiple of
    ``multiple`` (the attention window), runs ``model`` and crops back to ``[B, C, H, W]``, with pad
    amounts written as arithmetic on the input's size so they stay symbolic in a dynamic graph.

    Args:
        model: The denoiser, in eval mode; called as ``model(x)``.
        multiple: The size multiple the model needs (1: none).
        border: Replicated context pixels on each side (0: none; maskdn's models:
            :data:`maskdn.inference.BORDER_CONTEXT`).
    """

    def __init__(self, model: nn.Module, multiple: int = 1, border: int = 0) -> None:
        super().__init__()
        self.model, self.multiple, self.border = model, multiple, border

    def forward(self, image: Tensor) -> Tensor:
        """Denoise ``image`` ``[B, C, H, W]`` (values in [0, 1]); returns the same shape, not clamped."""
        H, W = image.shape[-2:]
        b, m = self.border, self.multiple
        x = F.pad(image, (b, b, b, b), mode="replicate") if b else image
        if m > 1:  # reflection needs each side to exceed its pad: H, W >= m, or a border
            h, w = H + 2 * b, W + 2 * b
            x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        return self.model(x)[..., b : b + H, b : b + W]


def check_deterministic(model: nn.Module, channels: int = 3) -> None:
    """Raise unless ``model`` gives the same output twice on the same input (eval mode, no grad).

    Args:
        model: The denoiser; a :class:`MaskedSwinIR` whose attention mask is on at test time is
            refused without running it.
        channels: Input channels for the probe (a ``[1, channels, 24, 24]`` image).

    Raises:
        MaskdnError: ``"this model is stochastic at test time ..."`` with the reason.
    """
    if isinstance(model, MaskedSwinIR) and model.config.attn_mask_ratio > 0 and model.config.attn_mask_at_eval:
        raise MaskdnError(
            f"this model is stochastic at test time (its attention mask, ratio {model.config.attn_mask_ratio:g}, "
            "draws random tokens on every pass): ONNX would freeze one draw or use another random stream, so "
            "it cannot be exported as the model maskdn runs; export an unmasked model (e.g. baseline-small)")
    if getattr(model, "stochastic", False) is True:  # a model that declares itself stochastic
        raise MaskdnError("this model is stochastic at test time, so it cannot be exported as one fixed graph")
    probe = torch.rand(1, channels, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(model(probe), model(probe)):
            raise MaskdnError("this model is stochastic at test time (two runs on one input differ), "
                              "so it cannot be exported as one fixed graph")


def _prepare(model: nn.Module) -> tuple[nn.Module, int]:
    """A CPU copy in eval mode in its exportable form, and its input channel count."""
    net = copy.deepcopy(model).cpu().eval()
    config = getattr(net, "config", None)
    channels = int(getattr(config, "in_chans", 3))
    check_deterministic(net, channels)
    if isinstance(net, MaskedSwinIR):
        net.set_attention("reference")
    border = BORDER_CONTEXT if isinstance(net, _MASKDN_NETS) else 0  # one pass as maskdn.denoise runs it
    return ExportableDenoiser(net, int(getattr(net, "size_multiple", 1)), border).eval(), channels


def run_onnx(path: str | os.PathLike, image: Tensor) -> Tensor:
    """Run an exported graph with ONNX Runtime on the CPU.

    Args:
        path: The ``.onnx`` file written by :func:`export_onnx`.
        image: ``[B, C, H, W]`` float32, values in [0, 1].

    Returns:
        The graph's ``denoised`` output as a float32 tensor.

    Raises:
        MaskdnError: ONNX Runtime not installed (``pip install 'maskdn[onnx]'``), or it cannot load or
            run the file (the message names the file).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise MaskdnError("running an ONNX graph needs onnxruntime: pip install 'maskdn[onnx]'") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(["denoised"], {"image": image.detach().float().cpu().numpy()})
    except Exception as e:  # onnxruntime's own error types
        raise MaskdnError(f"{path}: ONNX Runtime failed ({first_line(e)})") from None
    return torch.from_numpy(out)


def export_onnx(
    model: nn.Module | str | os.PathLike | None,
    path: str | os.PathLike,
    *,
    size: tuple[int, int] = (64, 64),
    dynamic: bool = True,
    opset: int | None = None,
    verify: bool = True,
) -> dict:
    """Write ``model`` as an ONNX graph ``image [B, C, H, W] → denoised [B, C, H, W]`` (float32, [0, 1]).

    Args:
        model: A deterministic ``nn.Module`` mapping ``[B, C, H, W]`` images to the same shape, or a
            zoo name / weights file / ``hf://`` reference (:func:`maskdn.weights.load_model`); None:
            the default zoo model.
        path: The output file (``.onnx`` by convention); its folder must exist. Written atomically.
        size: ``(H, W)`` of the example image traced (pixels).
        dynamic: Batch, height and width dynamic (any size runs); False: fixed ``[1, C, H, W]``,
            faster to export.
        opset: The ONNX opset; None: the exporter's default.
        verify: Check the graph with ONNX Runtime when it is installed.

    Returns:
        ``{"path", "dynamic", "channels", "seconds" (export time), "max_abs_diff"}``: the largest
        absolute difference between ONNX Runtime and PyTorch over the checked inputs (the example, and
        for a dynamic graph a ``[2, C, H + 5, W + 3]`` batch), None when not verified.

    Raises:
        MaskdnError: A stochastic model (:func:`check_deterministic`), a model that cannot be
            loaded, the exporter missing (``pip install 'maskdn[onnx]'``), an export failure (one
            line with the exporter's reason) or an unwritable ``path``.
    """
    if not isinstance(model, nn.Module):
        from .weights import load_model

        model = load_model(model)
    model = copy.deepcopy(model).cpu().eval()  # the caller's model is left where and as it is
    exportable, channels = _prepare(model)
    try:
        import onnxscript  # noqa: F401  (the exporter's dependency; fail early with the extra's name)
    except ImportError:
        raise MaskdnError("ONNX export needs the onnx extra: pip install 'maskdn[onnx]'") from None
    path = Path(path)
    example = torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(0))
    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    start = time.perf_counter()
    with atomic_write(path) as tmp, warnings.catch_warnings():
        # torch.export's own deprecation notices concern PyTorch's internals, not the user's model
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            torch.onnx.export(exportable, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                              input_names=["image"], output_names=["denoised"], opset_version=opset,
                              dynamic_shapes=(dims,) if dynamic else None)
        except Exception as e:  # the exporter raises many kinds; one line with its reason
            raise MaskdnError(f"{path}: the model could not be exported to ONNX ({type(e).__name__}: "
                              f"{first_line(e)})") from None
    seconds = time.perf_counter() - start
    diff = None
    if verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            verify = False
    if verify:
        checks = [example]
        if dynamic:
            H, W = size
            checks.append(torch.rand(2, channels, H + 5, W + 3, generator=torch.Generator().manual_seed(1)))
        diff = 0.0
        for x in checks:
            with torch.no_grad():
                # what maskdn runs (its default attention path), or the module as exported
                want = model_pass(model, x) if isinstance(model, _MASKDN_NETS) else exportable(x)
            diff = max(diff, float((run_onnx(path, x) - want).abs().max()))
    return {"path": path, "dynamic": dynamic, "channels": channels, "seconds": seconds, "max_abs_diff": diff}
