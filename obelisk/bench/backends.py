"""Backends the benchmark runs on: where fresh databases come from, obelisk's store for
them, and the raw-driver baseline that does the same work.

Adding a backend means one :class:`Backend` subclass, its
:class:`~obelisk.bench.baseline.RawBaseline`, and one branch in :func:`backend_from_option`.
PostgreSQL's lives in :mod:`obelisk.bench.pg_backend`, imported only when asked for, so the
bench runs on SQLite without asyncpg installed.
"""

from __future__ import annotations

import abc
import shutil
import tempfile
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

from obelisk.bench.baseline import RawBaseline
from obelisk.bench.measure import BenchError
from obelisk.bench.raw_sqlite import RawSQLiteBaseline
from obelisk.store.base import EventStore
from obelisk.store.sqlite import SQLiteEventStore, Synchronous

__all__ = ["Backend", "SQLiteBackend", "backend_from_option"]


class Backend(abc.ABC):
    """One database engine, as the benchmark sees it.

    Attributes:
        name: the backend id reported in every result (``"sqlite"``).
        raw: the raw-driver baseline for this engine.
    """

    name: str
    raw: RawBaseline

    async def start(self) -> None:  # noqa: B027 - only backends with a server override it
        """Get ready to run: start or reach the server. BenchError if it cannot."""

    async def stop(self) -> None:  # noqa: B027 - only backends that own resources override it
        """Release what the backend holds (temporary folders, connections, a server).

        Safe after a failed or partial :meth:`start`, and safe to call twice.
        """

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @abc.abstractmethod
    def describe(self) -> str:
        """A one-line description for reports (engine version, durability setting).

        Valid once :meth:`start` has returned.
        """

    @abc.abstractmethod
    def fresh(self, label: str) -> str:
        """The location of a new, empty database (``label`` keeps names readable)."""

    @abc.abstractmethod
    def make_store(self, location: str) -> EventStore:
        """An unopened obelisk event store on ``location``."""

    @abc.abstractmethod
    async def discard(self, location: str) -> None:
        """Delete the database at ``location`` (after its run)."""

    def group_commit_counters(self, store: EventStore) -> tuple[int, int] | None:
        """``(batches, jobs)`` committed so far by ``store``, if its writer keeps counters."""
        # The writers' counters are private; reading them is cheap and only for reports.
        writer = getattr(store, "_writer", None)
        if writer is None:
            return None
        return int(writer.batches), int(writer.jobs)


class SQLiteBackend(Backend):
    """SQLite files in a folder (a temporary one by default), one file per run.

    Args:
        folder: where the files go; None for a temporary folder removed by :meth:`close`.
        prefix: the start of every file name.
        synchronous: the durability level for both obelisk and the raw driver.
    """

    name = "sqlite"

    def __init__(
        self,
        folder: Path | None = None,
        *,
        prefix: str = "bench",
        synchronous: Synchronous = "FULL",
    ) -> None:
        self._own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="obelisk-bench-")) if folder is None else folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.synchronous: Synchronous = synchronous
        self.raw = RawSQLiteBaseline(synchronous)
        self._count = 0

    def describe(self) -> str:
        import sqlite3

        return (
            f"SQLite {sqlite3.sqlite_version}, WAL, synchronous={self.synchronous}, "
            f"files in {self.folder}"
        )

    def fresh(self, label: str) -> str:
        # A counter keeps names unique even if a run's label repeats.
        self._count += 1
        path = self.folder / f"{self.prefix}-{self._count:03d}-{label}.db"
        self._remove(str(path))
        return str(path)

    def make_store(self, location: str) -> EventStore:
        return SQLiteEventStore(location, synchronous=self.synchronous)

    async def discard(self, location: str) -> None:
        self._remove(location)

    @staticmethod
    def _remove(location: str) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(location + suffix).unlink(missing_ok=True)

    async def stop(self) -> None:
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def backend_from_option(option: str) -> Backend:
    """The backend ``--store`` names; BenchError with a clear message if unsupported.

    Accepted: ``sqlite`` (files in a temporary folder), ``sqlite:///folder`` or
    ``sqlite:///folder/name.db`` (files in that folder, named after ``name``), with an
    optional ``?synchronous=FULL|NORMAL``; ``postgresql://user@host:port/database`` (a
    server to create throwaway schemas in) or ``postgresql://auto`` (a throwaway server
    started and stopped by the bench), see :func:`obelisk.bench.pg_backend.postgres_backend`.
    """
    text = option.strip()
    lowered = text.lower()
    if lowered == "sqlite":
        return SQLiteBackend()
    if lowered in ("postgres", "postgresql"):
        raise BenchError(
            f"--store {text}: name a server (postgresql://user@host:port/database), or write "
            "postgresql://auto to have the bench start a throwaway one"
        )
    if lowered.startswith(("postgres://", "postgresql://")):
        try:
            from obelisk.bench.pg_backend import postgres_backend
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise BenchError(
                f"PostgreSQL benchmarks need asyncpg: pip install 'obelisk[postgres]' ({exc})"
            ) from exc
        return postgres_backend(text)
    if lowered.startswith("memory"):
        raise BenchError("the memory store has no raw driver to compare against; use sqlite")
    if not lowered.startswith("sqlite:"):
        raise BenchError(
            f"unsupported --store {option!r}: use 'sqlite', 'sqlite:///folder', "
            "'postgresql://user@host/db' or 'postgresql://auto'"
        )
    parts = urlsplit(text)
    if parts.netloc:
        raise BenchError(f"{option!r}: write sqlite:///relative/folder or sqlite:////abs/folder")
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    level = options.pop("synchronous", "FULL").upper()
    if level not in ("FULL", "NORMAL"):
        raise BenchError(f"{option!r}: synchronous must be FULL or NORMAL")
    synchronous: Synchronous = "FULL" if level == "FULL" else "NORMAL"
    if options:
        raise BenchError(f"{option!r}: unknown option(s) {', '.join(sorted(options))}")
    raw_path = unquote(parts.path)
    raw_path = raw_path[1:] if raw_path.startswith("/") else raw_path
    if not raw_path:
        return SQLiteBackend(synchronous=synchronous)
    path = Path(raw_path)
    if path.suffix and not path.is_dir():
        return SQLiteBackend(path.parent, prefix=path.stem, synchronous=synchronous)
    return SQLiteBackend(path, synchronous=synchronous)
