"""The nesting limit on JSON bytes: exact at the limit, blind to brackets inside strings,
and one pass over any document (a hostile one included)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from obelisk.domain.values import MAX_NESTING, check_json_nesting, check_value_nesting
from obelisk.errors import ValidationError
from obelisk.testing.hostile import nested, nested_json


def test_a_document_nested_exactly_to_the_limit_passes_and_one_level_more_is_refused() -> None:
    check_json_nesting(nested_json(MAX_NESTING), "the body")
    check_json_nesting(b'{"a":' * MAX_NESTING + b"1" + b"}" * MAX_NESTING, "the body")

    with pytest.raises(ValidationError, match="the body is nested deeper than 128 levels"):
        check_json_nesting(nested_json(MAX_NESTING + 1), "the body")
    with pytest.raises(ValidationError, match="nested deeper"):
        check_json_nesting("[" * 1000 + "]" * 1000, "the body")


def test_brackets_inside_strings_and_escaped_quotes_are_not_nesting() -> None:
    inside = json.dumps({"a": "[" * 500, "b": '\\"[' * 300, "c": [["]]"]]}).encode()

    check_json_nesting(inside, "the body")


def test_brackets_in_an_unterminated_string_are_not_nesting() -> None:
    # The string runs to the end: msgspec will call the document truncated, which is the
    # truth (the brackets are text, not nesting).
    data = b'{"a": "' + b"[" * 1000

    check_json_nesting(data, "the body")
    with pytest.raises(msgspec.DecodeError, match="truncated"):
        msgspec.json.decode(data)


def test_a_megabyte_of_escaped_quotes_that_never_closes_is_checked_in_one_pass() -> None:
    # Before the fix, every quote began a string match that ran to the end and failed:
    # quadratic, hours for this megabyte (the test's timeout ends it).
    data = b"[" * (MAX_NESTING + 1) + b'"' + b'\\"' * 500_000

    with pytest.raises(ValidationError, match="nested deeper"):
        check_json_nesting(data, "the body")
    check_json_nesting(b'["' + b'\\"' * 500_000 + b"[" * 200, "the body")


@dataclass
class Box:
    content: Any


def test_values_nested_inside_a_dataclass_count_as_nesting() -> None:
    # msgspec encodes a dataclass like a struct (one level more): before, the walk stopped
    # at the dataclass, and the encoder met the depth with a RecursionError.
    check_value_nesting(Box(nested(MAX_NESTING - 1)), "the value")

    with pytest.raises(ValidationError, match="nested deeper than 128 levels"):
        check_value_nesting(Box(nested(MAX_NESTING)), "the value")
    with pytest.raises(ValidationError, match="nested deeper"):
        check_value_nesting({"a": [Box(nested(5000))]}, "the value")
