"""Example applications built on obelisk."""
