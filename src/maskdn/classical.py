"""Classical reference denoisers of the benchmark: identity, non-local means and BM3D.

Each is a pure function of the noisy image (and, for the oracle variant, of the noise condition), so
the benchmark can run them by name in worker processes and get the same result in any of them.

* ``noisy`` — the noisy input itself, the reference every denoiser must beat.
* ``nlm`` — scikit-image non-local means, ``h = 0.8·σ̂``, with σ̂ estimated from the noisy image.
* ``bm3d`` — BM3D (the optional ``bm3d`` package, non-commercial licence) with σ̂ estimated from the
  noisy image (scikit-image ``estimate_sigma``: wavelet MAD, mean over channels): the blind baseline.
* ``bm3d-oracle`` — BM3D given the true noise std where one is defined (:func:`maskdn.noise.true_sigma`): the
  non-blind upper reference. For other noises the method is not defined and the benchmark records
  nothing for it (the table shows –).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .errors import MaskdnError
from .noise import true_sigma

__all__ = ["CLASSICAL_METHODS", "check_available", "defined_for", "denoise_classical"]

CLASSICAL_METHODS = ("noisy", "nlm", "bm3d", "bm3d-oracle")


def defined_for(method: str, condition: str) -> bool:
    """Whether the classical ``method`` is defined under ``condition`` (only the oracle may not be).

    Args:
        method: A name of :data:`CLASSICAL_METHODS` (any other name counts as defined).
        condition: A noise condition ``name:level`` (e.g. ``gaussian:25``) or ``real``.

    Returns:
        False only for ``bm3d-oracle`` under a noise without a true std (:func:`maskdn.noise.true_sigma`
        is None), else True.

    Raises:
        MaskdnError: For ``bm3d-oracle``, ``condition`` is not a valid noise spec
            (:func:`maskdn.noise.parse_noise`).
    """
    return method != "bm3d-oracle" or true_sigma(condition) is not None


def _bm3d_module():
    try:
        import bm3d  # type: ignore[import-not-found]
    except ImportError:
        raise MaskdnError("method bm3d needs the optional bm3d package: pip install bm3d (non-commercial licence)") from None
    return bm3d


def check_available(method: str) -> None:
    """Raise :class:`MaskdnError` now when ``method`` cannot run here (unknown, or a missing package).

    Args:
        method: The method name to check.

    Returns:
        None.

    Raises:
        MaskdnError: ``"method <method>: not a classical method (noisy, nlm, bm3d, bm3d-oracle)"``, or,
            for ``bm3d``/``bm3d-oracle`` without the ``bm3d`` package, ``"method bm3d needs the
            optional bm3d package: pip install bm3d (non-commercial licence)"``.
    """
    if method not in CLASSICAL_METHODS:
        raise MaskdnError(f"method {method}: not a classical method ({', '.join(CLASSICAL_METHODS)})")
    if method.startswith("bm3d"):
        _bm3d_module()


def _to_hwc(x: Tensor) -> np.ndarray:
    return x.detach().cpu().double().clamp(0, 1).permute(1, 2, 0).numpy()


def _from_hwc(a: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).to(like.dtype)


def estimate_sigma(img: np.ndarray) -> float:
    """Noise std of an HxWx3 float image: scikit-image ``estimate_sigma`` (wavelet MAD), channel mean.

    Args:
        img: Float array ``[H, W, 3]`` (channels last), values in [0, 1].

    Returns:
        The estimated Gaussian noise std σ̂ on the [0, 1] scale (multiply by 255 for 8-bit levels):
        ``skimage.restoration.estimate_sigma(img, channel_axis=-1, average_sigmas=True)`` (Donoho's
        median absolute deviation of the finest diagonal wavelet detail coefficients / 0.6745,
        averaged over the channels).
    """
    from skimage.restoration import estimate_sigma as _estimate

    return float(_estimate(img, channel_axis=-1, average_sigmas=True))


def _nlm(img: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(
        img, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6, channel_axis=-1
    )


def _bm3d(img: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(_bm3d_module().bm3d_rgb(img, sigma), dtype=np.float64)


def denoise_classical(method: str, noisy: Tensor, condition: str | None = None) -> Tensor:
    """The estimate of ``method`` for a float ``[3, H, W]`` noisy image in [0, 1].

    ``condition`` (``name:level``) is needed by ``bm3d-oracle`` only, which raises
    :class:`MaskdnError` where :func:`true_sigma` is undefined. A noise-free input (σ̂ = 0) is returned
    unchanged by the blind methods.

    ``nlm`` is scikit-image ``denoise_nl_means`` (``h = 0.8·σ``, ``sigma = σ``, ``fast_mode``,
    5×5 patches, search distance 6); ``bm3d`` / ``bm3d-oracle`` are ``bm3d.bm3d_rgb`` of the ``bm3d``
    package (Dabov et al. 2007, CBM3D colour variant). σ is :func:`estimate_sigma` of the input
    clamped to [0, 1] for the blind methods, the true std (:func:`maskdn.noise.true_sigma`) for the
    oracle; both on the [0, 1] scale.

    Args:
        method: One of :data:`CLASSICAL_METHODS`: ``noisy``, ``nlm``, ``bm3d``, ``bm3d-oracle``.
        noisy: The noisy image, float tensor ``[3, H, W]``, values in [0, 1] (clamped to [0, 1]
            before ``nlm``/``bm3d``); any device.
        condition: The noise condition ``name:level``; used by ``bm3d-oracle`` only.

    Returns:
        The estimate, ``[3, H, W]`` with the dtype of ``noisy`` on the CPU (for ``noisy``, or when
        σ̂ ≤ 0, a clone of ``noisy`` on its own device). Not clamped.

    Raises:
        MaskdnError: ``method`` is unknown or its package is missing (:func:`check_available`);
            for ``bm3d-oracle``, ``"method bm3d-oracle: no true σ for noise <condition> (defined
            for gaussian and correlated)"`` when ``condition`` is None or has no true std, or
            ``condition`` is not a valid noise spec.
    """
    check_available(method)
    if method == "noisy":
        return noisy.clone()
    img = _to_hwc(noisy)
    if method == "bm3d-oracle":
        sigma = None if condition is None else true_sigma(condition)
        if sigma is None:
            raise MaskdnError(f"method bm3d-oracle: no true σ for noise {condition} (defined for gaussian and correlated)")
    else:
        sigma = estimate_sigma(img)
    if not sigma > 0:
        return noisy.clone()
    out = _nlm(img, sigma) if method == "nlm" else _bm3d(img, sigma)
    return _from_hwc(out, noisy)
