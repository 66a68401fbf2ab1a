"""The flash sale as deployed (``examples.flashsale:app``) with one collaborator broken:
section availability raises. Served by ``obelisk serve`` in
test_flashsale_errors_logged.py, to see what a 500 leaves in the server's log."""

from __future__ import annotations

from typing import NoReturn

from examples.flashsale import app
from examples.flashsale.service import FlashSale

__all__ = ["app"]


async def _broken(self: FlashSale, section_id: str) -> NoReturn:
    raise KeyError("the read model lost a column")


FlashSale.availability = _broken  # type: ignore[method-assign]
