"""The training state file and the slim weights export.

``state.pt`` (one per run folder, replaced atomically at every save: written to a temporary name
beside it, then moved over it with ``os.replace``) holds everything a resumed run
needs to continue exactly as if it had never stopped: model, EMA, optimizer, iteration (the learning
rate is a pure function of it), elapsed wall time, best validation PSNR, the config, and every RNG
state (torch CPU and CUDA, NumPy, Python). Batches and masks are pure functions of (seed, iteration),
so no data-RNG state is needed. It is read with ``torch.load(weights_only=True)``.

:func:`export` turns a state file into a release file: the EMA weights with the model config and
the training record in the safetensors metadata, loadable by :func:`maskdn.load_model`.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import MaskdnError, first_line
from ..io import atomic_write
from ..model import MaskedSwinIR
from ..weights import save_model
from .config import TrainConfig

#: The file name of the training state in a run folder.
STATE = "state.pt"
RUN_FILES = (STATE, "config.toml", "log.csv", ".lock")
"""Files of a run folder that the run itself needs (an export must never replace one)."""


def rng_states() -> dict:
    """Every global RNG state, in types ``torch.load(weights_only=True)`` accepts.

    NumPy's legacy global state becomes a dict with its 624 uint32 keys stored as an int64 tensor.

    Returns:
        ``{"torch": uint8 tensor, "cuda": [uint8 tensor per GPU] (empty without CUDA),
        "numpy": {"kind", "keys", "pos", "has_gauss", "cached"}, "python": random.getstate()}``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned.

    CUDA states are restored only if some were saved and CUDA is available.

    Args:
        states: The dict from :func:`rng_states`, possibly after a save and load.

    Raises:
        KeyError: If an entry is missing.
    """
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save_state(path: Path, state: dict) -> None:
    """Write ``state`` atomically: a reader (or a resumed run) never sees a half-written file.

    ``torch.save`` into a temporary file beside ``path``, then ``os.replace`` onto it
    (:func:`maskdn.io.atomic_write`), so a crash mid-save leaves the previous state intact.

    Args:
        path: The destination, normally ``<run folder>/state.pt`` (:data:`STATE`).
        state: Tensors, numbers, strings and lists, tuples and dicts of them only, so that
            :func:`load_state` can read it with ``torch.load(weights_only=True)``.

    Raises:
        MaskdnError: ``"<path>: cannot write (...)"`` if the folder is missing or writing fails with
            an ``OSError`` (e.g. disk full).
    """
    with atomic_write(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch's writer reports a full disk as "PytorchStreamWriter failed ..."
            raise MaskdnError(f"{path}: cannot write ({first_line(e)}); the previous state is kept") from None


def find_state(source: str | Path) -> Path:
    """The state file of a run folder, or ``source`` itself if it is a file.

    Args:
        source: A run folder (its :data:`STATE` file is used) or a state file.

    Returns:
        The path of the state file.

    Raises:
        MaskdnError: ``"<source>: no checkpoint (state.pt) in this folder"`` or
            ``"<source>: no such file"``.
    """
    source = Path(source)
    path = source / STATE if source.is_dir() else source
    if not path.is_file():
        where = f"{source}: no checkpoint ({STATE}) in this folder" if source.is_dir() else f"{source}: no such file"
        raise MaskdnError(where)
    return path


def load_state(path: str | Path) -> dict:
    """A state file written by :func:`save_state`, with a one-line error if it is not one.

    Read onto the CPU with ``torch.load(map_location="cpu", weights_only=True)``, which unpickles only
    tensors and plain Python values, so a foreign file cannot run code.

    Args:
        path: The state file.

    Returns:
        The state dict; it has at least the keys ``"ema"``, ``"config"`` and ``"iteration"``.

    Raises:
        MaskdnError: ``"<path>: not a readable training state (<reason>)"`` if it cannot be read or
            unpickled, or ``"<path>: not a maskdn training state"`` if it lacks those keys.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise MaskdnError(f"{path}: not a readable training state ({first_line(e)})") from None
    if not isinstance(state, dict) or not {"ema", "config", "iteration"} <= set(state):
        raise MaskdnError(f"{path}: not a maskdn training state")
    return state


