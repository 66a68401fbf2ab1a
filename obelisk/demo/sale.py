"""``obelisk demo``: the flash-sale reference application (``examples/flashsale``) under a
simulated sale over real HTTP. The application lives beside the package in a source
checkout; this module finds it and hands over to ``examples.flashsale.demo``."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["find_examples", "run_sale_cli"]


def find_examples() -> Path | None:
    """The folder holding ``examples/flashsale``: the checkout obelisk runs from (never the
    current folder, whose ``examples`` would be imported and run)."""
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "examples" / "flashsale" / "__init__.py").is_file():
        return candidate
    return None


def run_sale_cli(
    *,
    clients: int,
    sections: int,
    seats: int,
    hold: float,
    duration: float,
    store: str | None,
    broker: str | None,
    json_output: bool,
) -> int:
    problems = [text for ok, text in (
        (clients >= 1, "--clients must be >= 1"), (sections >= 1, "--sections must be >= 1"),
        (seats >= 1, "--seats must be >= 1"), (hold > 0, "--hold must be > 0"),
        (duration > 0, "--duration must be > 0"),
    ) if not ok]  # fmt: skip
    root = find_examples()
    if root is None:
        problems.append("the demo runs the reference application in examples/flashsale: "
                        "run it from a source checkout (pip install -e .)")  # fmt: skip
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from examples.flashsale.demo import DemoOptions
        from examples.flashsale.demo import run_sale_cli as run
    except ImportError as exc:
        print(f"error: {exc} (install the application's dependencies: "
              f"pip install -e '.[app]')", file=sys.stderr)  # fmt: skip
        return 2
    options = DemoOptions(clients=clients, sections=sections, seats=seats, hold=hold,
                          duration=duration, store=store, broker=broker)  # fmt: skip
    return run(options, json_output=json_output)
