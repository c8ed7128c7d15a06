"""Test images on disk: folders of clean images, or of real-noise pairs, as :class:`Sample` objects.

A folder is either clean images (the evaluator adds seeded synthetic noise to them) or real-noise pairs
named ``*_real.*`` (the noisy photo) and ``*_mean.*`` (its clean reference, the mean of many shots), as
in PolyU (Xu et al. 2018); a pair folder is scored under the condition :data:`REAL`. Pairs in any other
layout are two folders, noisy and clean, matched by file name (:func:`load_pairs`, as SIDD or DND
crops are usually stored). Used by the generalization benchmark (:mod:`maskdn.generalization`),
``maskdn evaluate``, the training loop's validation and the feature analysis. :func:`skipped_inputs`
says which files of an input folder are not read, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from .errors import MaskdnError
from .io import IMAGE_SUFFIXES, expand_inputs, is_temp_file, read_image, to_float_rgb

__all__ = ["REAL", "Sample", "load_dataset", "load_image", "load_pairs", "pairs_name", "skipped_inputs"]

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


def _by_stem(folder: str | Path) -> dict[str, Path]:
    """The images of ``folder`` keyed by file stem; two images with one stem are an error."""
    out: dict[str, Path] = {}
    for p in expand_inputs([folder]):
        if p.stem in out:
            raise MaskdnError(f"{folder}: two images named {p.stem} ({out[p.stem].name}, {p.name}); keep one")
        out[p.stem] = p
    return out


def load_pairs(noisy: str | Path, clean: str | Path, limit: int | None = None) -> list[Sample]:
    """Real-noise pairs from two folders, the noisy photos in ``noisy`` and their references in ``clean``.

    Images are matched by file name without suffix (``noisy/0001.png`` with ``clean/0001.png`` or
    ``clean/0001.tif``); every image must have its partner, so nothing is scored on a silent subset.

    Args:
        noisy: The folder of noisy photos.
        clean: The folder of clean references (the same names).
        limit: Keep the first ``limit`` pairs in name order (None: all).

    Returns:
        One :class:`Sample` per name, sorted: ``clean`` the reference, ``noisy`` the photo, both float
        ``[3, H, W]`` in [0, 1] (:func:`load_image`); scored under :data:`REAL`.

    Raises:
        MaskdnError: A folder with no image or that cannot be listed (:func:`maskdn.io.expand_inputs`),
            two images with one name in a folder, ``"<noisy>/<name>: no clean image of that name in
            <clean>"`` (or the other way), an unreadable image, or a pair whose sizes differ.
    """
    n, c = _by_stem(noisy), _by_stem(clean)
    for have, other, other_dir in ((n, c, clean), (c, n, noisy)):
        missing = sorted(set(have) - set(other))
        if missing:
            kind = "clean" if other is c else "noisy"
            raise MaskdnError(f"{have[missing[0]]}: no {kind} image of that name in {other_dir} "
                              f"({len(missing)} unmatched; pairs are matched by file name)")
    samples = []
    for key in sorted(n)[:limit]:
        x, y = load_image(n[key]), load_image(c[key])
        if x.shape != y.shape:
            raise MaskdnError(f"{n[key]}: {x.shape[-1]}x{x.shape[-2]} pixels but its clean image {c[key]} is "
                              f"{y.shape[-1]}x{y.shape[-2]}")
        samples.append(Sample(key, y, x))
    return samples


def pairs_name(noisy: str | Path, clean: str | Path) -> str:
    """The dataset name of a noisy/clean folder pair: their common parent's name, else the noisy folder's.

    Args:
        noisy: The noisy folder.
        clean: The clean folder.

    Returns:
        ``SIDD`` for ``SIDD/noisy`` and ``SIDD/gt``; ``lowlight`` for ``lowlight`` and ``refs``.
    """
    n, c = Path(noisy).resolve(), Path(clean).resolve()
    return n.parent.name if n.parent == c.parent and n.parent.name else n.name


def skipped_inputs(specs: list[str | Path]) -> list[tuple[Path, str]]:
    """What the folders among ``specs`` hold that :func:`maskdn.io.expand_inputs` does not read, and why.

    A folder gives only its files with a readable image suffix; this lists the rest, so that a command
    can say what it left out instead of leaving it out silently.

    Args:
        specs: Command-line inputs (files, folders, glob patterns); only folders are looked into.

    Returns:
        ``(path, reason)`` in folder order, names sorted; reasons: ``"a folder (folders are not searched;
        give DIR/** to include them)"``, ``"not a .png/.tif/... image"``, ``"an unfinished temporary
        file of an interrupted write"``, ``"a broken link or not a regular file"``.
    """
    out: list[tuple[Path, str]] = []
    readable = {x.lower() for x in IMAGE_SUFFIXES}
    for spec in specs:
        folder = Path(spec)
        try:
            entries = sorted(folder.iterdir()) if folder.is_dir() else []
        except OSError:
            continue  # expand_inputs reports an unlistable folder
        for p in entries:
            if is_temp_file(p):
                out.append((p, "an unfinished temporary file of an interrupted write"))
            elif p.is_dir():
                out.append((p, f"a folder (folders are not searched; give '{folder}/**' to include them)"))
            elif p.suffix.lower() not in readable:
                out.append((p, f"not a {'/'.join(sorted(readable))} image"))
            elif not p.is_file():
                out.append((p, "a broken link or not a regular file"))
    return out
