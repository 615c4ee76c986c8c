"""The live view's Kafka source: the views topic straight into a `SlidingWindow`.

It reads every partition itself (assigned, not subscribed: no consumer group, no commits),
so any number of servers can each hold the whole window. On start it seeks to "now minus
the window" by record timestamp, so a restart is right at once without waiting a window.
The seek is only a shortcut: Tansu does not answer `offsets_for_times` exactly (the earliest
offset, or one past recent records, which the record just before it exposes), and a record's
timestamp need not match its event time, so the window's event-time rule is what decides.
Records read before a partition first reaches its end (the backlog) that are older than the
window are skipped, not counted as late: they were not late, they are history.

Events are cleaned with the consumer's own rules (`clean_batch`); what it rejects is simply
not shown (the ingest dead-letters it). Products are mapped to categories with the catalog
in PostgreSQL, re-read every `CATALOG_REFRESH_SECONDS`; a view keeps the category it had on
arrival, and a product missing from the catalog is shown as `NOT_IN_CATALOG`.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from clickstream.config import Settings
from clickstream.errors import ClickstreamError
from clickstream.events import Kind, RawEvent, clean_batch
from clickstream.kafka.client import ensure_topics
from clickstream.kafka.records import is_partition_eof, raw_event
from clickstream.realtime.window import SlidingWindow, Snapshot, View

__all__ = [
    "CATALOG_REFRESH_SECONDS",
    "NOT_IN_CATALOG",
    "LiveState",
    "RealtimeSource",
    "epoch_ms",
]

log = logging.getLogger("clickstream.realtime")

NOT_IN_CATALOG = "(not in catalog)"
CATALOG_REFRESH_SECONDS = 30.0
# Seek a little before the window: a record's timestamp may trail its event time.
SEEK_MARGIN_MS = 60_000
BATCH_SIZE = 10_000
POLL_SECONDS = 0.05

_seconds_cache: dict[str, int] = {}


def epoch_ms(stamp: str) -> int:
    """`2026-11-24T13:00:00.123Z` (the one format `clean_batch` emits) in epoch milliseconds.

    The whole-second part is parsed once per second of event time, not once per event.
    """
    head = stamp[:19]
    seconds = _seconds_cache.get(head)
    if seconds is None:
        if len(_seconds_cache) > 4096:
            _seconds_cache.clear()
        seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        _seconds_cache[head] = seconds
    return seconds * 1000 + int(stamp[20:23])


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
    """Feeds a window from Kafka on a background thread; `state()` reads it at any time."""

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: str | None = None,
        clock: Callable[[], int] = _now_ms,
        catalog_refresh_seconds: float = CATALOG_REFRESH_SECONDS,
    ) -> None:
        self.settings = settings
        self.topic = settings.kafka_views_topic
        self.window = SlidingWindow(settings.realtime_window_seconds * 1000)
        self.received = 0
        self._bootstrap = bootstrap
        self._clock = clock
        self._catalog: dict[str, str] = {}
        self._catalog_refresh = catalog_refresh_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._behind: set[int] = set()  # partitions that have not reached their end yet
        self._caught_up = threading.Event()
        self._connected = False

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> RealtimeSource:
        """Start reading in the background; returns at once (`wait_caught_up` to wait)."""
        for name, target in (("catalog", self._catalog_loop), ("reader", self._reader_loop)):
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

    def state(self) -> LiveState:
        with self._lock:
            snapshot = self.window.snapshot(self._clock())
        return LiveState(snapshot, not self._caught_up.is_set(), self._connected, self.received)

    # -- the catalog ----------------------------------------------------------------------------

    def _catalog_loop(self) -> None:
        while not self._stop.is_set():
            loaded = self._load_catalog()
            self._stop.wait(self._catalog_refresh if loaded else min(self._catalog_refresh, 2))

    def _load_catalog(self) -> bool:
        from clickstream.services.embedded import database_url

        try:
            with psycopg.connect(database_url(self.settings), connect_timeout=5) as conn:
                rows = conn.execute("SELECT productid, categoryid FROM products").fetchall()
        except (psycopg.Error, ClickstreamError) as exc:
            log.warning(
                "cannot read the catalog, keeping %d products: %s",
                len(self._catalog),
                str(exc).strip().splitlines()[0] if str(exc).strip() else exc,
            )
            return False
        self._catalog = dict(rows)
        return True

    # -- Kafka --------------------------------------------------------------------------------

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

    def _consumer(self, bootstrap: str) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": bootstrap,
                # librdkafka wants a group id even for assigned partitions; nothing is committed.
                "group.id": f"clickstream-realtime-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                # "reached the end" events: how we know the backlog was read (Tansu's high
                # watermarks lag behind, so comparing offsets with them would stop short).
                "enable.partition.eof": True,
            }
        )

    def _seek(self, consumer: Consumer) -> None:
        """Assign every partition at "now minus the window"."""
        metadata = consumer.list_topics(self.topic, timeout=10)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise ClickstreamError(f"topic {self.topic} has no partitions yet")
        since = self._clock() - self.window.window_ms - SEEK_MARGIN_MS
        wanted = [TopicPartition(self.topic, p, since) for p in sorted(topic.partitions)]
        found = consumer.offsets_for_times(wanted, timeout=10)
        marks = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            for tp in found
        }
        # -1: no record that recent, start at the end; clamp whatever else into the log.
        offsets = {
            tp.partition: min(
                max(
                    tp.offset if tp.offset >= 0 else marks[tp.partition][1], marks[tp.partition][0]
                ),
                marks[tp.partition][1],
            )
            for tp in found
        }
        for partition in self._unconfirmed(consumer, offsets, marks, since):
            offsets[partition] = marks[partition][0]
        self._behind = set(offsets)
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())])
        log.info(
            "live view reads %s from offsets %s",
            self.topic,
            ", ".join(f"{p}:{o}" for p, o in sorted(offsets.items())),
        )

    def _unconfirmed(
        self, consumer: Consumer, offsets: dict[int, int], marks: dict, since: int
    ) -> set[int]:
        """Partitions whose answer is not confirmed by the record just before it.

        A real Kafka answers exactly; Tansu answers an offset that can skip recent records.
        The answer holds when the record before it is older than `since`; otherwise (or
        when that record cannot be read) the partition is read from its first offset.
        """
        check = {p: o - 1 for p, o in offsets.items() if o > marks[p][0]}
        if not check:
            return set()
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in check.items()])
        wrong: set[int] = set()
        deadline = time.monotonic() + 10
        try:
            while check and time.monotonic() < deadline:
                for message in consumer.consume(1000, timeout=0.2):
                    partition = message.partition()
                    if message.error() is not None or check.get(partition) != message.offset():
                        continue
                    del check[partition]
                    if message.timestamp()[1] >= since:
                        wrong.add(partition)
        finally:
            consumer.unassign()
        if wrong:
            log.info(
                "the broker's offsets for a time skip recent records on partitions %s:"
                " reading them from their first offset",
                sorted(wrong),
            )
        return wrong | set(check)

    def _read(self) -> None:
        from clickstream.services.embedded import bootstrap_servers

        bootstrap = self._bootstrap or bootstrap_servers(self.settings)
        ensure_topics(bootstrap, [self.topic], self.settings.kafka_partitions)
        consumer = self._consumer(bootstrap)
        try:
            with self._lock:
                # A fresh window per (re)connection: it is rebuilt from the seek, as on start.
                self.window = SlidingWindow(self.window.window_ms)
            self._caught_up.clear()
            self._seek(consumer)
            self._connected = True
            while not self._stop.is_set():
                messages = consumer.consume(BATCH_SIZE, timeout=POLL_SECONDS)
                if messages:
                    self._take(messages)
        finally:
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()

    def _take(self, messages: list) -> None:
        kinds = {self.topic: Kind.VIEW}
        behind = self._behind
        live: list[RawEvent] = []
        history: list[RawEvent] = []
        for message in messages:
            event = raw_event(message, kinds)
            if event is None:
                if is_partition_eof(message):
                    behind.discard(message.partition())
                continue
            (history if event.partition in behind else live).append(event)
        now = self._clock()
        views = self._views(live)
        if history:
            # Backlog older than the window is history the seek could not skip, not late.
            oldest = now - self.window.window_ms
            views.extend(v for v in self._views(history) if v[4] > oldest)
        if views:
            with self._lock:
                self.window.add(views, now)
        self.received += len(live) + len(history)
        if not behind and not self._caught_up.is_set():
            self._caught_up.set()
            log.info("live view caught up: %d events read since the start", self.received)

    def _views(self, raw: list[RawEvent]) -> list[View]:
        if not raw:
            return []
        rows = clean_batch(raw, max_event_bytes=self.settings.ingest_max_event_bytes).views
        category = self._catalog.get
        seconds = _seconds_cache.get
        views = []
        append = views.append
        for messageid, userid, productid, source, at in rows:
            second = seconds(at[:19])
            at_ms = second * 1000 + int(at[20:23]) if second is not None else epoch_ms(at)
            append((messageid, userid, category(productid, NOT_IN_CATALOG), source, at_ms))
        return views
