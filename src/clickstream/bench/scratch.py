"""Scratch databases: benchmarks never touch the real tables."""

from __future__ import annotations

import dataclasses

import psycopg
from psycopg.conninfo import make_conninfo

from clickstream.config import Settings
from clickstream.services.embedded import database_url
from clickstream.store.schema import migrate

__all__ = ["scratch_database", "scratch_leg"]


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


def scratch_leg(settings: Settings, database: str, tag: str) -> Settings:
    """Settings for one leg of a benchmark: a fresh scratch database, and topics and a
    consumer group of its own named by `tag`, so that no leg inherits rows or offsets."""
    return dataclasses.replace(
        settings,
        database_url=scratch_database(settings, database),
        kafka_views_topic=f"bench-{tag}-views",
        kafka_orders_topic=f"bench-{tag}-orders",
        kafka_consumer_group=f"bench-{tag}",
    )
