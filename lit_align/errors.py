"""Errors every layer raises: the lowest module of the package, importing nothing of it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration problem, reported in one line without a traceback."""
