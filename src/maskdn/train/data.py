"""Training samples as a pure function of (seed, iteration, sample index), and the validation set.

Sample ``j`` of iteration ``it`` is drawn by its own ``torch.Generator``, seeded from a hash of
``(seed, it, j)``: it picks the image, the crop, one of the 8 flips/rotations, the noise spec, the
noise and the input mask. So a batch never depends on what was drawn before it: a resumed run needs
no data RNG state, worker processes are deterministic whatever their number, and the processes of a
distributed run simply take their slice ``j ∈ [rank·b, (rank+1)·b)`` of the global batch.

Images are decoded once and kept in memory as uint8 (CBSD432 is about 200 MB decoded).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ..datasets import Sample, load_dataset, load_image
from ..errors import MaskdnError
from ..generalization import noisy_pair
from ..geometry import dihedral, reflect_pad
from ..io import expand_inputs, read_image, to_float_rgb
from ..masking import INPUT_MASK_FILL, input_mask
from ..noise import NoiseSpec, apply_noise, parse_noise
from ..seeding import derive_seed


def sample_seed(seed: int, *keys: int) -> int:
    """The seed of one training draw, e.g. ``(seed, iteration, j)``: :func:`maskdn.seeding.derive_seed`.

    Args:
        seed: The run's seed.
        *keys: The draw's coordinates, e.g. the iteration and the sample index (ints).

    Returns:
        A 63-bit non-negative seed, stable across Python versions and machines.
    """
    return derive_seed(seed, *keys)


def split_holdout(folder: str | Path, holdout: int = 0) -> tuple[list[Path], list[Path]]:
    """``(training, held_out)`` image paths of ``folder``: the last ``holdout`` in name order are held out.

    Args:
        folder: The training images (files found by :func:`maskdn.io.expand_inputs`, sorted by name).
        holdout: How many of the last images to hold out; 0: none.

    Returns:
        ``(training, held_out)``, the two lists of paths in name order.

    Raises:
        MaskdnError: ``"{folder}: holdout N leaves no training image (the folder has M)"``, or the
            errors of :func:`maskdn.io.expand_inputs` (e.g. a folder without images).
    """
    paths = expand_inputs([folder])
    if holdout and holdout >= len(paths):
        raise MaskdnError(f"{folder}: holdout {holdout} leaves no training image (the folder has {len(paths)})")
    cut = len(paths) - holdout
    return paths[:cut], paths[cut:]


def data_fingerprint(paths: list[Path]) -> dict:
    """What a run trains on, to notice a change before resuming: ``{"images": n, "sha256": hex}``.

    The hash covers each file's name and size in order (not its path, so the same data in another
    folder or on another machine has the same fingerprint; not its bytes, which would mean reading
    every file at every start).

    Args:
        paths: The training image files, in training order.

    Returns:
        ``{"images": len(paths), "sha256": 64 hex digits}``.

    Raises:
        OSError: A file that cannot be ``stat``-ed (e.g. removed meanwhile).
    """
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.name}\t{p.stat().st_size}\n".encode())
    return {"images": len(paths), "sha256": h.hexdigest()}


def load_clean_images(folder: str | Path, holdout: int = 0) -> list[Tensor]:
    """Every readable image of ``folder`` but the held-out ones, as uint8 ``[3, H, W]`` tensors.

    Gray images are replicated to RGB; ``holdout`` as in :func:`split_holdout`. Unreadable files are
    skipped with a warning; a folder with no readable image is a :class:`MaskdnError`.

    Args:
        folder: The training images.
        holdout: How many of the last images (in name order) to leave out.

    Returns:
        uint8 ``[3, H, W]`` tensors, values 0–255, in name order.

    Raises:
        MaskdnError: ``"{folder}: no readable training image (...)"``, or the errors of
            :func:`split_holdout`.
    """
    images, skipped = [], []
    for path in split_holdout(folder, holdout)[0]:
        try:
            arr = read_image(path)
        except MaskdnError as e:
            skipped.append(str(e))
            continue
        rgb, _ = to_float_rgb(arr)
        images.append((rgb * 255.0).round().to(torch.uint8))
    if not images:
        detail = f" ({skipped[0]})" if skipped else ""
        raise MaskdnError(f"{folder}: no readable training image{detail}")
    if skipped:
        warnings.warn(f"{folder}: skipped {len(skipped)} unreadable image(s), first: {skipped[0]}", stacklevel=2)
    return images


class PatchSampler:
    """Noisy/clean training pairs: ``patch``×``patch`` crops in [0,1], noisy ones clipped and masked.

    Images smaller than a patch are reflection-padded up to it first. The noise is not quantized
    (training sees the float noisy image, clipped to [0,1]); masked pixels are :data:`INPUT_MASK_FILL`.

    Args:
        images: Clean uint8 ``[3, H, W]`` tensors (values 0–255), e.g. from :func:`load_clean_images`.
        patch: The crop side ``p`` in pixels.
        noises: Noise-zoo specs (``name:level``); each sample draws one uniformly.
        input_mask_range: ``(lo, hi)``, the per-sample fraction of input pixels hidden, drawn uniformly
            (paper: 0.8–0.9, Chen et al. CVPR 2023); ``None``: no input mask.
        seed: The run's seed; sample ``j`` of iteration ``it`` uses :func:`sample_seed` ``(seed, it, j)``.

    Raises:
        MaskdnError: An invalid noise spec.
    """

    def __init__(
        self,
        images: list[Tensor],
        patch: int,
        noises: list[str] | tuple[str, ...] = ("gaussian:15",),
        input_mask_range: tuple[float, float] | None = (0.8, 0.9),
        seed: int = 0,
    ) -> None:
        self.patch = patch
        self.images = [self._at_least(img, patch) for img in images]
        self.noises: list[NoiseSpec] = [parse_noise(s) for s in noises]
        self.input_mask_range = input_mask_range
        self.seed = seed

    @staticmethod
    def _at_least(img: Tensor, p: int) -> Tensor:
        _, H, W = img.shape
        if H >= p and W >= p:
            return img
        return reflect_pad(img.float(), max(0, p - H), max(0, p - W)).to(torch.uint8)

    def sample(self, it: int, j: int) -> tuple[Tensor, Tensor]:
        """``(noisy, clean)``, each ``[3, p, p]``: sample ``j`` of iteration ``it``.

        Args:
            it: The iteration (0-based).
            j: The sample's index in the global batch.

        Returns:
            ``(noisy, clean)``: float32 ``[3, p, p]`` tensors in [0, 1] (noisy: clipped, not quantized,
            masked pixels set to :data:`INPUT_MASK_FILL`), a pure function of ``(seed, it, j)``.
        """
        g = torch.Generator().manual_seed(sample_seed(self.seed, it, j))
        p = self.patch
        img = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
        _, H, W = img.shape
        top = int(torch.randint(H - p + 1, (1,), generator=g))
        left = int(torch.randint(W - p + 1, (1,), generator=g))
        mode = int(torch.randint(8, (1,), generator=g))
        spec = self.noises[int(torch.randint(len(self.noises), (1,), generator=g))]
        seed = int(torch.randint(2**62, (1,), generator=g))
        clean = dihedral(img[:, top : top + p, left : left + p], mode).float().div_(255.0).contiguous()
        noisy = apply_noise(clean, spec, seed=seed, quantize=False)
        if self.input_mask_range is not None:
            noisy = input_mask(noisy[None], self.input_mask_range, INPUT_MASK_FILL, g)[0][0]
        return noisy, clean

    def batch(self, it: int, indices: range | list[int]) -> tuple[Tensor, Tensor]:
        """``(noisy, clean)`` batches ``[B, 3, p, p]`` of the samples ``indices`` of iteration ``it``.

        Args:
            it: The iteration (0-based).
            indices: The samples' indices in the global batch (``B = len(indices)``).

        Returns:
            ``(noisy, clean)``: float32 ``[B, 3, p, p]`` tensors in [0, 1], as :meth:`sample`.
        """
        pairs = [self.sample(it, j) for j in indices]
        return torch.stack([n for n, _ in pairs]), torch.stack([c for _, c in pairs])


class Batches(torch.utils.data.Dataset):
    """Item ``k`` is this process's slice of the global batch of iteration ``start + k``.

    Used with ``DataLoader(batch_size=None)``, so worker processes build whole batches ahead.

    Args:
        sampler: Draws the samples.
        batch_size: The global batch size, split evenly over the ``world`` processes.
        start: The first iteration (0-based; a resumed run's saved iteration).
        stop: The end iteration (exclusive): the dataset has ``max(0, stop - start)`` items.
        rank: This process's rank; it takes samples ``[rank·b, (rank+1)·b)``, ``b = batch_size / world``.
        world: The number of processes of the run.

    Raises:
        MaskdnError: ``"batch_size N is not divisible by the W processes of the run"``.
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, start: int, stop: int, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise MaskdnError(f"batch_size {batch_size} is not divisible by the {world} processes of the run")
        local = batch_size // world
        self.sampler, self.start, self.stop = sampler, start, stop
        self.indices = range(rank * local, (rank + 1) * local)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        return self.sampler.batch(self.start + k, self.indices)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only slice and add noise; threads would fight the training process


def batch_loader(batches: Batches, workers: int, seed: int) -> torch.utils.data.DataLoader:
    """Iterates ``batches`` in order, in ``workers`` processes (0: in this process).

    The loader's own generator (used to seed each worker's torch RNG) is seeded from ``seed``, so it
    leaves the global torch RNG alone; the samples themselves never touch worker RNG state.

    Args:
        batches: The dataset of whole batches.
        workers: Data-loading processes (each limited to one torch thread); 0: in this process.
        seed: Seeds the loader's generator.

    Returns:
        A ``DataLoader`` yielding ``(noisy, clean)`` float32 ``[b, 3, p, p]`` batches in iteration order.
    """
    return torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=workers, worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(seed), prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def load_validation_set(
    folder: str | Path, noise: str, seed: int, crop: int = 0, limit: int = 0, holdout: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """The validation pairs of a training run, under the evaluator's protocol.

    Each pair is :func:`maskdn.generalization.noisy_pair` of one image: the noise (seeded per image
    by :func:`maskdn.noise.noise_seed` ``(seed, image name, noise)``, clipped, 8-bit quantized, as
    ``maskdn evaluate`` adds it) is added to the whole image, then both images are center-cropped
    (:func:`maskdn.geometry.center_crop`). Real-noise pair folders use their own noisy images.
    :func:`maskdn.train.loop.validate` scores the pairs.

    Args:
        folder: The validation images (:func:`maskdn.datasets.load_dataset`), or with ``holdout`` the
            training folder.
        noise: The noise spec (``name:level``), as written (its text is part of the noise seed).
        seed: The run's seed.
        crop: The side of the center crop in pixels; 0: whole images.
        limit: The first ``limit`` images (in name order); 0: all.
        holdout: > 0: the images are the last ``holdout`` of ``folder`` that :func:`split_holdout`
            holds out of training.

    Returns:
        ``[(noisy, clean)]``: float ``[3, h, w]`` tensors in [0, 1], ``h, w`` at most ``crop``.

    Raises:
        MaskdnError: No validation image, an unreadable image, an invalid noise spec, or a ``holdout``
            that leaves no training image.
    """
    if holdout:
        held = split_holdout(folder, holdout)[1][: limit or None]
        samples = [Sample(p.stem, load_image(p)) for p in held]
    else:
        samples = load_dataset(folder, limit or None)
    if not samples:
        raise MaskdnError(f"{folder}: no validation image")
    return [noisy_pair(s, noise, seed, crop) for s in samples]


__all__ = ["INPUT_MASK_FILL", "Batches", "PatchSampler", "batch_loader", "data_fingerprint", "load_clean_images",
           "load_validation_set", "sample_seed", "split_holdout"]
