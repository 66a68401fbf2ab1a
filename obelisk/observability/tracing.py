"""Traces with OpenTelemetry: a tracer for the Observer, and an exporter guard.

obelisk uses only the OpenTelemetry *API* (``opentelemetry-api``): you bring the SDK and the
exporter you use. Spans: ``obelisk.command <type>`` per traced command, with children
``obelisk.load`` (per aggregate loaded) and ``obelisk.append``.

A traced command stores its span's W3C ``traceparent`` with its events
(``StoredEvent.trace_context``): whoever handles those events later — a projection, a
relay, a worker, in any process — starts its span with ``links=link_to(stored)``, and the
trace backend shows the two traces linked.

An exporter that cannot reach its collector must never slow or fail the application:
wrap it in :class:`CountingSpanExporter` (SDK side), which turns every error into a
dropped batch and counts the spans lost, for the ``obelisk_spans_dropped`` metric.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["CountingSpanExporter", "link_to", "obelisk_tracer"]

_log = logging.getLogger("obelisk.tracing")


def obelisk_tracer(provider: Any = None) -> Any:
    """The tracer obelisk's spans go to (from ``provider``, or the global provider)."""
    from opentelemetry import trace

    if provider is not None:
        return provider.get_tracer("obelisk")
    return trace.get_tracer("obelisk")


def link_to(stored: Any) -> list[Any]:
    """OpenTelemetry links to the trace that wrote ``stored`` (a StoredEvent, or a
    ``traceparent`` string such as a message's header); [] when it was not traced or its
    trace context is not a valid ``traceparent``."""
    from opentelemetry.trace import Link, SpanContext, TraceFlags

    header = stored if isinstance(stored, str) else getattr(stored, "trace_context", None)
    if not isinstance(header, str):
        return []
    parts = header.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return []
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return []
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return [Link(context)] if context.is_valid else []


class CountingSpanExporter:
    """Wraps a SpanExporter: failures drop the batch, are counted, and never propagate.

    Args:
        inner: the real exporter (OTLP, Jaeger, ...).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.exported = 0
        self.dropped = 0
        self.failures = 0

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self.inner.export(spans)
        except Exception as exc:  # an unreachable collector must not reach the app
            result = SpanExportResult.FAILURE
            if self.failures == 0:
                _log.warning("span exporter failed; spans are dropped and counted: %s", exc)
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failures += 1
            self.dropped += len(spans)
        return result

    def shutdown(self) -> None:
        try:
            self.inner.shutdown()
        except Exception as exc:
            _log.debug("span exporter shutdown failed: %s", exc)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        try:
            return bool(self.inner.force_flush(timeout_millis))
        except Exception:
            return False

    def metrics(self) -> Iterator[Any]:
        """Metric families to pass to ``Metrics.add_source``."""
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("obelisk_spans_exported", "Spans exported.", value=self.exported)
        yield CounterMetricFamily(
            "obelisk_spans_dropped", "Spans dropped (exporter failed).", value=self.dropped
        )
