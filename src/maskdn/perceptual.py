"""LPIPS (Zhang et al. 2018) through the maintained ``lpips`` package, where it can run offline.

LPIPS needs two sets of weights: the linear calibration layers, which ship inside the ``lpips`` wheel,
and the ImageNet backbone (AlexNet, ``alexnet-owt-7be5be79.pth``), which torchvision downloads into the
torch hub cache on first use. These machines have no network, so the backbone is taken from a file
given explicitly (``--lpips-backbone``) or from the hub cache, and never downloaded. When the package
or the file is missing, :func:`lpips_status` says why in one line and the benchmark leaves the column
out.

Convention (the package's defaults, as papers report LPIPS): ``net='alex'``, ``version='0.1'``, inputs
scaled to [-1, 1], the spatial mean of the distance, one score per image (lower is better). Images are
rounded to 8 bits first, like PSNR and SSIM in :mod:`maskdn.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import MaskdnError
from .metrics import to_uint8_levels

__all__ = ["ALEXNET_FILE", "LpipsScorer", "LpipsStatus", "hub_backbone_path", "lpips_status"]

#: The torchvision AlexNet weights file LPIPS-alex is defined on (its name in the torch hub cache).
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
_INSTALL = "pip install 'maskdn[lpips]' (the lpips package with a torchvision matching torch)"


@dataclass(frozen=True)
class LpipsStatus:
    """Whether LPIPS can be scored here: the backbone file to use, or the one-line reason it cannot.

    Attributes:
        available: True if the ``lpips`` package imports and the backbone weights file exists.
        backbone: The AlexNet weights file to use when available, else None.
        reason: When not available, one line beginning ``"LPIPS not computed: "``; else ``""``.
    """

    available: bool
    backbone: Path | None = None
    reason: str = ""


def hub_backbone_path() -> Path:
    """Where torchvision caches the AlexNet weights: ``<torch hub dir>/checkpoints/alexnet-owt-7be5be79.pth``.

    Returns:
        That path (``torch.hub.get_dir()`` / ``checkpoints`` / :data:`ALEXNET_FILE`); the file may not exist.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def _import_lpips():
    """The ``lpips`` module, or a one-line reason (it imports torchvision, which may be absent or mismatched)."""
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError as e:
        missing = getattr(e, "name", None) or "lpips"
        return None, f"the {missing} package is not installed: {_INSTALL}"
    except Exception as e:  # noqa: BLE001  a torchvision built for another torch raises RuntimeError
        return None, f"the lpips package does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): {_INSTALL}"
    return lpips, ""


def lpips_status(backbone: str | Path | None = None) -> LpipsStatus:
    """Can LPIPS run offline? Needs the ``lpips`` package and the AlexNet weights file; downloads nothing.

    Args:
        backbone: The weights file to use (a missing file is an error: it was asked for); None: the
            torch hub cache's :data:`ALEXNET_FILE` (:func:`hub_backbone_path`).

    Returns:
        An :class:`LpipsStatus`: available with the backbone path, or not available with the reason
        (``lpips`` or torchvision missing or not importable, or no cached backbone file).

    Raises:
        MaskdnError: ``"<backbone>: no such LPIPS backbone weights file (...)"`` if ``backbone`` is
            given and is not a file.
    """
    if backbone is not None:
        path = Path(backbone)
        if not path.is_file():
            raise MaskdnError(f"{path}: no such LPIPS backbone weights file (torchvision's {ALEXNET_FILE})")
    else:
        path = hub_backbone_path()
    _, why = _import_lpips()
    if why:
        return LpipsStatus(False, None, f"LPIPS not computed: {why}")
    if not path.is_file():
        return LpipsStatus(
            False, None,
            f"LPIPS not computed: no AlexNet backbone weights offline; put torchvision's {ALEXNET_FILE} at {path} "
            f"or pass --lpips-backbone FILE",
        )
    return LpipsStatus(True, path)


def _backbone_state(path: Path, slices: torch.nn.Module) -> dict[str, Tensor]:
    """torchvision AlexNet keys ``features.I.*`` → the lpips slice keys ``sliceN.I.*``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  any unreadable file is the same one-line error
        raise MaskdnError(f"{path}: cannot read LPIPS backbone weights ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    out = {}
    for key in slices.state_dict():
        _, rest = key.split(".", 1)  # "slice2.3.weight" → "3.weight"
        src = f"features.{rest}"
        if src not in state:
            raise MaskdnError(f"{path}: not torchvision AlexNet weights (no {src})")
        out[key] = state[src]
    return out


class LpipsScorer:
    """LPIPS-alex v0.1 of ``[3, H, W]`` images in [0, 1] (8-bit rounded first); lower is more similar.

    The ``lpips`` package's network (``net='alex'``, ``version='0.1'``, its shipped linear layers) with
    the AlexNet backbone loaded from a local file by ``torch.load(weights_only=True)``, never downloaded.
    Call it as ``scorer(output, target)``.

    Args:
        backbone: The AlexNet weights file (torchvision's :data:`ALEXNET_FILE`, or a dict holding its
            ``features.*`` entries, possibly under ``"state_dict"``); None: the torch hub cache's.
        device: Where the network runs.

    Attributes:
        net: The ``lpips.LPIPS`` module, in eval mode on ``device``.
        device: The device, as a :class:`torch.device`.
        backbone: The backbone weights file used.

    Raises:
        MaskdnError: If LPIPS is not available (the one-line reason of :func:`lpips_status`), a given
            ``backbone`` does not exist, or the file cannot be read or is not torchvision AlexNet weights.
    """

    def __init__(self, backbone: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        status = lpips_status(backbone)
        if not status.available:
            raise MaskdnError(status.reason)
        lpips, _ = _import_lpips()
        net = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False)
        net.net.load_state_dict(_backbone_state(status.backbone, net.net), strict=True)
        self.net = net.eval().to(device)
        self.device = torch.device(device)
        self.backbone = status.backbone

    @torch.inference_mode()
    def __call__(self, output: Tensor, target: Tensor) -> float:
        """The LPIPS distance between two images.

        Both are clamped to [0, 1], rounded to 8-bit levels (:func:`maskdn.metrics.to_uint8_levels`),
        scaled to [-1, 1] and compared; the spatial mean of the distance map is returned.

        Args:
            output: ``[3, H, W]`` float RGB image, values in [0, 1], any device.
            target: The reference, same shape.

        Returns:
            The distance as a Python float; lower is more similar, 0 for identical images.

        Raises:
            MaskdnError: If the two are not RGB ``[3, H, W]`` images of one shape.
        """
        if output.shape != target.shape or output.ndim != 3 or output.shape[0] != 3:
            raise MaskdnError(f"lpips needs two RGB images [3, H, W] of one shape, got {tuple(output.shape)} and {tuple(target.shape)}")
        a = (to_uint8_levels(output).float() / 127.5 - 1.0)[None].to(self.device)
        b = (to_uint8_levels(target).float() / 127.5 - 1.0)[None].to(self.device)
        return float(self.net(a, b).item())
