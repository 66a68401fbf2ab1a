"""W6-observed: W6 with metrics and sampled tracing on, against plain W6 of the same run.

What observing costs: every command timed into the metrics histograms, one in a thousand
traced (spans through the OpenTelemetry SDK to an exporter that only counts them). The
ratio is this run's commands/s over plain W6's; the target is at most 5% overhead.
"""

from __future__ import annotations

from typing import Any, ClassVar

from obelisk.bench.workload import Target, Workload
from obelisk.bench.workloads import Concurrent

__all__ = ["ObservedConcurrent"]


class _CountingExporter:
    """Accepts spans and drops them (a collector that is always there, at no cost)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class ObservedConcurrent(Concurrent):
    """W6 with an Observer: metrics for every command, traces for a sample."""

    id = "W6-observed"
    name = "concurrent-observed"
    title = "W6 with metrics on and 0.1% of commands traced (OpenTelemetry SDK)"
    baseline = "plain W6 (nothing observed) in the same run"
    target_ratio = 0.95
    trace_sample: ClassVar[float] = 0.001

    def target(self, backend: str) -> Target:
        return Target(self.target_ratio, None)  # a ratio to W6 on every backend

    def reference(self) -> Workload | None:
        return Concurrent(self.scale)

    def skip_reason(self, backend: str) -> str | None:
        try:
            import opentelemetry.sdk.trace  # noqa: F401
            import prometheus_client  # noqa: F401
        except ImportError:
            return (
                "W6-observed needs prometheus-client and opentelemetry-sdk "
                "(pip install 'obelisk[observability]' opentelemetry-sdk)"
            )
        return None

    def application_options(self) -> dict[str, Any]:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from obelisk.observability import Observer
        from obelisk.observability.metrics import Metrics
        from obelisk.observability.tracing import obelisk_tracer

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_CountingExporter()))  # type: ignore[arg-type]
        observer = Observer(
            metrics=Metrics(), tracer=obelisk_tracer(provider), trace_sample=self.trace_sample
        )
        return {**super().application_options(), "observer": observer}
