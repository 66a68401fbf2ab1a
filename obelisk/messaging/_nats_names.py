"""How NatsBroker names things on JetStream: streams, subjects, consumers and its headers.

A topic becomes one NATS token by mapping ``.`` to ``_`` and ``_`` to ``~``: a one-to-one
mapping (``Account.events`` -> ``Account_events``, ``job_queue`` -> ``job~queue``), so two
topics never share a stream. One token, not the topic's own dots, because JetStream
refuses streams whose subjects overlap, and ``PREFIX.a.>`` would overlap ``PREFIX.a.b.>``.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from obelisk.errors import ValidationError
from obelisk.messaging.message import validate_topic

__all__ = [
    "EXPECTED_LAST_MSG_ID",
    "EXPECTED_LAST_SEQUENCE",
    "MSG_ID",
    "SEQUENCE",
    "consumer_name",
    "stream_name",
    "subject_of",
    "topic_subjects",
    "validate_prefix",
]

MSG_ID: Final = "Nats-Msg-Id"
EXPECTED_LAST_SEQUENCE: Final = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID: Final = "Nats-Expected-Last-Msg-Id"
SEQUENCE: Final = "Obelisk-Sequence"
"""The header carrying a sequenced message's sequence: the stream remembers it."""

FALLBACK_SUBJECT: Final = "_"
"""The last NATS token(s) of a message whose subject is not a valid token sequence."""

_TOKENS: Final = str.maketrans({".": "_", "_": "~"})
# A token: printable ASCII but for space and the wildcards ``*`` and ``>``.
_SUBJECT_TOKEN: Final = re.compile(r"^[!-)+-=?-~]+$")
_MAX_SUBJECT: Final = 256
_PREFIX: Final = re.compile(r"^[A-Za-z0-9_-]+$")


def validate_prefix(prefix: str) -> str:
    """``prefix`` if it can start both stream names and subjects."""
    if not _PREFIX.match(prefix):
        raise ValidationError(f"stream prefix {prefix!r} must be [A-Za-z0-9_-] characters")
    return prefix


def _token(name: str) -> str:
    return validate_topic(name).translate(_TOKENS)


def stream_name(prefix: str, topic: str) -> str:
    """The stream holding ``topic``: ``OBELISK_Account_events``."""
    return f"{prefix}_{_token(topic)}"


def topic_subjects(prefix: str, topic: str) -> str:
    """The subjects of ``topic``'s stream: ``OBELISK.Account_events.>``."""
    return f"{prefix}.{_token(topic)}.>"


@functools.lru_cache(maxsize=4096)  # called per message; topics and subjects repeat
def subject_of(prefix: str, topic: str, subject: str) -> str:
    """The NATS subject a message goes to: the topic's, then the message's own subject
    when it is a valid token sequence (consumers can filter on it), else ``_``."""
    if len(subject) > _MAX_SUBJECT or not all(
        _SUBJECT_TOKEN.match(token) for token in subject.split(".")
    ):
        subject = FALLBACK_SUBJECT
    return f"{prefix}.{_token(topic)}.{subject}"


def consumer_name(group: str) -> str:
    """The durable consumer of ``group``: groups follow the topics' rules (dot-separated
    ``[A-Za-z0-9_-]`` tokens) and map the same way, since a NATS name holds no dot."""
    try:
        return _token(group)
    except ValidationError:
        raise ValidationError(
            f"group {group!r} must be dot-separated [A-Za-z0-9_-] tokens"
        ) from None
