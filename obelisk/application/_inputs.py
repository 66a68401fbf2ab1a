"""Checks of what callers hand the application, made once at its entry points.

Bad input is refused here with a :class:`ValidationError` naming it, not left to surface
as a TypeError, UnicodeEncodeError or OverflowError from deep inside a driver, a hash or a
comparison. Each check costs a type test or two for well-formed input.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Final

import msgspec

from obelisk._arguments import check_text
from obelisk._arguments import describe as shown
from obelisk.domain.values import check_json_nesting
from obelisk.errors import ValidationError

__all__ = [
    "check_as_of",
    "check_ids",
    "check_text",
    "check_version",
    "decode_error",
    "json_bytes",
    "shown",
]

_INT64_MAX: Final = 2**63 - 1


def check_ids(correlation_id: object, causation_id: object, idempotency_key: object = None) -> None:
    """The optional ids a command is handled with: None, or text (:func:`check_text`)."""
    if correlation_id is not None:
        check_text("correlation_id", correlation_id)
    if causation_id is not None:
        check_text("causation_id", causation_id)
    if idempotency_key is not None:
        check_text("idempotency_key", idempotency_key)


def check_version(version: object) -> None:
    """A version to load at: an int from 0 to 2**63-1 (what a database integer holds)."""
    if type(version) is not int or not 0 <= version <= _INT64_MAX:
        raise ValidationError(f"version must be an int from 0 to 2**63-1, got {shown(version)}")


def check_as_of(as_of: object) -> float:
    """A time to load as of, in seconds since the epoch: an aware datetime or a finite
    number (NaN compares false with everything: it would silently mean "nothing")."""
    if isinstance(as_of, datetime):
        if as_of.tzinfo is None:
            raise ValidationError("as_of must be timezone-aware (e.g. datetime.now(UTC))")
        return as_of.timestamp()
    if type(as_of) not in (int, float):
        raise ValidationError(
            f"as_of must be a datetime or seconds since the epoch, got {type(as_of).__name__}"
        )
    assert isinstance(as_of, int | float)
    try:
        seconds = float(as_of)
    except OverflowError:  # an int beyond any float
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValidationError(f"as_of must be a finite time, got {shown(as_of)}")
    return seconds


def json_bytes(payload: object, what: str) -> bytes:
    """``payload`` (bytes, a bytearray, a memoryview or a str) as JSON bytes, checked for
    nesting first (:func:`~obelisk.domain.values.check_json_nesting`): msgspec recurses
    once per level and would end in a RecursionError."""
    if type(payload) is not bytes:
        if isinstance(payload, str):
            try:
                payload = payload.encode()
            except UnicodeEncodeError:
                raise ValidationError(f"{what} is not valid text (a lone surrogate)") from None
        elif isinstance(payload, bytes | bytearray | memoryview):
            payload = bytes(payload)
        else:
            raise ValidationError(f"{what} must be JSON bytes, got {type(payload).__name__}")
    assert isinstance(payload, bytes)
    check_json_nesting(payload, what)
    return payload


def decode_error(what: str, exc: msgspec.DecodeError | RecursionError) -> ValidationError:
    """The ValidationError for a JSON document msgspec refused (or recursed too deep on:
    the last line of defence, should a document pass :func:`json_bytes` anyway)."""
    if isinstance(exc, RecursionError):
        return ValidationError(f"{what} is nested too deeply")
    return ValidationError(f"invalid {what}: {exc}")
