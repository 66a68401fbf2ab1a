"""Up-front checks of the query cache's arguments: keys and tags become Redis keys and
ETag text, so they must be str that encodes as UTF-8 (NUL is fine: Redis keys are
binary-safe). Checked on misses and invalidations, never on the hit path."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from obelisk._arguments import check_text, describe
from obelisk.errors import ValidationError

__all__ = ["check_key", "check_load", "check_tags", "run_loader"]

T = TypeVar("T")


def check_key(key: object) -> str:
    """A cache key: a str Redis and HTTP validators can carry."""
    return check_text("cache key", key, nul=True)


def check_tags(tags: Any) -> tuple[str, ...]:
    """Tags as a tuple of str (a plain str would be taken letter by letter)."""
    if isinstance(tags, str | bytes):
        raise ValidationError(f"tags must be a collection of tag names, got {describe(tags)}")
    try:
        names = tuple(tags)
    except TypeError:
        raise ValidationError(
            f"tags must be a collection of tag names, got {describe(tags)}"
        ) from None
    for name in names:
        check_text("cache tag", name, nul=True)
    return names


def check_load(load: object) -> None:
    if not callable(load):
        raise ValidationError(f"load must be an async function, got {describe(load)}")


async def run_loader(load: Callable[[], Awaitable[T]]) -> T:
    """``await load()``, a loader that returns no awaitable refused with a message."""
    pending: Any = load()
    if not inspect.isawaitable(pending):
        raise ValidationError(
            f"load must be an async function; it returned {type(pending).__name__}"
        )
    return await pending  # type: ignore[no-any-return]
