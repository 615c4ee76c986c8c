"""The live view's Kafka source: the views topic, read by processes, into one `SlidingWindow`.

Cleaning a view costs more than everything else the window does with it, and one interpreter
cleans about 120,000 views a second: less than a producer at full speed sends. So reading is
split by partition over `realtime.readers` processes. Each assigns its share of the
partitions itself (assigned, not subscribed: no consumer group, no commits, so any number of
servers can each hold the whole window), seeks, reads, cleans with the consumer's own rules
(`clean_batch`) and sends this process only what the window needs; this process keeps the
one window, maps products to categories and answers snapshots.

On start the readers seek to "now minus the window" by record timestamp, so a restart is
right at once without waiting a window. The seek is only a shortcut: Tansu does not answer
`offsets_for_times` exactly (the earliest offset, or one past recent records, which the
record just before it exposes), and a record's timestamp need not match its event time, so
the window's event-time rule is what decides. Records read before a partition first reaches
its end (the backlog) that are older than the window are skipped, not counted as late: they
were not late, they are history.

What cleaning rejects is simply not shown (the ingest dead-letters it). Products are mapped
to categories when a snapshot is taken, with the catalog in PostgreSQL as `DatabaseWatch`
last read it (at once after `catalog load`, and every `CATALOG_REFRESH_SECONDS`); a product
missing from the catalog is shown as `NOT_IN_CATALOG`. A user erased by `forget-user` is
taken out of the window as soon as the erasure is read, and views of theirs up to the
erasure read again later (a restart re-reads the topic) are not shown: the erasure keeps a
keyed hash of the id, which this process computes for the ids it sees (`privacy.hash_key`).
When a reader fails, all of them restart from a fresh seek into a fresh window, as on start.
"""

from __future__ import annotations

import logging
import marshal
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from operator import itemgetter

from confluent_kafka import KafkaException

from clickstream.config import Settings
from clickstream.errors import ClickstreamError
from clickstream.kafka.client import ensure_topics
from clickstream.kafka.security import Brokers, brokers
from clickstream.lifecycle.privacy import user_hash
from clickstream.metrics import LiveReading
from clickstream.realtime.readers import POLL_SECONDS, Share, read_share
from clickstream.realtime.readers import partitions as topic_partitions
from clickstream.realtime.watch import DatabaseWatch, Erased
from clickstream.realtime.window import SlidingWindow, Snapshot

__all__ = [
    "CATALOG_REFRESH_SECONDS",
    "NOT_IN_CATALOG",
    "LiveState",
    "RealtimeSource",
]

log = logging.getLogger("clickstream.realtime")

NOT_IN_CATALOG = "(not in catalog)"
CATALOG_REFRESH_SECONDS = 30.0
# Seek a little before the window: a record's timestamp may trail its event time.
SEEK_MARGIN_MS = 60_000
_AT = itemgetter(4)  # a reader's row: (messageid, userid, productid, source, at_ms)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class LiveState:
    """A snapshot plus what the source knows about itself."""

    snapshot: Snapshot
    catching_up: bool
    connected: bool
    received: int


