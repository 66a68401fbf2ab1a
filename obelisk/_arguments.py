"""Cheap up-front checks of the arguments of public entry points (read stores, keyset
pages, the query cache), so that bad input fails with a ValidationError naming the
argument, before it reaches a driver that would raise its own exception (OverflowError,
UnicodeEncodeError, TypeError), or none at all (NaN as a lease that never expires).

Messages never ``repr`` a value whole: a list nested thousands deep would raise
RecursionError while the message is built, a megabyte of text would fill the log.
"""

from __future__ import annotations

import math
from typing import Final

from obelisk.domain.values import shown as describe  # a bounded repr, never raising
from obelisk.errors import ValidationError

__all__ = [
    "INT64_MAX",
    "check_bool",
    "check_int",
    "check_seconds",
    "check_text",
    "clip",
    "describe",
]

INT64_MAX: Final = 2**63 - 1


def clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters (a driver's message may quote a huge value)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_text(what: str, value: object, *, nul: bool = False) -> str:
    """``value`` if it is a str a database or Redis can hold: valid UTF-8 (no lone
    surrogates) and, unless ``nul``, no NUL character (PostgreSQL's text refuses it)."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a str, got {type(value).__name__}")
    if not value.isascii():  # ASCII is valid UTF-8: the check costs nothing then
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValidationError(
                f"{what} {describe(value)} is not valid text (a lone surrogate)"
            ) from None
    if not nul and "\x00" in value:
        raise ValidationError(f"{what} {describe(value)} holds a NUL character")
    return value


def check_int(what: str, value: object, low: int = -INT64_MAX - 1, high: int = INT64_MAX) -> int:
    """``value`` if it is an int (not a bool) from ``low`` to ``high`` (default: what a
    64-bit database integer holds)."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        span = "a 64-bit int" if (low, high) == (-INT64_MAX - 1, INT64_MAX) else f"{low}..{high}"
        raise ValidationError(f"{what} must be an int, {span}, got {describe(value)}")
    return int(value)


def check_seconds(what: str, value: object, *, zero: bool = False) -> float:
    """``value`` if it is a finite number of seconds, > 0 (>= 0 with ``zero``)."""
    seconds = math.nan
    if isinstance(value, float):
        seconds = float(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 2**1000 else math.inf
    if not math.isfinite(seconds) or not (seconds >= 0 if zero else seconds > 0):
        rule = ">= 0" if zero else "> 0"
        raise ValidationError(
            f"{what} must be a finite number of seconds {rule}, got {describe(value)}"
        )
    return seconds


def check_bool(what: str, value: object) -> bool:
    """``value`` if it is a bool."""
    if type(value) is not bool:
        raise ValidationError(f"{what} must be True or False, got {describe(value)}")
    return value
