"""`obelisk bench --all --report DIR`: every backend, a Markdown report with PNG charts."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from obelisk.bench.runner import SCALE_ENV
from obelisk.cli import app

TINY = {SCALE_ENV: "0.1"}
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_report_has_every_backend_its_tables_and_its_charts(tmp_path: Path) -> None:
    workloads = "W1,W3-snapshot,W4b"
    arguments = ["bench", "--quick", "--all", "-w", workloads, "--report", str(tmp_path), "--json"]
    result = CliRunner().invoke(app, arguments, env=TINY)
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    backends = {r["backend"] for r in results}
    assert "sqlite" in backends  # and postgresql, where its binaries are installed
    text = (tmp_path / "report.md").read_text()
    for backend in backends:
        assert f"## {backend}" in text
        for chart in ("ratios", "concurrency", "loads", "projections"):
            png = tmp_path / f"{backend}-{chart}.png"
            assert png.read_bytes().startswith(PNG), png
            assert png.stat().st_size > 10_000, png  # axes, labels and data, not a blank
            assert f"]({backend}-{chart}.png)" in text
    assert "| clients | commands/s |" in text
    assert "| 64 |" in text
    assert "ms via snapshot" in text
