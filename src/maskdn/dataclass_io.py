"""Dataclasses as plain dicts: the one conversion behind every config's ``to_dict``."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["plain_dict"]


def plain_dict(obj: Any) -> dict:
    """The fields of the dataclass instance ``obj`` as a plain JSON/TOML-ready dict (tuples become lists).

    Args:
        obj: A dataclass instance (converted recursively by :func:`dataclasses.asdict`).

    Returns:
        Field name → value; top-level tuple values become lists, everything else as
        :func:`dataclasses.asdict` gives it.

    Raises:
        TypeError: ``obj`` is not a dataclass instance (from :func:`dataclasses.asdict`).
    """
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}
