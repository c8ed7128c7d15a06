"""The bundled model zoo: weights shipped inside the package, found by name.

Each ``weights/<name>.safetensors`` is one zoo entry; its name is the file stem. This module only maps
names to files; what a model is, how it was trained and what it scored live in the file's metadata
(written by the trainer and the evaluation), read by :func:`maskdn.weights.describe_zoo`, so the
listing can never disagree with the weights.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import MaskdnError

DEFAULT_MODEL = "baseline-small"
"""The model used when none is named: see ``maskdn models`` and the README for what it is."""


def zoo_dir() -> Path:
    """The folder of the bundled weights, ``maskdn/weights`` inside the installed package.

    Returns:
        Its path (via ``importlib.resources``; it may not exist in a build without weights).
    """
    return Path(str(files("maskdn") / "weights"))


def names() -> list[str]:
    """Names of the bundled models, sorted.

    Returns:
        The stems of ``zoo_dir()/*.safetensors``; empty when the folder is missing.
    """
    d = zoo_dir()
    return sorted(p.stem for p in d.glob("*.safetensors")) if d.is_dir() else []


def resolve(source: str | Path | None) -> Path:
    """A zoo name (or None for the default) → its bundled file; anything else is taken as a path.

    Args:
        source: A zoo name, a path to a weights file, or None for :data:`DEFAULT_MODEL`.

    Returns:
        The bundled file of a zoo name, else ``Path(source)`` (not checked to exist, unless it looks
        like a bare name).

    Raises:
        MaskdnError: ``source`` is neither a zoo name nor an existing file and has no ``/`` or ``.``
            (so it was meant as a zoo name); the message lists the zoo.
    """
    if source is None:
        source = DEFAULT_MODEL
    if isinstance(source, str) and source in names():
        return zoo_dir() / f"{source}.safetensors"
    path = Path(source)
    if not path.exists() and isinstance(source, str) and "/" not in source and "." not in source:
        listed = ", ".join(names()) or "none bundled"
        raise MaskdnError(f"{source}: no such zoo model or file (zoo: {listed})")
    return path
