"""The flash-sale reference application: sections with a fixed stock, reservations that
expire unless paid, payment and e-mail workers, cached availability over HTTP and a live
dashboard.

``app`` is the ASGI application (Litestar); it reads where to run from ``OBELISK_STORE``,
``OBELISK_BROKER``, ``OBELISK_REDIS`` ... when it starts (see
:class:`examples.flashsale.service.Settings`)::

    obelisk serve examples.flashsale:app --store postgresql://... --broker redis://... -w 2
"""

from examples.flashsale.edge import EdgeCache
from examples.flashsale.http import create_app

__all__ = ["app", "create_app"]

# Cached availability is answered at the edge, before Litestar routes the request.
app = EdgeCache(create_app())
