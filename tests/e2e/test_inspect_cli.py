"""`obelisk inspect`: the largest streams and the slowest loads, as a table and as JSON."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from obelisk.cli import app as cli_app
from obelisk.demo.bank import AccountOpened, MoneyDeposited
from obelisk.store import NO_STREAM, Snapshot, SQLiteEventStore


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_app, ["inspect", *args])


async def _seed(path: Path) -> None:
    async with SQLiteEventStore(path) as store:
        await store.append(
            "big", [AccountOpened(owner="a"), *(MoneyDeposited(amount=i) for i in range(1, 500))],
            NO_STREAM, stream_type="Account",
        )  # fmt: skip
        await store.append("mid", [AccountOpened(owner="b"), MoneyDeposited(amount=1)], NO_STREAM)
        await store.append("small", [AccountOpened(owner="c")], NO_STREAM, stream_type="Account")
        await store.save_snapshots([Snapshot("big", 450, "Account", 1, b"\x80", 0.0)])


def test_json_lists_the_largest_streams_with_their_snapshot_and_load_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    asyncio.run(_seed(path))
    result = _invoke(f"sqlite:///{path}", "--json", "--limit", "2", "--import", "obelisk.demo.bank")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    largest = report["largest"]
    assert [(s["stream_id"], s["events"], s["snapshot_version"]) for s in largest] == [
        ("big", 500, 450),
        ("mid", 2, None),
    ]
    assert largest[0]["events_after_snapshot"] == 50
    assert largest[0]["stream_type"] == "Account"
    assert largest[0]["data_bytes"] > largest[1]["data_bytes"] > 0
    assert all(s["load_ms"] > 0 for s in largest)
    slowest = [s["load_ms"] for s in report["slowest"]]
    assert slowest == sorted(slowest, reverse=True) and len(slowest) == 2


def test_without_the_event_classes_the_table_lists_streams_but_does_not_time_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    asyncio.run(_seed(path))
    # A fresh process: nothing has imported the bank's event classes there.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "obelisk"), "inspect", f"sqlite:///{path}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    for stream in ("big", "mid", "small"):
        assert rows[stream][-1] == "?", result.stdout
    assert "largest streams" in result.stdout
    assert "--import" in result.stderr

    imported = subprocess.run(
        [str(Path(sys.executable).parent / "obelisk"), "inspect", f"sqlite:///{path}",
         "--import", "obelisk.demo.bank"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert "?" not in imported.stdout
    assert "--import" not in imported.stderr


def test_a_missing_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    result = _invoke(f"sqlite:///{path}")
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert not path.exists()


def test_bad_options_and_urls_exit_2_with_a_message(tmp_path: Path) -> None:
    assert _invoke("nosuch://x").exit_code == 2
    assert _invoke("memory://", "--limit", "-1").exit_code == 2
    bad_import = _invoke("memory://", "--import", "no_such_module_here")
    assert bad_import.exit_code == 2
    assert "no_such_module_here" in bad_import.output


def test_an_empty_store_says_so(tmp_path: Path) -> None:
    result = _invoke("memory://")
    assert result.exit_code == 0, result.output
    assert "no events" in result.stdout
