"""Hostile values for tests of code that takes outside input (commands, HTTP bodies).

obelisk's own tests feed these to every entry point; users' tests can do the same for
their handlers. Each value is one a careless client or an attacker can send.
"""

from __future__ import annotations

from typing import Any

__all__ = ["nested", "nested_json"]


def nested(depth: int) -> list[Any]:
    """A list nested ``depth`` levels deep (``nested(2) == [[]]``), built without recursion,
    since a recursive builder would hit the very limit such values probe."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_json(depth: int) -> bytes:
    """A JSON array nested ``depth`` levels deep: ``[[...]]``."""
    return b"[" * depth + b"]" * depth
