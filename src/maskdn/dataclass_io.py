"""Dataclasses as plain dicts and back: the one conversion behind every config's ``to_dict``/``from_dict``."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import MaskdnError

T = TypeVar("T")

__all__ = ["plain_dict", "from_plain_dict"]


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


def from_plain_dict(cls: type[T], d: dict) -> T:
    """``cls(**d)`` for a dataclass ``cls``, refusing keys that are not its fields (never silently dropped).

    Args:
        cls: A dataclass type (its ``__post_init__`` validates the values).
        d: ``{field name: value}``; missing fields take their defaults.

    Returns:
        The instance.

    Raises:
        MaskdnError: ``"unknown <cls> field(s): ... (valid: ...)"``, or what ``cls`` raises itself.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise MaskdnError(f"unknown {cls.__name__} field(s): {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
    return cls(**d)
