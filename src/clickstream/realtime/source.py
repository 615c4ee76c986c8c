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
to categories with the catalog in PostgreSQL, re-read every `CATALOG_REFRESH_SECONDS`; a
view keeps the category it had on arrival, and a product missing from the catalog is shown
as `NOT_IN_CATALOG`. When a reader fails, all of them restart from a fresh seek into a fresh
window, as on start.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import marshal
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from clickstream.config import Settings
from clickstream.errors import ClickstreamError
from clickstream.events import Kind, RawEvent, clean_batch
from clickstream.kafka.client import ensure_topics
from clickstream.kafka.logs import LOG as KAFKA_LOG
from clickstream.kafka.records import is_partition_eof, raw_event
from clickstream.process import tune_garbage_collector
from clickstream.realtime.window import SlidingWindow, Snapshot

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
    """Feeds one window from Kafka through reader processes; `state()` reads it at any time."""

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
        from clickstream.services.embedded import bootstrap_servers

        bootstrap = self._bootstrap or bootstrap_servers(self.settings)
        ensure_topics(bootstrap, [self.topic], self.settings.kafka_partitions)
        partitions = _partitions(bootstrap, self.topic)
        count = min(self.settings.realtime_readers, len(partitions))
        with self._lock:
            # A fresh window per generation: it is rebuilt from the seek, as on start.
            self.window = SlidingWindow(self.window.window_ms)
        self._caught_up.clear()
        since = self._clock() - self.window.window_ms - SEEK_MARGIN_MS
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        readers: list[tuple[multiprocessing.Process, Connection]] = []
        try:
            for index in range(count):
                receiver, sender = context.Pipe(duplex=False)
                share = _Share(
                    bootstrap,
                    self.topic,
                    tuple(partitions[index::count]),
                    since,
                    self.settings.ingest_max_event_bytes,
                )
                process = context.Process(
                    target=_read_share,
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
        category = self._catalog.get
        now = self._clock()
        views = [(m, u, category(p, NOT_IN_CATALOG), s, at) for m, u, p, s, at in live]
        if history:
            # Backlog older than the window is history the seek could not skip, not late.
            oldest = now - self.window.window_ms
            views += [
                (m, u, category(p, NOT_IN_CATALOG), s, at)
                for m, u, p, s, at in history
                if at > oldest
            ]
        if views:
            with self._lock:
                self.window.add(views, now)
        self.received += received


# -- a reader process -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Share:
    """What one reader process reads: its partitions, from `since_ms` on."""

    bootstrap: str
    topic: str
    partitions: tuple[int, ...]
    since_ms: int
    max_event_bytes: int


def _partitions(bootstrap: str, topic: str) -> list[int]:
    consumer = _consumer(bootstrap)
    try:
        found = consumer.list_topics(topic, timeout=10).topics.get(topic)
    finally:
        consumer.close()
    if found is None or found.error is not None or not found.partitions:
        raise ClickstreamError(f"topic {topic} has no partitions yet")
    return sorted(found.partitions)


def _consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "logger": KAFKA_LOG,
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


def _read_share(share: _Share, sender: Connection, stop) -> None:
    """A reader process: seek, then send ("views", live, history, received, caught up) per
    batch read; ("failed", why) ends it. It also ends when its parent is gone."""
    tune_garbage_collector()
    parent = multiprocessing.parent_process()
    try:
        consumer = _consumer(share.bootstrap)
        try:
            offsets, reread = _seek(consumer, share)
            sender.send_bytes(marshal.dumps(("assigned", offsets, reread)))
            behind = set(offsets)  # partitions that have not reached their end yet
            kinds = {share.topic: Kind.VIEW}
            while not stop.is_set() and (parent is None or parent.is_alive()):
                messages = consumer.consume(BATCH_SIZE, timeout=POLL_SECONDS)
                if not messages:
                    continue
                live: list[RawEvent] = []
                history: list[RawEvent] = []
                for message in messages:
                    event = raw_event(message, kinds)
                    if event is None:
                        if is_partition_eof(message):
                            behind.discard(message.partition())
                        continue
                    (history if event.partition in behind else live).append(event)
                batch = (
                    "views",
                    _rows(live, share.max_event_bytes),
                    _rows(history, share.max_event_bytes),
                    len(live) + len(history),
                    not behind,
                )
                sender.send_bytes(marshal.dumps(batch))
        finally:
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the parent is gone or stopping: nobody to tell
    except Exception as exc:  # sent to the parent, which logs it and restarts the readers
        with contextlib.suppress(OSError):
            sender.send_bytes(marshal.dumps(("failed", f"{type(exc).__name__}: {exc}")))


def _rows(raw: list[RawEvent], max_event_bytes: int) -> list[tuple]:
    if not raw:
        return []
    rows = clean_batch(raw, max_event_bytes=max_event_bytes).views
    seconds = _seconds_cache.get
    out = []
    append = out.append
    for messageid, userid, productid, source, at in rows:
        second = seconds(at[:19])
        at_ms = second * 1000 + int(at[20:23]) if second is not None else epoch_ms(at)
        append((messageid, userid, productid, source, at_ms))
    return out


def _seek(consumer: Consumer, share: _Share) -> tuple[dict[int, int], list[int]]:
    """Assign the share's partitions at `since_ms`; return the offsets, and the partitions
    read from their first offset because the broker's answer could not be confirmed."""
    wanted = [TopicPartition(share.topic, p, share.since_ms) for p in share.partitions]
    found = consumer.offsets_for_times(wanted, timeout=10)
    marks = {
        tp.partition: consumer.get_watermark_offsets(tp, timeout=10, cached=False) for tp in found
    }
    # -1: no record that recent, start at the end; clamp whatever else into the log.
    offsets = {
        tp.partition: min(
            max(tp.offset if tp.offset >= 0 else marks[tp.partition][1], marks[tp.partition][0]),
            marks[tp.partition][1],
        )
        for tp in found
    }
    reread = sorted(_unconfirmed(consumer, share, offsets, marks))
    for partition in reread:
        offsets[partition] = marks[partition][0]
    consumer.assign([TopicPartition(share.topic, p, o) for p, o in sorted(offsets.items())])
    return offsets, reread


def _unconfirmed(
    consumer: Consumer, share: _Share, offsets: dict[int, int], marks: dict
) -> set[int]:
    """Partitions whose answer is not confirmed by the record just before it.

    A real Kafka answers exactly; Tansu answers an offset that can skip recent records.
    The answer holds when the record before it is older than `since_ms`; otherwise (or
    when that record cannot be read) the partition is read from its first offset.
    """
    check = {p: o - 1 for p, o in offsets.items() if o > marks[p][0]}
    if not check:
        return set()
    consumer.assign([TopicPartition(share.topic, p, o) for p, o in check.items()])
    wrong: set[int] = set()
    deadline = time.monotonic() + 10
    try:
        while check and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.2):
                partition = message.partition()
                if message.error() is not None or check.get(partition) != message.offset():
                    continue
                del check[partition]
                if message.timestamp()[1] >= share.since_ms:
                    wrong.add(partition)
    finally:
        consumer.unassign()
    return wrong | set(check)
