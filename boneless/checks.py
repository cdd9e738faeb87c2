"""Checks shared by the library: one-line messages and option values. Every check raises a one-line
``ValueError`` naming the option, which the command line prints as ``boneless: error: ...``."""

from __future__ import annotations

import math

import numpy as np


def one_line(obj: object, width: int = 300) -> str:
    """``str(obj)`` on one line (whitespace collapsed, cut at ``width``); the type's name for an empty message."""
    text = " ".join(str(obj).split()) or type(obj).__name__
    return text if len(text) <= width else text[:width] + "..."


def is_positive_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def positive_int(value, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` if it is an integer >= 1 (or None where allowed), else a one-line error."""
    if value is None and allow_none:
        return None
    if not is_positive_int(value):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative(value, name: str) -> float:
    """``value`` as a float if it is a finite number >= 0, else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
