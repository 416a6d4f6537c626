"""Implementations of the `modelfleet` subcommands (imported only when one runs)."""
