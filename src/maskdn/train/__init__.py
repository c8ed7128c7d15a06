"""Training: typed TOML configs, deterministic data, the masked step, EMA, a resumable (DDP) loop, export.

    cfg = load_config("cpu-masked-small", {"data": "CBSD432", "out": "runs/x"})
    train(cfg)                                  # rerun to resume; torchrun for several processes
    export("runs/x", "model.safetensors")       # EMA weights + training record, for maskdn.load_model
"""

from .checkpoint import export
from .config import TrainConfig, load_config, shipped_configs
from .ema import EMA
from .loop import TrainingStopped, cooldown, learning_rate, train
from .step import train_step

__all__ = ["EMA", "TrainConfig", "TrainingStopped", "cooldown", "export", "learning_rate", "load_config", "shipped_configs", "train", "train_step"]
