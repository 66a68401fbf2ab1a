"""The Broker contract: one suite every broker adapter must pass.

Subclass :class:`BrokerContract` in a module pytest collects, name the class ``Test...``
and implement ``create_broker``::

    from obelisk.testing import BrokerContract

    class TestMyBroker(BrokerContract):
        async def create_broker(self):
            broker = MyBroker(SERVER_URL)
            await broker.open()
            return broker

Every call of ``create_broker`` within a test must reach the same backend (a second broker
object stands for a restarted publisher); tests use topics of their own and delete them,
so one server can serve the whole session. An adapter that can append an entry obelisk did
not write overrides ``inject_raw`` to run the malformed-entry test; ``ack_timeout`` sets
how long the redelivery tests wait for a redelivery (keep it short, but above the adapter's
resolution).

Every async test carries ``pytest.mark.asyncio``, so the suite runs under pytest-asyncio
in strict or auto mode. This module imports pytest (a dev dependency); ``import obelisk``
does not import it.
"""

from __future__ import annotations

from obelisk.testing._broker_contract_groups import GroupContract
from obelisk.testing._broker_contract_publish import PublishContract

__all__ = ["BrokerContract"]


class BrokerContract(PublishContract, GroupContract):
    """Every behaviour of the Broker port, as tests; see the module docstring."""
