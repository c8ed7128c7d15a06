"""What inference, the evaluator and the command line need from a network: the :class:`Denoiser` interface.

Two architectures implement it, :class:`maskdn.model.MaskedSwinIR` (masked training, Chen et al. 2023)
and :class:`maskdn.idf.IDFNet` (iterative dynamic filtering, Kim et al. 2025); loading
(:func:`maskdn.load_model`) picks one by the ``maskdn.architecture`` entry of the weights metadata.
Everything above the model layer (passes, self-ensemble, tiles, bf16, the benchmark) goes through this
interface only, so a third architecture needs no change there.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Denoiser"]


@runtime_checkable
class Denoiser(Protocol):
    """A ``torch.nn.Module`` that denoises ``[B, C, H, W]`` images in [0, 1] of any size.

    Attributes:
        config: The architecture (a frozen dataclass with ``to_dict``); ``config.in_chans`` is ``C``.
        stochastic: Whether the next forward pass draws random numbers (from ``generator``), so that
            averaging passes changes the result: a masked-training model with its attention mask on
            at test time. A deterministic model runs once whatever the pass count.
        size_multiple: The model pads its input to a multiple of this side internally (SwinIR: the
            attention window); tiles must be at least this large. 1: any size as it is.
    """

    config: object

    @property
    def stochastic(self) -> bool: ...

    @property
    def size_multiple(self) -> int: ...

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Denoise ``x`` ``[B, config.in_chans, H, W]`` (values in [0, 1]) into the same shape, not clamped."""
        ...
