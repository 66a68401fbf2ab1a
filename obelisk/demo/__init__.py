"""The demo workload run by ``obelisk demo``."""
