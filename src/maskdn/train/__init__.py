"""Training: the core masked-training step, data sampling, EMA and a resumable loop."""

from .ema import EMA
from .loop import TrainConfig, learning_rate, train
from .step import StepConfig, make_noisy, train_step

__all__ = ["EMA", "StepConfig", "TrainConfig", "learning_rate", "make_noisy", "train", "train_step"]
