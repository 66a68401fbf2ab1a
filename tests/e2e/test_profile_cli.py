"""`obelisk profile`: an HTML report and the hot spots, for workloads and user code."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from obelisk.cli import app as cli_app


def _profile(*args: str) -> object:
    return CliRunner().invoke(cli_app, ["profile", *args])


@pytest.fixture(autouse=True)
def _targets_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def test_a_callable_is_profiled_into_a_report_with_its_hot_spot(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    result = _profile(
        "_profile_targets:spin_in_a_recognisable_function", "--output", str(report), "--top", "5"
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "spin_in_a_recognisable_function" in result.stdout  # type: ignore[attr-defined]
    assert report.stat().st_size > 1000
    assert "spin_in_a_recognisable_function" in report.read_text()


def test_a_target_that_raises_still_gets_its_report_and_exits_1(tmp_path: Path) -> None:
    report = tmp_path / "failed.html"
    result = _profile("_profile_targets:fail_after_some_work", "--output", str(report))
    assert result.exit_code == 1
    assert "the target broke half-way" in result.output  # type: ignore[attr-defined]
    # The report shows where the time went before it failed.
    assert "spin_in_a_recognisable_function" in report.read_text()


def test_a_bench_workload_is_profiled_on_a_fresh_database(tmp_path: Path) -> None:
    report = tmp_path / "w1.html"
    result = _profile("w1", "--quick", "--output", str(report), "--top", "3")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "profile of w1" in result.stdout  # type: ignore[attr-defined]
    assert report.exists()


@pytest.mark.parametrize(
    "target", ["no_such_workload", "_profile_targets:missing", "no_such_module_xyz:main"]
)
def test_a_target_that_is_not_there_exits_2(target: str, tmp_path: Path) -> None:
    result = _profile(target, "--output", str(tmp_path / "x.html"))
    assert result.exit_code == 2
    assert not (tmp_path / "x.html").exists()
