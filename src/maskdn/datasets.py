"""Test images on disk: folders of clean images, or of real-noise pairs, as :class:`Sample` objects.

A folder is either clean images (the evaluator adds seeded synthetic noise to them) or real-noise pairs
named ``*_real.*`` (the noisy photo) and ``*_mean.*`` (its clean reference, the mean of many shots), as
in PolyU (Xu et al. 2018); a pair folder is scored under the condition :data:`REAL`. Used by the
generalization benchmark (:mod:`maskdn.generalization`), ``maskdn evaluate``, the training loop's
validation and the feature analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from .errors import MaskdnError
from .io import expand_inputs, read_image, to_float_rgb

__all__ = ["REAL", "Sample", "load_dataset", "load_image"]

REAL = "real"
"""The condition of a real-noise pair (its noise is the camera's, not added)."""


@dataclass(frozen=True)
class Sample:
    """One test image.

    Attributes:
        name: The image's name (its file stem; for a pair, the stem without ``_real``/``_mean``). It
            seeds the synthetic noise added to ``clean`` (:func:`maskdn.noise.noise_seed`).
        clean: The clean image, float ``[3, H, W]`` in [0, 1] (gray replicated to RGB).
        noisy: For a real-noise pair, its noisy photo (float ``[3, H, W]`` in [0, 1], the shape of
            ``clean``); None for a clean image.
    """

    name: str
    clean: Tensor
    noisy: Tensor | None = None


def load_image(path: str | Path) -> Tensor:
    """The image at ``path`` as float RGB ``[3, H, W]`` in [0, 1] (:func:`maskdn.io.to_float_rgb`).

    Args:
        path: The image file (format detected from its content by :func:`maskdn.io.read_image`).

    Returns:
        A float32 CPU tensor ``[3, H, W]``: uint8 (levels 0–255, ÷255) and uint16 (÷65535) scaled to
        [0, 1], float files kept as stored; gray replicated to RGB, alpha dropped.

    Raises:
        MaskdnError: The file is missing or not a readable image (:func:`maskdn.io.read_image`).
    """
    return to_float_rgb(read_image(path))[0]


def load_dataset(folder: str | Path, limit: int | None = None) -> list[Sample]:
    """The samples of ``folder``, sorted by name: real-noise pairs when it holds ``*_real.*`` files, else clean images.

    Args:
        folder: A folder of images (or anything :func:`maskdn.io.expand_inputs` accepts).
        limit: Keep the first ``limit`` samples (None: all).

    Returns:
        One :class:`Sample` per clean image (``noisy`` None), or per ``*_real``/``*_mean`` pair (``noisy``
        the ``*_real`` image, ``clean`` the ``*_mean`` one).

    Raises:
        MaskdnError: ``folder`` holds no image or cannot be listed (:func:`maskdn.io.expand_inputs`),
            a ``*_real`` image has no ``*_mean`` partner, or an image is unreadable.
    """
    paths = expand_inputs([folder])
    real = {p.stem[: -len("_real")]: p for p in paths if p.stem.endswith("_real")}
    if real:
        means = {p.stem[: -len("_mean")]: p for p in paths if p.stem.endswith("_mean")}
        missing = sorted(set(real) - set(means))
        if missing:
            raise MaskdnError(f"{folder}: {missing[0]}_real has no matching {missing[0]}_mean image")
        keys = sorted(real)[:limit]
        return [Sample(k, load_image(means[k]), load_image(real[k])) for k in keys]
    return [Sample(p.stem, load_image(p)) for p in paths[:limit]]
