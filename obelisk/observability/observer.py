"""The Observer: times each command, feeds metrics and traces, logs slow commands.

Metrics take every command's duration, by command type and outcome (one perf_counter pair
and one histogram observation). A command's phases — loading aggregates, the handler's own
work, the wait for its append — are timed only when something needs them: a traced command
(``trace_sample`` of them start a span, with child spans per load and append; the others
pay one random draw) or the slow-command log (commands over ``slow_command_seconds`` are
logged with their phases). Group-commit batch sizes and waits are measured per batch by the
store's writer, not per command.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

from obelisk.errors import (
    AggregateNotFound,
    CommandRejected,
    ConcurrencyError,
    DomainError,
    ValidationError,
)

if TYPE_CHECKING:
    from obelisk.observability.metrics import Metrics

__all__ = ["CommandTiming", "Observer"]

_log = logging.getLogger("obelisk.slow_commands")


class CommandTiming:
    """Where one command's time went (seconds), filled in while it runs."""

    __slots__ = (
        "append_seconds", "appends", "load_seconds", "loads", "scope", "span", "traceparent",
        "tracer",
    )  # fmt: skip

    def __init__(self, tracer: Any = None) -> None:
        self.load_seconds = 0.0
        self.loads = 0
        self.append_seconds = 0.0
        self.appends = 0
        self.tracer = tracer  # set when this command is traced: its phases get spans
        self.scope: Any = None  # the command span's context manager, while it is open
        self.span: Any = None
        self.traceparent: str | None = None  # stored with the command's events


def outcome_of(exc: BaseException | None) -> str:
    """The bounded outcome label of a command that raised ``exc`` (None: it succeeded)."""
    if exc is None:
        return "ok"
    if isinstance(exc, ConcurrencyError):
        return "conflict"
    if isinstance(exc, DomainError | CommandRejected | ValidationError | AggregateNotFound):
        return "rejected"
    return "error"


class Observer:
    """Metrics, tracing and the slow-command log of one Application.

    Args:
        metrics: a :class:`~obelisk.observability.metrics.Metrics` (None: no metrics).
        tracer: an OpenTelemetry ``Tracer`` (None: no traces).
        trace_sample: the share of commands traced (1.0: all).
        slow_command_seconds: log commands slower than this, with their phases (None: off).
    """

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        tracer: Any = None,
        trace_sample: float = 1.0,
        slow_command_seconds: float | None = None,
    ) -> None:
        if not 0.0 <= trace_sample <= 1.0:
            raise ValueError(f"trace_sample must be within [0, 1], got {trace_sample!r}")
        if slow_command_seconds is not None and not slow_command_seconds > 0:
            raise ValueError("slow_command_seconds must be > 0 or None")
        self.metrics = metrics
        self.tracer = tracer
        self.trace_sample = trace_sample
        self.slow_command_seconds = slow_command_seconds
        self.slow_commands = 0

    def begin(self, name: str) -> CommandTiming | None:
        """A command starts: its phase timing, inside a span if this one is traced.

        None when nothing needs its phases (no slow-command log, not traced): the command
        is then timed as a whole only, the cheapest way (see ``finish``).
        """
        tracer = self.tracer
        if tracer is None or (self.trace_sample < 1.0 and random.random() >= self.trace_sample):
            return None if self.slow_command_seconds is None else CommandTiming()
        timing = CommandTiming(tracer)
        scope = tracer.start_as_current_span(
            f"obelisk.command {name}", attributes={"obelisk.command": name}
        )
        timing.span = scope.__enter__()
        timing.scope = scope
        context = timing.span.get_span_context()
        if context.is_valid:
            timing.traceparent = (
                f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
            )
        return timing

    def finish(
        self,
        name: str,
        started: float,
        timing: CommandTiming | None,
        error: BaseException | None,
    ) -> None:
        """Record one command that started at ``started`` (perf_counter) and just ended."""
        elapsed = time.perf_counter() - started
        metrics = self.metrics
        if error is None:
            outcome = "ok"
            if metrics is not None:
                metrics.command_ok(name).observe(elapsed)
        else:
            outcome = outcome_of(error)
            if metrics is not None:
                metrics.commands.child(name, outcome).observe(elapsed)
        if timing is None:
            return
        budget = self.slow_command_seconds
        if budget is not None and elapsed > budget:
            self._slow(name, outcome, elapsed, timing)
        scope = timing.scope
        if scope is not None:  # a traced command: close its span
            timing.span.set_attribute("obelisk.outcome", outcome)
            timing.span.set_attribute("obelisk.loads", timing.loads)
            if error is None:
                scope.__exit__(None, None, None)
            else:
                scope.__exit__(type(error), error, error.__traceback__)

    def _slow(self, name: str, outcome: str, elapsed: float, timing: CommandTiming) -> None:
        self.slow_commands += 1
        handler = max(elapsed - timing.load_seconds - timing.append_seconds, 0.0)
        _log.warning(
            "slow command %s (%s): %.1f ms = load %.1f ms (%d aggregates) + handler %.1f ms "
            "+ append %.1f ms",
            name, outcome, elapsed * 1000, timing.load_seconds * 1000, timing.loads,
            handler * 1000, timing.append_seconds * 1000,
            extra={"command": name, "outcome": outcome, "seconds": elapsed,
                   "load_seconds": timing.load_seconds, "loads": timing.loads,
                   "handler_seconds": handler, "append_seconds": timing.append_seconds},
        )  # fmt: skip