def training_record(cfg: TrainConfig, state: dict) -> dict:
    """The record stored with exported weights: recipe, amount of training, wall time, validation.

    Args:
        cfg: The run's configuration.
        state: The training state; uses ``iteration`` and, when present, ``world_size``, ``elapsed``
            (seconds), ``device_time`` (seconds by kind of device), ``threads`` and ``val_psnr`` (dB).

    Returns:
        A JSON-ready dict: ``preset``, ``data`` (folder name), ``noise``, ``input_mask`` (the
        input-mask ratio range, or None without input masking), ``attn_mask_ratio``, ``iterations``,
        ``batch_size``, ``patch_size``, ``patches_seen``, ``lr``, ``schedule``, ``ema_decay``,
        ``bf16``, ``seed``, ``processes``, ``wall_time_s`` (seconds, to 0.1 s), ``threads`` (the
        saved count, else this process's torch thread count), when the state has them
        ``device_time_s`` (kind of device, ``cpu`` or ``cuda``, or ``unknown`` for time saved before
        states recorded it by a run configured ``auto``, → seconds of ``wall_time_s`` spent there: a
        run carried between machines) and, when validated, ``val_psnr`` (dB,
        to 0.01), ``val_data`` and ``val_noise``.
    """
    it = state["iteration"]
    return {
        "preset": cfg.preset,
        "data": Path(cfg.data).name,
        "noise": ", ".join(cfg.noise),
        "input_mask": list(cfg.input_mask_range) if cfg.input_mask else None,
        "attn_mask_ratio": cfg.attn_mask_ratio,
        "iterations": it,
        "batch_size": cfg.batch_size,
        "patch_size": cfg.patch_size,
        "patches_seen": it * cfg.batch_size,
        "lr": cfg.lr,
        "schedule": cfg.schedule if cfg.schedule != "wsd" else f"wsd, cool-down {cfg.cooldown}",
        "ema_decay": cfg.ema_decay,
        "bf16": cfg.bf16,
        "seed": cfg.seed,
        "processes": state.get("world_size", 1),
        "wall_time_s": round(state.get("elapsed", 0.0), 1),
        "threads": state.get("threads", torch.get_num_threads()),
        **({"device_time_s": {k: round(v, 1) for k, v in state["device_time"].items()}} if state.get("device_time") else {}),
        **({"val_psnr": round(state["val_psnr"], 2), "val_data": _val_source(cfg), "val_noise": ", ".join(cfg.val_noise)}
           if state.get("val_psnr") is not None else {}),
    }


def _val_source(cfg: TrainConfig) -> str:
    return Path(cfg.val_data).name if cfg.val_data else f"{Path(cfg.data).name}, last {cfg.holdout} held out"


def export(source: str | Path, dest: str | Path) -> Path:
    """Write the EMA weights of a run folder or state file to ``dest`` (safetensors), atomically.

    The float32 EMA weights, with the model config and :func:`training_record` in the safetensors
    metadata (:func:`maskdn.weights.save_model`: temporary name, then ``os.replace``).

    Args:
        source: A run folder or its state file.
        dest: The output weights file.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`, loadable by :func:`maskdn.load_model`.

    Raises:
        MaskdnError: No state file, an unreadable or foreign state file, an invalid stored config,
            a ``dest`` that is a file the run needs (:data:`RUN_FILES`), or a failed write.
    """
    path = find_state(source)
    needed = {(path.parent / name).resolve() for name in RUN_FILES} | {path.resolve()}
    if Path(dest).resolve() in needed:
        raise MaskdnError(f"{dest}: is a file the run in {path.parent} needs; export to another name")
    state = load_state(path)
    cfg = TrainConfig.from_dict(state["config"], str(path))
    model = MaskedSwinIR(cfg.model_config())
    model.load_state_dict(state["ema"]["module"])
    return save_model(model, dest, training=training_record(cfg, state))


__all__ = ["RUN_FILES", "STATE", "export", "find_state", "load_state", "rng_states", "save_state", "set_rng_states", "training_record"]
