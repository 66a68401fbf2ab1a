"""``python -m obelisk``: the ``obelisk`` command."""

from obelisk.cli import main

main()
