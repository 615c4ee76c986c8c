"""Connections to PostgreSQL, with driver errors translated at the boundary."""

from __future__ import annotations

import psycopg
from psycopg import conninfo

from clickstream.config import Settings
from clickstream.services.embedded import database_url
from clickstream.store.faults import database_errors
from clickstream.store.schema import migrate

__all__ = ["connect", "role_of"]


def role_of(url: str) -> str | None:
    """The role a connection URL logs in as, for the remedies of permission errors."""
    try:
        return conninfo.conninfo_to_dict(url).get("user")
    except psycopg.ProgrammingError:
        return None


def connect(settings: Settings, *, migrate_schema: bool = True, **kwargs) -> psycopg.Connection:
    """Open a connection, making sure the schema is current.

    Raises a `DatabaseFault` (clickstream.errors) naming the cause and the remedy when the
    database cannot be reached or refuses.
    """
    url = database_url(settings)
    with database_errors(role=role_of(url)):
        conn = psycopg.connect(url, connect_timeout=10, **kwargs)
        try:
            if migrate_schema:
                migrate(conn)
                conn.commit()
        except BaseException:
            conn.close()
            raise
    return conn
