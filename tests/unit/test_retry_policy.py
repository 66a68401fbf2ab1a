"""RetryPolicy: bounded, growing, jittered delays; invalid settings refused."""

from __future__ import annotations

import random

import pytest

from obelisk.application import NO_RETRY, RetryPolicy


@pytest.fixture
def top_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the jitter always pick the ceiling, so the ceiling itself is observable."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)


@pytest.fixture
def bottom_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: low)


def test_the_defaults_retry_a_few_times_with_short_waits() -> None:
    policy = RetryPolicy()
    assert policy.attempts == 3
    assert 0 < policy.base_delay <= policy.max_delay


def test_no_retry_runs_the_handler_once() -> None:
    assert NO_RETRY.attempts == 1


@pytest.mark.usefixtures("top_of_range")
def test_the_ceiling_doubles_with_each_attempt_until_max_delay() -> None:
    policy = RetryPolicy(attempts=10, base_delay=0.01, max_delay=0.05)
    ceilings = [policy.delay(attempt) for attempt in range(1, 8)]
    assert ceilings == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05, 0.05, 0.05])


@pytest.mark.usefixtures("bottom_of_range")
def test_the_jitter_can_go_down_to_no_wait_at_all() -> None:
    policy = RetryPolicy(base_delay=0.01, max_delay=0.05)
    assert policy.delay(1) == 0.0
    assert policy.delay(5) == 0.0


def test_every_delay_lies_between_zero_and_the_attempts_ceiling() -> None:
    random.seed(1234)
    policy = RetryPolicy(attempts=20, base_delay=0.001, max_delay=0.03)
    for attempt in range(1, 20):
        ceiling = min(0.03, 0.001 * 2 ** (attempt - 1))
        for _ in range(200):
            assert 0.0 <= policy.delay(attempt) <= ceiling


def test_delays_are_jittered_rather_than_identical() -> None:
    random.seed(99)
    policy = RetryPolicy(base_delay=0.01, max_delay=0.01)
    assert len({policy.delay(1) for _ in range(50)}) > 1


def test_a_zero_max_delay_never_waits() -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=0.0)
    assert all(policy.delay(attempt) == 0.0 for attempt in range(1, 5))


def test_a_very_late_attempt_is_still_capped() -> None:
    policy = RetryPolicy(attempts=2000, base_delay=0.001, max_delay=0.05)
    assert 0.0 <= policy.delay(1000) <= 0.05


def test_an_attempt_past_the_float_range_is_still_capped() -> None:
    policy = RetryPolicy(attempts=5000, base_delay=0.001, max_delay=0.05)
    assert 0.0 <= policy.delay(1100) <= 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": -3}, "attempts"),
        ({"base_delay": -0.001}, "delays"),
        ({"max_delay": -1.0}, "delays"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_a_policy_is_immutable() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.attempts = 10  # type: ignore[misc]
