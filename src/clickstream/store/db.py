"""Connections to PostgreSQL, with driver errors translated at the boundary."""

from __future__ import annotations

import psycopg
from psycopg import conninfo

from clickstream.config import Settings
from clickstream.services.embedded import database_url
from clickstream.store.faults import database_errors
from clickstream.store.schema import require_current

__all__ = ["connect", "role_of"]


def role_of(url: str) -> str | None:
    """The role a connection URL logs in as, for the remedies of permission errors."""
    try:
        return conninfo.conninfo_to_dict(url).get("user")
    except psycopg.ProgrammingError:
        return None


def connect(settings: Settings, *, check_schema: bool = True, **kwargs) -> psycopg.Connection:
    """Open a connection; it never changes the schema (`clickstream migrate` does).

    With `check_schema` it raises SchemaOutOfDate when the schema is older than this
    version's. Raises a `DatabaseFault` (clickstream.errors) naming the cause and the remedy
    when the database cannot be reached or refuses (e.g. SELECT on schema_migrations).
    """
    url = database_url(settings)
    with database_errors(role=role_of(url)):
        conn = psycopg.connect(url, connect_timeout=10, **kwargs)
        try:
            if check_schema:
                require_current(conn)
        except BaseException:
            conn.close()
            raise
    return conn
