"""The project's errors, grouped by what the caller should do about them.

Adapters translate driver and client errors into these at the boundary (the database's in
`clickstream.store.faults`), so the pipeline decides "retry" versus "dead-letter" versus
"tell the user" in one place:

- `Unavailable` and its subclasses are faults of the broker or the database, never of an
  event: the caller retries (`clickstream.util.retry`) and commits nothing meanwhile.
- `RejectedByDatabase` is the database refusing what one event contains: that event, and
  only that event, is dead-lettered.
- The rest (`ConfigError`, `UsageError`, `ServiceDown`) is for the user to fix.
"""

from __future__ import annotations

__all__ = [
    "ClickstreamError",
    "ConfigError",
    "DatabaseFault",
    "DatabaseUnreachable",
    "OutOfResources",
    "PermissionDenied",
    "ReadOnlyDatabase",
    "RejectedByDatabase",
    "SchemaMismatch",
    "SchemaOutOfDate",
    "ServiceDown",
    "StatementTimeout",
    "SystematicRefusal",
    "TransactionConflict",
    "Unavailable",
    "UsageError",
]


class ClickstreamError(Exception):
    """Base of every error the CLI turns into a one-line message."""


class UsageError(ClickstreamError):
    """A command was given arguments it cannot work with (exit code 2)."""


class ConfigError(UsageError):
    """A setting in config.yml or a CLICKSTREAM_* variable is unknown or has a bad value."""


class SchemaOutOfDate(ClickstreamError):
    """The database schema is older than this version needs: run `clickstream migrate`
    (exit code 2; only `migrate` and a consumer allowed to change the schema)."""


class ServiceDown(ClickstreamError):
    """An embedded service a command needs is not running: run `clickstream up`."""


class Unavailable(ClickstreamError):
    """The broker or the database cannot do the work right now: retry, never dead-letter."""

    #: Seconds an HTTP client should wait before asking again (the API's Retry-After).
    retry_after = 1


class DatabaseFault(Unavailable):
    """The database cannot take the work, for a reason of its own: retry, never dead-letter.

    `cause` is what the database said, `remedy` what an operator can do about it; the message
    is both, so one log line tells the whole story.
    """

    #: A few words for API clients, who get no server details.
    summary = "the database cannot serve this now"

    def __init__(self, cause: str, remedy: str, sqlstate: str | None = None) -> None:
        super().__init__(f"{cause}: {remedy}")
        self.cause = cause
        self.remedy = remedy
        self.sqlstate = sqlstate


class DatabaseUnreachable(DatabaseFault):
    """No connection, a lost one, or a server shutting down or restarting (class 08, 57P0x)."""

    summary = "the database cannot be reached"


class PermissionDenied(DatabaseFault):
    """The role lacks a privilege (42501)."""

    summary = "the database denies this role a privilege"
    retry_after = 10


class SchemaMismatch(DatabaseFault):
    """A table or column this version needs is missing or different (class 42)."""

    summary = "the database schema is not the one this version expects"
    retry_after = 10


class ReadOnlyDatabase(DatabaseFault):
    """The server only reads: a standby after a failover, or read-only by setting (25006)."""

    summary = "the database is read-only"
    retry_after = 5


class TransactionConflict(DatabaseFault):
    """A deadlock or serialization failure with a concurrent transaction (40P01, 40001)."""

    summary = "the database aborted a conflicting transaction"


class StatementTimeout(DatabaseFault):
    """A statement ran or waited for a lock past its timeout, or was canceled (57014, 55P03)."""

    summary = "a database statement timed out"
    retry_after = 5


class OutOfResources(DatabaseFault):
    """Disk full, out of memory, too many connections (class 53)."""

    summary = "the database is out of resources"
    retry_after = 10


class SystematicRefusal(DatabaseFault):
    """The database refuses a larger share of a batch than bad events explain: retry it whole."""

    summary = "the database refuses valid events"
    retry_after = 10


class RejectedByDatabase(ClickstreamError):
    """The database refuses the content of what was written (class 22 or 23).

    Only when a single event was written does this say something about that event.
    """

    def __init__(self, detail: str, sqlstate: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.sqlstate = sqlstate
