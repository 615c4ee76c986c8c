"""What the live view learns from PostgreSQL: the catalog, and the users erased.

One thread per server process holds one connection that LISTENs on two channels:
`catalog load` notifies `clickstream_catalog` and `forget-user` notifies
`clickstream_erasures` when they commit, and the thread reads what changed at once. It also
reads again by itself, the catalog every `catalog_refresh_seconds` and new erasures every
`POLL_SECONDS`, which covers a notice sent while it was reconnecting and a catalog edited in
SQL by hand. Erasures are read by id, so none is missed or read twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import psycopg

from clickstream.config import Settings
from clickstream.errors import ClickstreamError
from clickstream.store.catalog import CHANNEL as CATALOG_CHANNEL
from clickstream.store.erasure import CHANNEL as ERASURE_CHANNEL

__all__ = ["POLL_SECONDS", "DatabaseWatch", "Erased"]

log = logging.getLogger("clickstream.realtime")

POLL_SECONDS = 5.0
# Erasures after a point (a time or an id), with their time in epoch milliseconds.
_ERASURES = (
    "SELECT id, user_hash, (extract(epoch FROM erased_at) * 1000)::bigint"
    " FROM erasures WHERE {} ORDER BY id"
)


class Erased(NamedTuple):
    """An erasure as the live view needs it: the user's keyed hash and when, in epoch ms."""

    user_hash: str
    at_ms: int


class DatabaseWatch:
    """Calls `on_catalog(mapping)` and `on_erasures(list)` whenever either changes."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_catalog: Callable[[dict[str, str]], None],
        on_erasures: Callable[[list[Erased]], None],
        erasures_since_ms: Callable[[], int],
        catalog_refresh_seconds: float,
    ) -> None:
        self.settings = settings
        self._on_catalog = on_catalog
        self._on_erasures = on_erasures
        self._since_ms = erasures_since_ms
        self._refresh = catalog_refresh_seconds
        self._last_erasure: int | None = None
        self.catalog_size = 0

    def run(self, stop: threading.Event) -> None:
        """Follow the database until `stop`; reconnect after an outage."""
        from clickstream.services.embedded import database_url

        delay = 0.5
        while not stop.is_set():
            try:
                url = database_url(self.settings)
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CATALOG_CHANNEL}")
                    conn.execute(f"LISTEN {ERASURE_CHANNEL}")
                    delay = 0.5
                    self._follow(conn, stop)
            except (psycopg.Error, ClickstreamError) as exc:
                log.warning(
                    "live view cannot read the catalog and erasures (keeping %d products): %s",
                    self.catalog_size,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                )
            stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def _follow(self, conn: psycopg.Connection, stop: threading.Event) -> None:
        self._read_catalog(conn)
        self._read_erasures(conn)
        next_catalog = time.monotonic() + self._refresh
        next_erasures = time.monotonic() + POLL_SECONDS
        while not stop.is_set():
            # Short waits: a stop request is seen within half a second.
            channels = {notice.channel for notice in conn.notifies(timeout=0.5, stop_after=1)}
            now = time.monotonic()
            if CATALOG_CHANNEL in channels or now >= next_catalog:
                self._read_catalog(conn)
                next_catalog = now + self._refresh
            if ERASURE_CHANNEL in channels or now >= next_erasures:
                self._read_erasures(conn)
                next_erasures = now + POLL_SECONDS

    def _read_catalog(self, conn: psycopg.Connection) -> None:
        rows = conn.execute("SELECT productid, categoryid FROM products").fetchall()
        self.catalog_size = len(rows)
        self._on_catalog(dict(rows))

    def _read_erasures(self, conn: psycopg.Connection) -> None:
        try:
            if self._last_erasure is None:
                (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM erasures").fetchone()
                since = "erased_at > to_timestamp(%s / 1000.0)"
                rows = conn.execute(_ERASURES.format(since), (self._since_ms(),)).fetchall()
                self._last_erasure = last
            else:
                rows = conn.execute(_ERASURES.format("id > %s"), (self._last_erasure,)).fetchall()
        except psycopg.errors.UndefinedTable:
            return  # a database not migrated yet has erased nobody
        if rows:
            self._last_erasure = max(self._last_erasure, rows[-1][0])
            self._on_erasures([Erased(user_hash, at) for _, user_hash, at in rows])
