"""The project's errors, grouped by what the caller should do about them.

Adapters translate driver and client errors into these at the boundary, so the pipeline
decides "retry" versus "dead-letter" versus "tell the user" in one place.
"""

from __future__ import annotations

__all__ = [
    "ClickstreamError",
    "ConfigError",
    "ServiceDown",
    "Unavailable",
    "UsageError",
]


class ClickstreamError(Exception):
    """Base of every error the CLI turns into a one-line message."""


class ConfigError(ClickstreamError):
    """A setting in config.yml or a CLICKSTREAM_* variable has a bad value."""


class UsageError(ClickstreamError):
    """A command was given arguments it cannot work with (exit code 2)."""


class ServiceDown(ClickstreamError):
    """An embedded service a command needs is not running: run `clickstream up`."""


class Unavailable(ClickstreamError):
    """The broker or the database cannot be reached right now: retry, never dead-letter."""
