"""Training patches: random crops of clean images with the 8 flip/rotation modes.

Images are decoded once and kept in memory as uint8 (CBSD432 is about 200 MB decoded), so sampling a
batch is a few tensor slices. All randomness comes from one ``torch.Generator`` whose state is saved in
checkpoints, so a resumed run draws the same patches as an uninterrupted one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from ..errors import MaskdnError
from ..geometry import dihedral
from ..io import expand_inputs, read_image, to_float_rgb
from ..model import reflect_pad


def load_clean_images(folder: str | Path) -> list[Tensor]:
    """Every readable image of ``folder`` as a uint8 ``[3, H, W]`` tensor (gray replicated to RGB).

    Unreadable files are skipped; a folder with no readable image is a :class:`MaskdnError`.
    """
    images, skipped = [], []
    for path in expand_inputs([folder]):
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
    """Draws batches of random, augmented ``patch``×``patch`` crops as float ``[B, 3, p, p]`` in [0,1].

    Images smaller than a patch are reflection-padded up to it first.
    """

    def __init__(self, images: list[Tensor], patch: int) -> None:
        self.patch = patch
        self.images = [self._at_least(img, patch) for img in images]

    @staticmethod
    def _at_least(img: Tensor, p: int) -> Tensor:
        _, H, W = img.shape
        if H >= p and W >= p:
            return img
        return reflect_pad(img.float(), max(0, p - H), max(0, p - W)).to(torch.uint8)

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        p = self.patch
        idx = torch.randint(len(self.images), (batch,), generator=generator).tolist()
        out = []
        for i in idx:
            img = self.images[i]
            _, H, W = img.shape
            top = int(torch.randint(H - p + 1, (1,), generator=generator))
            left = int(torch.randint(W - p + 1, (1,), generator=generator))
            mode = int(torch.randint(8, (1,), generator=generator))
            out.append(dihedral(img[:, top : top + p, left : left + p], mode))
        return torch.stack(out).float().div_(255.0)


__all__ = ["load_clean_images", "PatchSampler"]
