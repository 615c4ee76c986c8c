"""Connections to PostgreSQL, with driver errors translated at the boundary."""

from __future__ import annotations

import psycopg

from clickstream.config import Settings
from clickstream.errors import Unavailable
from clickstream.services.embedded import database_url
from clickstream.store.schema import migrate

__all__ = ["connect", "is_outage"]


def is_outage(exc: BaseException) -> bool:
    """True when the database cannot be reached or cannot write now (retry, do not reject).

    OperationalError covers lost connections, shutdown, disk full and out of memory;
    InterfaceError a connection that is already closed.
    """
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def connect(settings: Settings, *, migrate_schema: bool = True, **kwargs) -> psycopg.Connection:
    """Open a connection, making sure the schema is current; raise Unavailable when down."""
    url = database_url(settings)
    try:
        conn = psycopg.connect(url, connect_timeout=10, **kwargs)
        if migrate_schema:
            migrate(conn)
            conn.commit()
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot reach the database: {str(exc).strip()}") from exc
    return conn
