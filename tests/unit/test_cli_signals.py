"""The obelisk command hears SIGINT even when started as a background job of a script."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as bash does for `cmd &` in a script
import obelisk.cli
print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_importing_the_cli_restores_an_ignored_sigint() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "True"