class RealtimeSource:
    """Feeds one window from Kafka through reader processes; `state()` reads it at any time."""

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: Brokers | str | None = None,
        clock: Callable[[], int] = _now_ms,
        catalog_refresh_seconds: float = CATALOG_REFRESH_SECONDS,
    ) -> None:
        self.settings = settings
        self.topic = settings.kafka_views_topic
        self.window = self._fresh_window()
        self.received = 0
        self.newest_ms: int | None = None  # the newest event time the readers delivered
        self._bootstrap = bootstrap
        self._clock = clock
        self._catalog: dict[str, str] = {}
        self._catalog_refresh = catalog_refresh_seconds
        self._erased: dict[str, int] = {}  # user hash -> erasure time (ms), recent ones
        self._hashes: dict[str, str] = {}  # user id -> its keyed hash, computed once
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._caught_up = threading.Event()
        self._connected = False

    def _fresh_window(self) -> SlidingWindow:
        """A window whose tolerance ahead of this server's clock is the event-time rule's."""
        return SlidingWindow(
            self.settings.realtime_window_seconds * 1000,
            max_skew_ms=self.settings.event_time_rule.max_ahead_ms,
        )

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> RealtimeSource:
        """Start reading in the background; returns at once (`wait_caught_up` to wait)."""
        watch = DatabaseWatch(
            self.settings,
            on_catalog=self._set_catalog,
            on_erasures=self._erase,
            erasures_since_ms=lambda: self._clock() - self.window.window_ms,
            catalog_refresh_seconds=self._catalog_refresh,
        )
        for name, target in (
            ("database", lambda: watch.run(self._stop)),
            ("reader", self._reader_loop),
        ):
            thread = threading.Thread(target=target, name=f"clickstream-realtime-{name}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._threads.clear()

    def __enter__(self) -> RealtimeSource:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_caught_up(self, timeout: float) -> bool:
        """True once everything that was on the broker at start has been read."""
        return self._caught_up.wait(timeout)

    def reading(self) -> LiveReading:
        """The counts the metrics report, without building a snapshot."""
        with self._lock:
            window = self.window
            window.advance(self._clock())
            counts = (len(window), window.late, window.future, window.duplicates)
        catching_up = not self._caught_up.is_set()
        return LiveReading(*counts, catching_up, self.received, self.newest_ms)

    def state(self) -> LiveState:
        catalog = self._catalog
        with self._lock:
            snapshot = self.window.snapshot(
                self._clock(), lambda product: catalog.get(product, NOT_IN_CATALOG)
            )
        return LiveState(snapshot, not self._caught_up.is_set(), self._connected, self.received)

    # -- what the database says: the catalog, erasures -----------------------------------------

    def _set_catalog(self, catalog: dict[str, str]) -> None:
        self._catalog = catalog

    def _hash(self, userid: str) -> str:
        hashed = self._hashes.get(userid)
        if hashed is None:
            if len(self._hashes) > 200_000:
                self._hashes.clear()
            hashed = self._hashes[userid] = user_hash(self.settings.privacy_hash_key, userid)
        return hashed

    def _erase(self, erasures: list[Erased]) -> None:
        """Take the erased users out of the window; remember the erasures that views read
        later could still fall under (those less than a window old)."""
        if not self.settings.privacy_hash_key:
            log.warning(
                "%d users were erased, but privacy.hash_key is not set for this server: the"
                " live view cannot recognise them",
                len(erasures),
            )
            return
        with self._lock:
            oldest = self._clock() - self.window.window_ms
            erased = {h: at for h, at in self._erased.items() if at > oldest}
            for hashed, at in erasures:
                erased[hashed] = max(at, erased.get(hashed, at))
            self._erased = {h: at for h, at in erased.items() if at > oldest}
            for user in self.window.users:
                until = erased.get(self._hash(user))
                if until is not None:
                    removed = self.window.forget({user}, until)
                    log.info("erased user taken out of the live view (%d views)", removed)

    def _not_erased(self, views: list) -> list:
        erased, hashed = self._erased, self._hash
        return [v for v in views if v[4] > erased.get(hashed(v[1]), v[4] - 1)]

    # -- the readers ----------------------------------------------------------------------------

    def _reader_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._read()
                return
            except (KafkaException, ClickstreamError) as exc:
                log.warning(
                    "live view cannot read %s (%s); retrying in %.1fs", self.topic, exc, delay
                )
            except Exception:
                # Keep the view alive whatever happened; the log has the traceback.
                log.exception("live view reader failed; restarting it in %.1fs", delay)
            self._connected = False
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def _read(self) -> None:
        """Run one generation of reader processes until stopped; raise when one fails."""
        address = brokers(self.settings, self._bootstrap)  # the embedded one may have moved
        ensure_topics(address, [self.topic], self.settings.kafka_partitions)
        partitions = topic_partitions(address, self.topic)
        count = min(self.settings.realtime_readers, len(partitions))
        with self._lock:
            # A fresh window per generation: it is rebuilt from the seek, as on start.
            self.window = self._fresh_window()
        self._caught_up.clear()
        since = self._clock() - self.window.window_ms - SEEK_MARGIN_MS
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        readers: list[tuple[multiprocessing.Process, Connection]] = []
        try:
            for index in range(count):
                receiver, sender = context.Pipe(duplex=False)
                share = Share(
                    address,
                    self.topic,
                    tuple(partitions[index::count]),
                    since,
                    self.settings.ingest_max_event_bytes,
                    self.settings.event_time_rule,
                )
                process = context.Process(
                    target=read_share,
                    args=(share, sender, stop),
                    name=f"clickstream-realtime-reader-{index}",
                    daemon=True,
                )
                process.start()
                sender.close()
                readers.append((process, receiver))
            self._follow([receiver for _, receiver in readers], len(partitions))
        finally:
            stop.set()
            for process, receiver in readers:
                process.join(5)
                if process.is_alive():
                    process.kill()
                receiver.close()

    def _follow(self, receivers: list[Connection], partitions: int) -> None:
        """Feed the window with what the readers send, until stopped."""
        offsets: dict[int, int] = {}
        behind = set(receivers)  # readers not caught up yet
        while not self._stop.is_set():
            for receiver in wait(receivers, timeout=POLL_SECONDS):
                try:
                    message = marshal.loads(receiver.recv_bytes())
                except EOFError:
                    raise ClickstreamError("a reader process stopped") from None
                kind = message[0]
                if kind == "views":
                    _, live, history, received, caught_up = message
                    self._take(live, history, received)
                    if caught_up and receiver in behind:
                        behind.discard(receiver)
                        if not behind:
                            self._caught_up.set()
                            log.info(
                                "live view caught up: %d events read since the start",
                                self.received,
                            )
                elif kind == "assigned":
                    offsets.update(message[1])
                    if message[2]:
                        log.info(
                            "the broker's offsets for a time skip recent records on partitions"
                            " %s: reading them from their first offset",
                            message[2],
                        )
                    if len(offsets) == partitions:
                        self._connected = True
                        log.info(
                            "live view reads %s from offsets %s (%d reader processes)",
                            self.topic,
                            ", ".join(f"{p}:{o}" for p, o in sorted(offsets.items())),
                            len(receivers),
                        )
                else:
                    raise ClickstreamError(message[1])

    def _take(self, live: list, history: list, received: int) -> None:
        """Place the readers' rows (messageid, userid, productid, source, at_ms)."""
        now = self._clock()
        views = live
        if live:
            newest = max(map(_AT, live))
            if self.newest_ms is None or newest > self.newest_ms:
                self.newest_ms = newest
        if history:
            # Backlog older than the window is history the seek could not skip, not late.
            oldest = now - self.window.window_ms
            views = live + [row for row in history if row[4] > oldest]
        if views:
            with self._lock:
                if self._erased:
                    if max(self._erased.values()) <= now - self.window.window_ms:
                        self._erased = {}  # older than the window: nothing left to hide
                    else:
                        views = self._not_erased(views)
                self.window.add(views, now)
        self.received += received
