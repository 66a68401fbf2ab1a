"""The application layer: command handling, units of work, retries."""

from obelisk.application.app import Application
from obelisk.application.cache import AggregateCache
from obelisk.application.commands import Command, CommandRegistry
from obelisk.application.loading import AggregateLoader, LoadBudget, LoadStats, SnapshotPolicy
from obelisk.application.locks import KeyedLock
from obelisk.application.retry import NO_RETRY, RetryPolicy
from obelisk.application.snapshots import Snapshotter
from obelisk.application.unit_of_work import UnitOfWork

__all__ = [
    "NO_RETRY",
    "AggregateCache",
    "AggregateLoader",
    "Application",
    "Command",
    "CommandRegistry",
    "KeyedLock",
    "LoadBudget",
    "LoadStats",
    "RetryPolicy",
    "SnapshotPolicy",
    "Snapshotter",
    "UnitOfWork",
]
