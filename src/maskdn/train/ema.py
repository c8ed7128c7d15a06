"""Exponential moving average of a model's weights, with a warm-up so short runs are not ruined.

A flat decay of 0.999 keeps 0.999^n of the random initial weights after n steps (27% after 1.3k), which
destroys short CPU runs; the effective decay here is ``min(decay, (1 + n) / (10 + n))`` after ``n``
updates, the warm-up of TensorFlow's ``tf.train.ExponentialMovingAverage`` with ``num_updates``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Averages every floating entry of a model's state dict (parameters and buffers).

    Holds a deep copy of the model, in eval mode with gradients off. Each :meth:`update` moves every
    floating entry towards the model's, ``ema = d * ema + (1 - d) * model`` with ``d`` from
    :meth:`current_decay`; other entries (integer buffers) are copied.

    Args:
        model: The model to average, unwrapped (see :func:`maskdn.train.step.unwrap`); copied on its device.
        decay: The decay after warm-up, in [0, 1).

    Attributes:
        decay: The decay after warm-up.
        num_updates: The number of :meth:`update` calls so far.
        module: The averaged copy of the model, used for validation and export.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay for the next update: ``min(decay, (1 + n) / (10 + n))`` with ``n = num_updates``.

        The warm-up of TensorFlow's ``tf.train.ExponentialMovingAverage``: 0.1 at the first update, 0.5
        at the ninth, 0.999 after about 9,000.

        Returns:
            The decay, in [0.1, ``decay``] (``decay`` itself if smaller).
        """
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights (under ``torch.no_grad``).

        Args:
            model: A model with the state-dict keys of :attr:`module` (unwrapped, same architecture).

        Raises:
            KeyError: If ``model``'s state dict lacks an entry of :attr:`module`'s.
        """
        d = self.current_decay()
        src = model.state_dict()
        for name, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(src[name].detach(), 1.0 - d)
            else:
                v.copy_(src[name])
        self.num_updates += 1

    def state_dict(self) -> dict:
        """The EMA's state, for the training state file.

        Returns:
            ``{"decay": float, "num_updates": int, "module": the averaged model's state dict}``.
        """
        return {"decay": self.decay, "num_updates": self.num_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state returned by :meth:`state_dict`.

        Args:
            state: ``{"decay", "num_updates", "module"}``, as :meth:`state_dict` returns.

        Raises:
            KeyError: If one of those keys is missing.
            RuntimeError: If ``state["module"]`` does not fit :attr:`module` (strict ``load_state_dict``).
        """
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.module.load_state_dict(state["module"])
