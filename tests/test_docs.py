"""Every code block in README.md and docs/ runs.

* ```python blocks of one page run together, in order, in a fresh interpreter (a page's
  later blocks may use what earlier ones defined).
* ```bash blocks run under ``bash -euo pipefail`` with this interpreter's scripts on PATH.
* ```bash setup blocks are the README's two set-up commands. The test command is what
  ``.ci/run`` calls, so CI runs it; running it here would recurse. The demo command is run
  with the already-installed package (re-installing would only repeat the set-up).
* ```text blocks are sample output, not code.
* Pages whose code reads ``$OBELISK_POSTGRES_DSN`` get the test session's PostgreSQL server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
KNOWN = {"python", "bash", "bash setup", "text"}
PG_DSN_VARIABLE = "OBELISK_POSTGRES_DSN"


def blocks(page: Path) -> list[tuple[str, str]]:
    return [(info.strip(), body) for info, body in FENCE.findall(page.read_text())]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def pages_with(kind: str) -> list[Path]:
    return [page for page in PAGES if any(info == kind for info, _ in blocks(page))]


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONASYNCIODEBUG", None)  # debug mode would distort the demo's figures only
    return env


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_code_block_has_a_known_kind(page: Path) -> None:
    kinds = {info for info, _ in blocks(page)}
    assert kinds <= KNOWN, f"{page_id(page)} has blocks of unknown kind {kinds - KNOWN}"


@pytest.mark.parametrize("page", pages_with("python"), ids=page_id)
def test_the_python_blocks_of_a_page_run(
    page: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    code = "\n\n".join(body for info, body in blocks(page) if info == "python")
    env = run_env()
    if PG_DSN_VARIABLE in code:
        # Pages about PostgreSQL run against the test session's server.
        env[PG_DSN_VARIABLE] = request.getfixturevalue("postgres_dsn")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{page_id(page)} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("page", pages_with("bash"), ids=page_id)
def test_the_bash_blocks_of_a_page_run(page: Path, tmp_path: Path) -> None:
    scripts = [body for info, body in blocks(page) if info == "bash"]
    for script in scripts:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=run_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (
            f"{page_id(page)} block failed:\n{script}\n{result.stdout}\n{result.stderr}"
        )


def test_the_readme_starts_with_exactly_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    setup = [body.strip() for info, body in blocks(ROOT / "README.md") if info == "bash setup"]
    assert len(setup) == 2
    first_fence = text.index("```")
    assert text.index("```bash setup") == first_fence, "the set-up commands come first"
    assert setup[0].endswith("obelisk demo")
    assert setup[1] == "./scripts/test.sh"
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_demo_command_runs_and_verifies(tmp_path: Path) -> None:
    demo = next(body for info, body in blocks(ROOT / "README.md") if info == "bash setup")
    command = demo.strip().split("&&")[-1].strip()
    assert command == ".venv/bin/obelisk demo"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "obelisk"), "demo", "--json"],
        cwd=tmp_path,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert '"verified": true' in result.stdout.replace('"verified":true', '"verified": true')
