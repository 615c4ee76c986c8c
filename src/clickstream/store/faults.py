"""PostgreSQL errors become project errors here, by SQLSTATE: the one error policy.

Only a data or integrity error (SQLSTATE class 22 or 23) raised while events are written
says something about those events (`RejectedByDatabase`). Every other error says something
about the database (`DatabaseFault` and its subclasses, in `clickstream.errors`): a lost
connection, a missing privilege, a botched migration, a read-only server after a failover,
a deadlock, a timeout, a full disk. Each fault carries what the operator can do about it.

Like httpx's `map_exceptions`, `database_errors()` translates at the boundary, so no caller
catches driver exceptions itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from clickstream.errors import (
    DatabaseFault,
    DatabaseUnreachable,
    OutOfResources,
    PermissionDenied,
    ReadOnlyDatabase,
    RejectedByDatabase,
    SchemaMismatch,
    StatementTimeout,
    TransactionConflict,
)

__all__ = ["classify", "database_errors"]

_UNREACHABLE = "start the database or check database.url and the network; reconnecting"

# SQLSTATE (exact code or class) -> the fault and what the operator can do. `{role}` and
# `{privileges}` are filled in from the caller's context.
_FAULTS: dict[str, tuple[type[DatabaseFault], str]] = {
    "08": (DatabaseUnreachable, _UNREACHABLE),
    "57P01": (
        DatabaseUnreachable,
        "the server was shut down or the backend terminated; reconnecting",
    ),
    "57P02": (DatabaseUnreachable, "the server is in crash recovery; reconnecting"),
    "57P03": (DatabaseUnreachable, "the server is starting up or in recovery; reconnecting"),
    "42501": (PermissionDenied, "grant {privileges} on it to role {role}"),
    "42": (
        SchemaMismatch,
        "the schema differs from the one this version expects: undo the change or"
        " migrate the schema",
    ),
    "25006": (
        ReadOnlyDatabase,
        "the server is read-only (a standby after a failover, or default_transaction_read_only):"
        " point database.url at the primary or turn read-only off; reconnecting",
    ),
    "40": (TransactionConflict, "a concurrent transaction conflicted (deadlock or serialization)"),
    "57014": (
        StatementTimeout,
        "a statement exceeded statement_timeout or was canceled: look for long-held locks"
        " (pg_locks) or raise statement_timeout for role {role}",
    ),
    "55P03": (
        StatementTimeout,
        "a lock was not granted within lock_timeout: look for long-held locks (pg_locks)",
    ),
    "53300": (
        OutOfResources,
        "too many connections: raise max_connections or close idle sessions",
    ),
    "53100": (OutOfResources, "the database's disk is full: free space on the server"),
    "53": (OutOfResources, "the server is out of memory or resources: check its log"),
}

_OTHER = "unexpected database error: see the server log"


def classify(
    exc: BaseException,
    *,
    role: str | None = None,
    privileges: str = "SELECT",
    writing_events: bool = False,
) -> DatabaseFault | RejectedByDatabase:
    """The project error for a driver error.

    `writing_events`: the failed statement wrote events, so a data or integrity error is
    about their content; anywhere else (reports, the API, the catalog) it is a fault too.
    `privileges` are those the caller needs, named in the remedy of a permission error.
    """
    sqlstate = getattr(exc, "sqlstate", None)
    cause = _cause(exc)
    if sqlstate and sqlstate[:2] in ("22", "23") and writing_events:
        return RejectedByDatabase(cause, sqlstate)
    if not isinstance(exc, psycopg.Error) or sqlstate is None:
        # Errors without SQLSTATE: a failed connection attempt, a connection lost or
        # closed, a pool that has no connection to give (InterfaceError, OperationalError).
        return DatabaseUnreachable(cause, _UNREACHABLE, sqlstate)
    fault, remedy = _FAULTS.get(sqlstate) or _FAULTS.get(sqlstate[:2]) or (DatabaseFault, _OTHER)
    remedy = remedy.format(role=role or "(the user of database.url)", privileges=privileges)
    return fault(cause, f"{remedy} (SQLSTATE {sqlstate})", sqlstate)


@contextmanager
def database_errors(
    *, role: str | None = None, privileges: str = "SELECT", writing_events: bool = False
) -> Iterator[None]:
    """Translate the driver's errors raised inside into project errors (see `classify`)."""
    try:
        yield
    except psycopg.Error as exc:
        raise classify(
            exc, role=role, privileges=privileges, writing_events=writing_events
        ) from exc


def _cause(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = (primary or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
