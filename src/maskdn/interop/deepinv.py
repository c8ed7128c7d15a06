"""maskdn models as deepinv denoisers, and deepinv denoisers as maskdn benchmark methods (the ``deepinv`` extra).

deepinv (https://deepinv.github.io) calls a denoiser as ``denoiser(x, sigma)`` on ``[B, C, H, W]``
float images in [0, 1], ``sigma`` the noise standard deviation on that scale; its plug-and-play and
unfolded algorithms (``deepinv.optim``, ``deepinv.unfolded``) take any :class:`deepinv.models.Denoiser`.

* :func:`to_deepinv` wraps a maskdn model (either architecture: masked SwinIR or IDF) as one.
  maskdn's models are *blind*: ``sigma`` is accepted and ignored. Each pass is the one
  :func:`maskdn.denoise` runs (:func:`maskdn.inference.model_pass`: the image grown by replicated
  border pixels, cropped back), so both give the same estimate. A masked model stays stochastic (a
  fresh attention mask per call, drawn from the wrapper's own seeded generator, so a run is
  reproducible); ``passes`` averages several per call. The call keeps autograd, so an unfolded
  network can train through it.
* :func:`from_deepinv` goes the other way: any deepinv denoiser (with a fixed ``sigma``) as a
  ``(name, callable)`` method for :func:`maskdn.generalization.run_bench`, to score it on maskdn's
  noise grid beside the bundled models.

Example (runnable with the extra installed)::

    import deepinv as dinv, torch
    from maskdn.interop.deepinv import to_deepinv

    denoiser = to_deepinv("masked-small", passes=2)
    physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(sigma=0.1))
    x = torch.rand(1, 3, 32, 32)
    y = physics(x)
    x_hat = denoiser(y, 0.1)   # [1, 3, 32, 32]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from torch import nn

from ..denoiser import Denoiser
from ..errors import MaskdnError, check_int, first_line
from ..inference import model_pass

__all__ = ["from_deepinv", "to_deepinv"]


def _deepinv() -> Any:
    """The deepinv module, or one line saying how to get it (or why it does not import)."""
    try:
        import deepinv
    except ImportError as e:
        if getattr(e, "name", None) == "deepinv":
            raise MaskdnError("deepinv interop needs the deepinv package: pip install 'maskdn[deepinv]'") from None
        raise MaskdnError(f"deepinv is installed but does not import ({first_line(e)})") from None
    except RuntimeError as e:  # e.g. a torchvision built for another torch (its C ops fail to register)
        raise MaskdnError(f"deepinv is installed but does not import ({first_line(e)}); install a torchvision "
                          "built for your torch") from None
    return deepinv


_CLASS: type | None = None


def _denoiser_class() -> type:
    """``MaskdnDenoiser``, a subclass of ``deepinv.models.Denoiser`` (built once deepinv is imported)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    dinv = _deepinv()

    class MaskdnDenoiser(dinv.models.Denoiser):
        """A maskdn model as a deepinv denoiser: ``forward(x, sigma=None)`` with ``sigma`` ignored (blind).

        Args:
            model: The maskdn model (:class:`maskdn.denoiser.Denoiser`), registered as a submodule
                (``.to(device)`` moves it).
            passes: Stochastic passes averaged per call (a deterministic model runs once).
            seed: Seed of the attention masks' generator, created on the input's device at the first call.
        """

        def __init__(self, model: Denoiser, passes: int = 1, seed: int = 0) -> None:
            super().__init__()
            self.model, self.passes, self.seed = model, passes, seed
            self._generator: torch.Generator | None = None

        def forward(self, x: Tensor, sigma: float | Tensor | None = None, **kwargs: Any) -> Tensor:
            """Denoise ``x`` ``[B, C, H, W]`` (C = 1 or the model's channels, values in [0, 1]).

            Args:
                x: The noisy batch.
                sigma: The noise level deepinv passes; ignored (maskdn's models are blind).
                **kwargs: Other deepinv arguments; ignored.

            Returns:
                The estimate, ``x``'s shape, not clamped; differentiable in ``x`` and the weights.

            Raises:
                MaskdnError: A channel count the model cannot take.
            """
            if self._generator is None or self._generator.device != x.device:
                self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
            want = self.model.config.in_chans
            gray = x.shape[1] == 1 and want != 1
            if x.shape[1] != want and not gray:
                raise MaskdnError(f"cannot feed a {x.shape[1]}-channel image to a {want}-channel model")
            xin = x.expand(-1, want, -1, -1) if gray else x
            n = self.passes if self.model.stochastic else 1
            y = sum(model_pass(self.model, xin, self._generator) for _ in range(n)) / n
            return y.mean(dim=1, keepdim=True) if gray else y

    _CLASS = MaskdnDenoiser
    return _CLASS


def to_deepinv(
    model: Denoiser | str | os.PathLike | None = None,
    *,
    passes: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Any:
    """A maskdn model as a :class:`deepinv.models.Denoiser` (``denoiser(x, sigma)``, ``sigma`` ignored).

    Args:
        model: A loaded maskdn model (:class:`~maskdn.model.MaskedSwinIR` or :class:`~maskdn.idf.IDFNet`,
            used as it is, not copied), a zoo name, weights file or ``hf://`` reference
            (:func:`maskdn.load_model`); None: the default zoo model.
        passes: Stochastic passes averaged per call (int >= 1; more passes, less variance).
        seed: Seed of the wrapper's attention-mask generator (reproducible runs).
        device: Where a loaded model is put (default: the CPU); ignored for an instance.

    Returns:
        A ``MaskdnDenoiser`` (a ``torch.nn.Module``, in the model's train/eval mode: a loaded one is in
        eval mode).

    Raises:
        MaskdnError: deepinv missing or not importable (one line with the fix), ``passes`` not an int
            >= 1, or a model that cannot be loaded.
    """
    check_int("passes", passes)
    cls = _denoiser_class()
    if not isinstance(model, nn.Module):
        from ..weights import load_model

        model = load_model(model, device=device or "cpu")
    return cls(model, passes=passes, seed=seed)


def from_deepinv(denoiser: Callable[..., Tensor], sigma: float, name: str | None = None
                 ) -> tuple[str, Callable[[Tensor], Tensor]]:
    """A deepinv denoiser as a ``(name, callable)`` method of :func:`maskdn.generalization.run_bench`.

    Args:
        denoiser: Called as ``denoiser(x, sigma)`` on ``[1, 3, H, W]`` in [0, 1] (any
            :class:`deepinv.models.Denoiser`, e.g. ``deepinv.models.WaveletDenoiser``); run without
            gradients on the CPU.
        sigma: The noise standard deviation given to it, on the [0, 1] scale (one value for every
            condition: the benchmark's inputs come without their level).
        name: The method's name in the records (default: the class name and ``sigma`` in 8-bit levels,
            e.g. ``"WaveletDenoiser-s25"``).

    Returns:
        ``(name, fn)``, ``fn(noisy [3, H, W]) -> estimate [3, H, W]`` (float, CPU, not clamped).
    """
    label = name or f"{type(denoiser).__name__}-s{sigma * 255:g}"

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return denoiser(x[None].float(), sigma)[0].cpu()

    return label, run
