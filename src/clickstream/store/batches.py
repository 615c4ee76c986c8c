"""The one way cleaned batches reach PostgreSQL, shared by both engines' consumers.

A `BatchStore` owns one connection and applies the error policy (store/faults.py): a fault
of the database is retried with capped backoff on a fresh connection, never dead-lettered;
a batch the database refuses for its content is searched for the events it refuses
(store/refusals.py). The default engine writes each batch in its own transaction; the Spark
engine's driver writes a micro-batch's chunks into one transaction, its tasks one share each.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import psycopg

from clickstream.config import Settings
from clickstream.errors import RejectedByDatabase, Unavailable
from clickstream.ingest.cleaning import CleanBatch, clean_batch
from clickstream.ingest.raw import RawEvent
from clickstream.store import offsets, schema
from clickstream.store.db import connect
from clickstream.store.erased import use_key
from clickstream.store.faults import database_errors
from clickstream.store.offsets import Marks
from clickstream.store.refusals import store_around_refusals
from clickstream.store.writer import WriteResult, write_batch
from clickstream.util.retry import retrying

__all__ = ["APPLICATION_NAME", "BatchStore", "clean"]

log = logging.getLogger("clickstream.consume")

T = TypeVar("T")

# What the consumers' database sessions are called in pg_stat_activity.
APPLICATION_NAME = "clickstream consume"

# What a consumer's role needs on the event tables, named in a permission error's remedy:
# UPDATE for the report counters and user_product_hours, which the ingest upserts.
_PRIVILEGES = "INSERT, SELECT, UPDATE"


def clean(settings: Settings, raw: list[RawEvent], now: datetime | None = None) -> CleanBatch:
    """The cleaning rules with these settings' limits, as every consumer applies them (`now`:
    when the records arrived, if not now)."""
    return clean_batch(
        raw,
        max_event_bytes=settings.ingest_max_event_bytes,
        now=now,
        rule=settings.event_time_rule,
    )


class BatchStore:
    """A consumer's connection and write path; `on_retry` hears of every retried fault."""

    def __init__(
        self,
        settings: Settings,
        *,
        stop: threading.Event,
        on_retry: Callable[[Unavailable], None] = lambda exc: None,
        connect_db: Callable[[], psycopg.Connection] | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.on_retry = on_retry
        # Reconnects do not look at the schema: a consumer's first start made it current.
        self._connect_db = connect_db or (
            lambda: connect(settings, check_schema=False, application_name=APPLICATION_NAME)
        )
        self.connection: psycopg.Connection | None = None
        # Hears of every connection `retrying` opens, before anything is written on it: the
        # server may be another one now (a failover), which may lack the last transactions.
        self.on_connect: Callable[[psycopg.Connection], None] = lambda conn: None

    def connect_and_migrate(self) -> None:
        """Connect, and bring the schema up to date where `database.auto_migrate` allows."""
        self.close()
        self.connection = self._connect_db()
        try:
            with database_errors(privileges="CREATE"):
                applied = schema.migrate_on_start(
                    self.connection, allowed=self.settings.database_auto_migrate
                )
        except BaseException:
            self.close()
            raise
        if applied:
            log.info("database schema: %s", schema.describe(applied))

    def store(
        self, raw: list[RawEvent], batch: CleanBatch, marks: Marks | None = None
    ) -> WriteResult:
        """Write one batch and its offsets (`marks`, else its records') in a transaction of
        its own, retrying every fault until it is in."""
        marks = marks or self.marks(raw)
        return self.retrying(lambda conn: self.write(raw, batch, marks))

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        """The database's offsets of this consumer group (store/offsets.py); a fault is
        retried as for a write."""
        group = self.settings.kafka_consumer_group

        def read(conn: psycopg.Connection) -> dict[tuple[str, int], int]:
            with self.errors():
                return offsets.read(conn, group)

        return self.retrying(read)

    def marks(self, raw: list[RawEvent]) -> Marks:
        """The offsets of these records, as this consumer group's write records them."""
        return Marks.of(self.settings.kafka_consumer_group, raw)

    def retrying(self, write: Callable[[psycopg.Connection], T]) -> T:
        """Run `write` on this store's connection until no fault stops it (a fresh connection
        after each); `write` commits what it writes, or nothing."""
        max_wait = self.settings.ingest_retry_max_seconds
        for attempt in retrying(log, "nothing committed", max_wait=max_wait, stop=self.stop):
            with attempt:
                try:
                    if self.connection is None or self.connection.closed:
                        self.connection = self._connect_db()
                        with self.errors():
                            self.on_connect(self.connection)
                    written = write(self.connection)
                except Unavailable as exc:
                    # A fresh connection on the next try: after a failover or a terminated
                    # backend, only a new session sees the server as it is now.
                    self.on_retry(exc)
                    self.close()
                    raise
        return written

    def write(
        self, raw: list[RawEvent], batch: CleanBatch, marks: Marks | None = None
    ) -> WriteResult:
        """Write the batch once (within `retrying`); if the database refuses its content,
        find the events it refuses. Inside an open transaction, the batch is a savepoint."""
        conn = self.connection
        assert conn is not None
        use_key(conn, self.settings.privacy_hash_key, self.settings.kinds)
        try:
            with self.errors(writing_events=True):
                return write_batch(conn, batch, marks)
        except RejectedByDatabase:
            pass
        with self.errors():
            return store_around_refusals(
                conn,
                raw,
                lambda events: clean(self.settings, events),
                self.settings.ingest_max_rejected_share,
                marks,
            )

    def errors(self, writing_events: bool = False):
        """The error policy's translation for this store's connection."""
        conn = self.connection
        role = conn.info.user if conn is not None and not conn.closed else None
        return database_errors(role=role, privileges=_PRIVILEGES, writing_events=writing_events)

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(psycopg.Error):
                self.connection.close()
            self.connection = None
