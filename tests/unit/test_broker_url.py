"""broker_from_url, the lazy adapters, and how NatsBroker names streams and subjects."""

from __future__ import annotations

import subprocess
import sys

import pytest

from obelisk.errors import ValidationError
from obelisk.messaging import MemoryBroker, broker_from_url
from obelisk.messaging._nats_names import (
    consumer_name,
    stream_name,
    subject_of,
    topic_subjects,
    validate_prefix,
)
from obelisk.messaging.nats import NatsBroker
from obelisk.messaging.redis import RedisBroker


def test_each_scheme_names_its_broker_unopened() -> None:
    assert isinstance(broker_from_url("memory://"), MemoryBroker)
    redis = broker_from_url("redis://127.0.0.1:6379/2")
    assert isinstance(redis, RedisBroker) and redis.url == "redis://127.0.0.1:6379/2"
    nats = broker_from_url("nats://127.0.0.1:4222")
    assert isinstance(nats, NatsBroker) and nats.url == "nats://127.0.0.1:4222"


def test_an_unknown_scheme_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="unsupported broker URL 'kafka://x'"):
        broker_from_url("kafka://x")


def test_importing_messaging_imports_no_broker_client() -> None:
    code = (
        "import sys, obelisk.messaging as m; "
        "m.broker_from_url('memory://'); "
        "assert 'redis' not in sys.modules and 'nats' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_topics_map_one_to_one_onto_stream_names_and_subjects() -> None:
    topics = ["a.b", "a_b", "a-b", "a.b_c", "a_b.c", "ab"]
    assert len({stream_name("OBELISK", t) for t in topics}) == len(topics)
    assert stream_name("OBELISK", "Account.events") == "OBELISK_Account_events"
    assert topic_subjects("OBELISK", "Account.events") == "OBELISK.Account_events.>"
    # One token per topic: "a" and "a.b" must not have overlapping subjects.
    assert topic_subjects("P", "a") == "P.a.>" and topic_subjects("P", "a.b") == "P.a_b.>"


def test_a_message_subject_is_kept_when_nats_can_carry_it() -> None:
    assert subject_of("P", "t", "Account.MoneyDeposited") == "P.t.Account.MoneyDeposited"
    assert subject_of("P", "t", "job.send-mail") == "P.t.job.send-mail"
    for bad in ["", "a..b", "a b", "a.*", "a.>", ".a", "é", "x" * 300, "a\tb"]:
        assert subject_of("P", "t", bad) == "P.t._", bad


def test_names_nats_cannot_hold_are_validation_errors() -> None:
    with pytest.raises(ValidationError):
        stream_name("P", "a..b")
    with pytest.raises(ValidationError, match="group"):
        consumer_name("billing workers")
    assert consumer_name("billing.v2") == "billing_v2"
    with pytest.raises(ValidationError):
        validate_prefix("A.B")
    with pytest.raises(ValidationError):
        NatsBroker("nats://x", stream_prefix="")
