"""Scratch databases: benchmarks never touch the real tables."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import make_conninfo

from clickstream.config import Settings
from clickstream.services.embedded import database_url
from clickstream.store.schema import migrate

__all__ = ["scratch_database"]


def scratch_database(settings: Settings, name: str) -> str:
    """Recreate a database `name` with the current schema on the configured server; return
    its URL.

    Each benchmark runs on the same server as the real tables, in a database of its own,
    dropped and created afresh each run.
    """
    server = database_url(settings)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(server, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    return url
