"""The bundled model zoo: weights shipped inside the package, described by their own metadata.

Each ``weights/<name>.safetensors`` is one zoo entry; its name is the file stem. What a model is, how it
was trained and what it scored live in the file's metadata (written by the trainer and the evaluation),
so this listing can never disagree with the weights.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import MaskdnError

DEFAULT_MODEL = "baseline-small"
"""The model used when none is named: see ``maskdn models`` and the README for what it is."""


def zoo_dir() -> Path:
    return Path(str(files("maskdn") / "weights"))


def names() -> list[str]:
    """Names of the bundled models, sorted."""
    d = zoo_dir()
    return sorted(p.stem for p in d.glob("*.safetensors")) if d.is_dir() else []


def resolve(source: str | Path | None) -> Path:
    """A zoo name (or None for the default) → its bundled file; anything else is taken as a path."""
    if source is None:
        source = DEFAULT_MODEL
    if isinstance(source, str) and source in names():
        return zoo_dir() / f"{source}.safetensors"
    path = Path(source)
    if not path.exists() and isinstance(source, str) and "/" not in source and "." not in source:
        listed = ", ".join(names()) or "none bundled"
        raise MaskdnError(f"{source}: no such zoo model or file (zoo: {listed})")
    return path


def describe() -> list[dict]:
    """One record per bundled model: name, preset, parameters, training record and measured scores."""
    from .model import MaskedSwinIR, ModelConfig
    from .weights import read_metadata

    rows = []
    for name in names():
        meta = read_metadata(zoo_dir() / f"{name}.safetensors")
        training = meta["training"] or {}
        config = ModelConfig.from_dict(meta["config"])
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_MODEL,
                "preset": training.get("preset", "custom"),
                "parameters": sum(p.numel() for p in MaskedSwinIR(config).parameters()),
                "attn_mask_ratio": config.attn_mask_ratio,
                "training": training,
                "scores": training.get("scores", {}),
            }
        )
    return rows
