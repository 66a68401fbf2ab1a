"""Metrics, traces and the slow-command log: where an application's time goes.

Everything here is optional: an Application without an :class:`Observer` pays one
attribute check per command. ``prometheus-client`` (metrics) and ``opentelemetry-api``
(traces) come with the ``observability`` extra.
"""

from obelisk.observability.observer import CommandTiming, Observer

__all__ = ["CommandTiming", "Observer"]
