"""What the URL factories share: splitting a URL and reading its query options.

``store_from_url``, ``read_store_from_url`` and ``broker_from_url`` raise only
:class:`~obelisk.errors.ValidationError` (a ``ValueError``) for a URL they cannot use, each
message naming the URL and what is wrong with it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import overload
from urllib.parse import SplitResult, parse_qs, urlsplit

from obelisk.errors import ValidationError

__all__ = ["file_path", "number_option", "split_url", "url_options"]


def split_url(url: object, what: str) -> SplitResult:
    """``url`` split into its parts (``what``: "store", "read store", "broker")."""
    if not isinstance(url, str):
        raise ValidationError(f"a {what} URL must be a str, got {type(url).__name__}")
    try:
        # Drivers and urlencode need UTF-8 text: a lone surrogate would fail there, late.
        url.encode()
    except UnicodeEncodeError:
        raise ValidationError(f"{what} URL {url!r} is not valid text (a lone surrogate)") from None
    if "\x00" in url:
        raise ValidationError(f"{what} URL {url!r} holds a NUL character")
    try:
        return urlsplit(url)
    except ValueError as exc:  # an unclosed IPv6 bracket, ...
        raise ValidationError(f"malformed {what} URL {url!r}: {exc}") from None


def url_options(url: str, parts: SplitResult, own: Collection[str]) -> dict[str, str]:
    """The query options of ``url``, the last value of each.

    An empty value of one of obelisk's ``own`` options is refused: ``?schema=`` would
    otherwise silently mean the default schema. Empty values of the others (the driver's)
    are left out, as they always were.
    """
    try:
        parsed = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:  # too many fields, bad percent-encoding in strict mode
        raise ValidationError(f"{url!r}: malformed query: {exc}") from None
    options: dict[str, str] = {}
    for key, values in parsed.items():
        value = values[-1]
        if not value:
            if key in own:
                raise ValidationError(
                    f"{url!r}: option {key} is empty; leave it out to use its default"
                )
            continue
        options[key] = value
    return options


@overload
def number_option(url: str, options: dict[str, str], key: str, kind: type[int]) -> int | None: ...
@overload
def number_option(
    url: str, options: dict[str, str], key: str, kind: type[float]
) -> float | None: ...
def number_option(
    url: str, options: dict[str, str], key: str, kind: type[int] | type[float]
) -> int | float | None:
    """Option ``key`` taken out of ``options`` as a finite number >= 0 (None: absent)."""
    raw = options.pop(key, None)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        unit = "a whole number" if kind is int else "a number of seconds"
        raise ValidationError(f"{url!r}: {key} must be {unit} >= 0, got {raw!r}")
    return value


def file_path(url: str, path: str) -> str:
    """A database file path from ``url``, if a file system can hold it."""
    if not path:
        raise ValidationError(f"{url!r} names no database file")
    if "\x00" in path:  # %00 in the URL
        raise ValidationError(f"{url!r}: a file path cannot hold NUL characters")
    return path
