"""Throwaway local servers for tests, benchmarks and demos (standard library only).

``obelisk.servers.postgres.ThrowawayPostgres`` runs ``initdb`` into a temporary folder and
starts PostgreSQL on a free local port; ``stop()`` removes everything. Nothing here is
needed to run an application. (The package imports no submodule itself, so that
``python -m obelisk.servers.postgres`` runs cleanly.)
"""

__all__: list[str] = []
