"""The training config: one typed, frozen dataclass, read from TOML and overridden key by key.

A run depends on nothing but its :class:`TrainConfig`. Configs are flat TOML files whose keys are the
field names (see ``maskdn/configs/*.toml``, the shipped ones); ``maskdn train CONFIG --set key=value``
overrides any field. Every field has a TOML-expressible value (no ``None``): "off" is written ``0`` or
``""`` where a field can be off. Unknown keys and wrong types are one-line :class:`MaskdnError` naming
the source (file or ``--set``) and the key, so a typo never trains the wrong model silently.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..dataclass_io import plain_dict
from ..errors import MaskdnError, check_int, first_line, problem
from ..masking import check_mask_range
from ..model import ModelConfig, preset
from ..noise import parse_noise

SCHEDULES = ("constant", "multistep", "cosine", "wsd")

#: Fields that may change between a run and its resumption: they do not change what is computed.
MAY_CHANGE_ON_RESUME = frozenset({"out", "threads", "workers", "device", "log_every", "save_every", "tensorboard", "compile"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (defaults: the small CPU recipe of ``cpu-masked-small``).

    Each field is documented by its comment. The optimisation is Adam on the L1 loss with an EMA of the
    weights, as in the paper (Chen et al., "Masked Image Training for Generalizable Deep Image
    Denoising", CVPR 2023); ``wsd`` is the warmup–stable–decay schedule of Hu et al. 2024 (MiniCPM).
    Fields are coerced on construction (lists become tuples, ints become floats where a float is due).

    Raises:
        MaskdnError: One line listing every invalid field (wrong type, out of range, bad noise spec,
            unknown schedule or device, cooldown without ``wsd`` or longer than ``iterations``,
            decreasing milestones), or an unknown ``preset`` / invalid ``attn_mask_ratio``.
    """

    # data: clean images, cropped, flipped/rotated, made noisy (one spec drawn per sample) and masked
    data: str = ""  # folder of clean training images (required)
    out: str = ""  # run folder (required); rerunning the same config on it resumes
    noise: tuple[str, ...] = ("gaussian:15",)  # noise-zoo specs; each sample draws one uniformly
    holdout: int = 0  # the last N images of data (sorted by name) are never trained on; validation uses them
    patch_size: int = 48
    batch_size: int = 16  # the global batch: split evenly over the processes of a distributed run
    workers: int = 0  # data-loading processes; 0 loads in the training process
    # model and masks
    preset: str = "small"  # a maskdn.model preset: paper, small, tiny
    init: str = ""  # start from these weights (zoo name or file, same architecture); "" = random init
    attn_mask_ratio: float = 0.75  # fraction of attention tokens masked (0 = off), also at test time
    input_mask: bool = True
    input_mask_range: tuple[float, float] = (0.0, 0.9)  # per-sample fraction of input pixels hidden (paper: 0.8–0.9)
    # optimisation: Adam on the L1 loss, EMA of the weights
    iterations: int = 8000
    lr: float = 1e-3
    schedule: str = "cosine"  # constant | multistep | cosine | wsd, after a linear warm-up
    warmup: int = 100
    min_lr_ratio: float = 0.01  # cosine: the final lr as a fraction of lr
    milestones: tuple[int, ...] = ()  # multistep: iterations at which the lr is multiplied by gamma
    gamma: float = 0.5
    cooldown: int = 0  # wsd: the last N iterations decay the lr linearly to 0; 0 = constant to the end
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    ema_decay: float = 0.999
    bf16: bool = True  # bf16 autocast of the forward pass
    compile: bool = False  # torch.compile the training forward (for GPUs: on CPU it did not pay, docs/performance.md)
    # validation of the EMA model ("" and holdout 0 = none; "" with holdout > 0 = the held-out images)
    val_data: str = ""
    val_noise: tuple[str, ...] = ("poisson:2",)  # each is scored and logged; the best model is by their mean
    val_every: int = 1000
    val_crop: int = 256  # center crop side; 0 = whole images
    val_limit: int = 8  # first N images; 0 = all
    # run
    seed: int = 0
    device: str = "auto"  # auto (cuda if available), cpu, cuda
    threads: int = 0  # torch CPU threads; 0 = torch's default
    save_every: int = 200
    log_every: int = 10
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(getattr(self, f.name), hints[f.name], f.name))
        problems = []
        for spec in (*self.noise, *self.val_noise):
            try:
                parse_noise(spec)
            except MaskdnError as e:
                problems.append(f"noise {e}")
        if not self.noise:
            problems.append("noise: give at least one noise spec")
        for name in ("patch_size", "batch_size", "val_every", "save_every", "log_every"):
            problems += problem(check_int, name, getattr(self, name), 1)
        if not self.val_noise:
            problems.append("val_noise: give at least one noise spec")
        for name in ("iterations", "warmup", "workers", "threads", "val_crop", "val_limit", "holdout", "cooldown"):
            problems += problem(check_int, name, getattr(self, name), 0)
        problems += problem(check_mask_range, self.input_mask_range, "input_mask_range")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.cooldown > self.iterations:
            problems.append(f"cooldown ({self.cooldown}) must not exceed iterations ({self.iterations})")
        if self.cooldown and self.schedule != "wsd":
            problems.append(f"cooldown applies to schedule \"wsd\" only, not {self.schedule!r}")
        if list(self.milestones) != sorted(self.milestones):
            problems.append(f"milestones must be increasing, not {list(self.milestones)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, not {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), not {self.ema_decay}")
        if not (0.0 <= self.grad_clip and math.isfinite(self.grad_clip)):
            problems.append(f"grad_clip must be a number >= 0 (0: no clipping), not {self.grad_clip}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be in [0, 1], not {self.min_lr_ratio}")
        if not 0.0 < self.gamma <= 1.0:
            problems.append(f"gamma must be in (0, 1] (the factor of each lr step), not {self.gamma}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device must be auto, cpu or cuda, not {self.device!r}")
        if problems:
            raise MaskdnError("; ".join(problems))
        self.model_config()  # unknown preset or bad attn_mask_ratio: raises here, not mid-run

    def model_config(self) -> ModelConfig:
        """The model's architecture and masking: :func:`maskdn.model.preset` ``(preset, attn_mask_ratio)``.

        Returns:
            The :class:`ModelConfig` of the preset with this config's ``attn_mask_ratio`` (0–1).

        Raises:
            MaskdnError: An unknown preset or an invalid ``attn_mask_ratio`` (also checked on construction).
        """
        return preset(self.preset, attn_mask_ratio=self.attn_mask_ratio)

    def to_dict(self) -> dict:
        """Plain JSON/TOML-ready dict (tuples become lists).

        Returns:
            ``{field name: value}`` for every field, in declaration order.
        """
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys and bad values are errors naming ``source``.

        Args:
            d: ``{field name: value}``, e.g. a TOML table; missing fields keep their defaults.
            source: Where ``d`` came from (a file name, ``--set ...``), the prefix of error messages.

        Returns:
            The validated config.

        Raises:
            MaskdnError: ``"{source}: unknown key 'k' (valid: ...)"``, or ``"{source}: ..."`` with the
                problems of the values (see the class).
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise MaskdnError(f"{source}: unknown key {unknown[0]!r} (valid: {', '.join(names)})")
        try:
            return cls(**d)
        except MaskdnError as e:
            raise MaskdnError(f"{source}: {e}") from None

    def changed(self, other: TrainConfig) -> list[str]:
        """Fields, other than :data:`MAY_CHANGE_ON_RESUME` ones, whose values differ from ``other``'s.

        Args:
            other: The config to compare with (e.g. the one a saved run was started with).

        Returns:
            The names of the differing fields, in declaration order; empty when the run is the same.
        """
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in MAY_CHANGE_ON_RESUME and a[k] != b[k]]

    def stable_until(self) -> int:
        """wsd: the first iteration whose lr depends on ``iterations`` (the cool-down's start).

        Returns:
            ``iterations - cooldown`` (0-based iteration index), or ``iterations`` when ``cooldown`` is 0.
        """
        return self.iterations - self.cooldown if self.cooldown else self.iterations

    def extends(self, other: TrainConfig, iteration: int) -> bool:
        """Whether this config continues ``other``'s run, now at ``iteration``, with only its length changed.

        True for a wsd run whose ``iterations`` (and ``cooldown``) changed while every iteration done so
        far had the same lr under both (none of them in a cool-down): the resumed run then computes
        exactly what one run of the new length would (warmup–stable–decay, Hu et al. 2024, MiniCPM §4).

        Args:
            other: The config the run was started (or last resumed) with.
            iteration: The number of iterations the run has done.

        Returns:
            Whether resuming with this config computes the same run, only longer or shorter.
        """
        diff = set(self.changed(other))
        return (bool(diff) and diff <= {"iterations", "cooldown"} and self.schedule == "wsd"
                and iteration <= min(self.stable_until(), other.stable_until()))


