"""Reusable test suites for obelisk ports: run them against your own adapters.

``EventStoreContract`` holds every behaviour the EventStore port promises, as pytest tests
(``BrokerContract`` does the same for the Broker port);
``DurableEventStoreContract`` adds close-and-reopen durability; ``run_store_state_machine``
checks a store against a plain Python model with hypothesis.

This package imports pytest, pytest-asyncio's marker and hypothesis, which are development
dependencies: ``import obelisk`` never imports ``obelisk.testing``, so applications that do
not test with it do not need them.
"""

from obelisk.testing._contract_base import ContractBase, check_append_run, check_log_positions
from obelisk.testing._events import (
    AliasRegistry,
    ContractDeposited,
    ContractNoted,
    ContractOpened,
    ContractRenamedV1,
    ContractRenamedV2,
)
from obelisk.testing.broker_contract import BrokerContract
from obelisk.testing.store_contract import DurableEventStoreContract, EventStoreContract
from obelisk.testing.store_state_machine import (
    DEFAULT_SETTINGS,
    EventStoreStateMachine,
    StoreFactory,
    run_store_state_machine,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "AliasRegistry",
    "BrokerContract",
    "ContractBase",
    "ContractDeposited",
    "ContractNoted",
    "ContractOpened",
    "ContractRenamedV1",
    "ContractRenamedV2",
    "DurableEventStoreContract",
    "EventStoreContract",
    "EventStoreStateMachine",
    "StoreFactory",
    "check_append_run",
    "check_log_positions",
    "run_store_state_machine",
]
