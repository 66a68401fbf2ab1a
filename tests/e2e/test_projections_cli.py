"""`obelisk projections`: bad input is refused with a clear message and exit code 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from obelisk.cli import app


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["projections", *args])
    return result.exit_code, result.output


def test_pausing_an_unknown_projection_is_refused(tmp_path: Path) -> None:
    code, output = run("pause", "nope", "--read", f"sqlite:///{tmp_path / 'read.db'}")
    assert code == 2 and "no projection 'nope'" in output


def test_a_target_that_is_not_a_projection_class_is_refused(tmp_path: Path) -> None:
    urls = ["--store", f"sqlite:///{tmp_path / 'e.db'}", "--read", f"sqlite:///{tmp_path / 'r.db'}"]
    code, output = run("rebuild", "obelisk.demo.bank:Account", *urls)
    assert code == 2 and "is not a Projection class" in output
    code, output = run("rebuild", "no_colon", *urls)
    assert code == 2 and "is not module:ClassName" in output
    code, output = run("rebuild", "no_such_module_x:P", *urls)
    assert code == 2 and "no_such_module_x" in output


def test_a_bad_read_store_url_is_refused(tmp_path: Path) -> None:
    code, output = run("status", "--read", "kafka://x")
    assert code == 2 and "unsupported read store URL" in output


def test_status_of_a_fresh_read_store_lists_nothing(tmp_path: Path) -> None:
    code, output = run("status", "--read", f"sqlite:///{tmp_path / 'read.db'}", "--json")
    assert code == 0 and output.strip() == "[]"