def _coerce(value, hint, key: str):
    """``value`` checked against the type ``hint`` (lists become tuples, ints become floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if isinstance(value, str) and args[-1] is Ellipsis:  # --set noise=poisson:2 → ("poisson:2",)
            value = [value]
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            n = "a list" if args[-1] is Ellipsis else f"a list of {len(args)}"
            raise MaskdnError(f"{key}: expected {n}, got {value!r}")
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_coerce(v, k, key) for v, k in zip(value, kinds))
    if origin in (typing.Union, types.UnionType):
        raise TypeError("TrainConfig fields must not be unions")  # kept TOML-expressible: no None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise MaskdnError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


# ---- files and overrides ---------------------------------------------------------------------------


def shipped_configs() -> list[str]:
    """Names of the configs shipped in ``maskdn/configs`` (``maskdn train NAME`` uses one).

    Returns:
        The file stems of the shipped ``*.toml`` files, sorted.
    """
    folder = resources.files("maskdn") / "configs"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_toml(source: str | Path) -> dict:
    """The key/value table of a config file path, a run folder (its ``config.toml``) or a shipped config name.

    The file is parsed with the standard library's ``tomllib`` (TOML 1.0); values are not checked here.

    Args:
        source: A TOML file, a run folder holding ``config.toml``, or a name from :func:`shipped_configs`.

    Returns:
        The flat ``{key: value}`` table as ``tomllib`` reads it.

    Raises:
        MaskdnError: ``"{source}: no such config file or shipped config (shipped: ...)"``, ``"{name}: not
            valid TOML (...)"``, ``"{name}: cannot read (...)"``, or ``"{name}: unknown key 'k' (configs
            are flat key = value tables)"`` for a nested table.
    """
    path = Path(source)
    if path.is_dir() and (path / "config.toml").is_file():
        path = source = path / "config.toml"
    if path.is_file():
        text, name = None, str(path)
    elif str(source) in shipped_configs():
        text, name = (resources.files("maskdn") / "configs" / f"{source}.toml").read_text(), f"{source}.toml"
    else:
        raise MaskdnError(f"{source}: no such config file or shipped config (shipped: {', '.join(shipped_configs())})")
    try:
        table = tomllib.loads(text) if text is not None else tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise MaskdnError(f"{name}: not valid TOML ({first_line(e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MaskdnError(f"{name}: cannot read ({first_line(e)})") from None
    nested = [k for k, v in table.items() if isinstance(v, dict)]
    if nested:
        raise MaskdnError(f"{name}: unknown key {nested[0]!r} (configs are flat key = value tables)")
    return table


def load_config(source: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML file or shipped name (``None``: the defaults), then ``overrides``.

    Errors name the file and key, or ``--set key`` for a bad override.

    Args:
        source: A TOML file, run folder or shipped config name (as :func:`read_toml`), or ``None``.
        overrides: ``{field name: value}`` applied over the file's values (``--set key=value``);
            values are coerced as TOML values are (a string for a list field becomes a one-item list).

    Returns:
        The validated config.

    Raises:
        MaskdnError: The errors of :func:`read_toml` and :meth:`TrainConfig.from_dict`, or ``"--set
            key: unknown key (valid: ...)"`` / ``"--set key: expected ..., got ..."`` for a bad override.
    """
    values = {} if source is None else read_toml(source)
    if source is not None and Path(source).is_dir():
        values["out"] = str(source)  # a run folder resumes itself, whatever out it recorded and from wherever
        source = Path(source) / "config.toml"
    name = "config" if source is None else (str(source) if Path(source).is_file() else f"{source}.toml")
    base = TrainConfig.from_dict(values, name)
    if not overrides:
        return base
    hints = typing.get_type_hints(TrainConfig)
    for key, v in overrides.items():
        if key not in hints:
            raise MaskdnError(f"--set {key}: unknown key (valid: {', '.join(hints)})")
        try:
            _coerce(v, hints[key], key)
        except MaskdnError as e:
            raise MaskdnError(f"--set {e}") from None
    return TrainConfig.from_dict({**base.to_dict(), **overrides}, f"{name} with --set {', '.join(overrides)}")


def to_toml(cfg: TrainConfig) -> str:
    """``cfg`` as a flat TOML table that :func:`load_config` reads back to an equal config.

    Args:
        cfg: The config to write.

    Returns:
        One ``key = value`` line per field (strings JSON-quoted, floats by ``repr``, non-finite floats
        as TOML ``nan``/``inf``), newline-terminated.
    """

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
        return json.dumps(v) if isinstance(v, str) else str(v)

    return "".join(f"{k} = {value(v)}\n" for k, v in cfg.to_dict().items())


__all__ = ["MAY_CHANGE_ON_RESUME", "SCHEDULES", "TrainConfig", "load_config", "read_toml", "shipped_configs", "to_toml"]
