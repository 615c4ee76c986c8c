"""The stream consumer: Kafka batches in, cleaned rows and dead letters out, offsets last.

Order of work per batch: consume, clean, write (rows, dead letters and the batch's offsets
in one transaction), then commit the offsets to the Kafka group too, a copy for lag tools.
Where to read from is what the database says (resume.py), on every assignment and after
every reconnect: a crash, or a failover that lost transactions, only means batches are read
again, and the writer's ON CONFLICT makes that a no-op. The write of one batch
overlaps with reading and cleaning the next, on a single writer thread.

Errors follow one policy (store/faults.py, docs/concepts/exactly-once.md): a fault of the database
(unreachable, permission, schema, read-only, timeout, disk full...) is retried with capped
backoff and never dead-lettered; a batch the database refuses for its content (SQLSTATE class
22 or 23) is searched for the events it refuses, and only those are dead-lettered, unless
they are more than `ingest.max_rejected_share` of it, which is a fault again
(store/refusals.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from clickstream.config import Settings
from clickstream.errors import Unavailable
from clickstream.ingest.cleaning import CleanBatch
from clickstream.ingest.raw import RawEvent
from clickstream.ingest.resume import Resume
from clickstream.kafka.client import consumer_config, ensure_topics
from clickstream.kafka.lag import PartitionLag, consumer_lag, describe, known_lag
from clickstream.kafka.records import raw_event
from clickstream.kafka.security import Brokers, brokers
from clickstream.metrics import IngestMetrics
from clickstream.store.batches import BatchStore, clean
from clickstream.store.offsets import Marks
from clickstream.store.writer import WriteResult
from clickstream.util.retry import retrying

__all__ = ["COUNTS", "IngestStats", "Ingestor", "log_progress"]

log = logging.getLogger("clickstream.consume")

# How long a member with an empty assignment waits for a share before `--until-idle` stops it.
SPARE_MEMBER_SECONDS = 30.0


# IngestStats' plain counters, which add up across consumers.
COUNTS = (
    "consumed",
    "views",
    "order_lines",
    "orders",
    "dead_letters",
    "duplicates",
    "erased",
    "retries",
)


@dataclass
class IngestStats:
    """What this consumer did since it started.

    `replaced_times` counts the stored events whose own timestamp the event-time rule
    replaced by their record's, per (topic, cause): the counter a metric exports.
    """

    consumed: int = 0
    views: int = 0
    order_lines: int = 0
    orders: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    erased: int = 0  # events of erased users skipped (store/erased.py)
    batches: int = 0
    retries: int = 0
    replaced_times: Counter[tuple[str, str]] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def add(self, batch: CleanBatch, written: WriteResult) -> None:
        self.views += written.views
        self.order_lines += written.order_lines
        self.orders += batch.orders
        self.dead_letters += written.dead_letters
        self.duplicates += written.duplicates
        self.erased += written.erased_views + written.erased_orders
        self.batches += 1
        self.replaced_times.update(batch.replaced_times)

    def merge(self, other: IngestStats) -> None:
        """Add the counts of a share of this consumer's work (a Spark task's); its batches
        stay this consumer's own count."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.replaced_times.update(other.replaced_times)

    def replaced_times_text(self) -> str:
        """`3 event times replaced (ahead 2, missing 1)`, for the log and the summary."""
        by_cause: Counter[str] = Counter()
        for (_, cause), count in self.replaced_times.items():
            by_cause[cause] += count
        total = sum(by_cause.values())
        causes = ", ".join(f"{cause} {count:,}" for cause, count in sorted(by_cause.items()))
        return f"{total:,} event times replaced" + (f" ({causes})" if causes else "")


class Ingestor:
    """One member of the ingest consumer group. Run several to share the partitions."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: Brokers | str,
        *,
        stop: threading.Event | None = None,
        connect_db: Callable[[], psycopg.Connection] | None = None,
    ) -> None:
        self.settings = settings
        self.brokers = brokers(settings, bootstrap)
        self.stop = stop or threading.Event()
        self.stats = IngestStats()
        self.metrics = IngestMetrics(settings)
        self.store = BatchStore(
            settings, stop=self.stop, on_retry=self._on_retry, connect_db=connect_db
        )
        self.store.on_connect = self._reconnected
        self._resume = Resume(settings.kafka_consumer_group)
        self._kinds = settings.kinds
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="clickstream-writer")
        self._pending: Future | None = None
        self._pending_offsets: list[TopicPartition] = []
        self._consumer: Consumer | None = None
        self._last_activity = time.monotonic()
        self._assigned = False
        # True from the start until the group assigns partitions, and again from a revoke
        # to the next assignment: the member's share is undecided meanwhile.
        self._rebalancing = True
        self._next_drain_check = 0.0
        self._not_drained = ""

    @property
    def assigned(self) -> bool:
        """True once the group gave this member partitions (joining takes seconds)."""
        return self._assigned

    def lag(self) -> list[PartitionLag]:
        """Records not consumed yet on each partition this member owns (see kafka/lag.py).

        Empty when it owns none. Raises KafkaException when the broker cannot answer.
        """
        consumer = self._consumer
        return [] if consumer is None else consumer_lag(consumer)

    # -- Kafka side ---------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The database says where each partition resumes; Kafka's commit only where it has
        # no row. A database that is down is waited for, as for a write.
        self._finish_pending()
        self._resume.assign(consumer, partitions, self.store.stored_offsets())
        self._assigned = True
        self._rebalancing = False
        self._last_activity = time.monotonic()
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish and commit the batch in flight while we still own its partitions.
        self._rebalancing = True
        self._finish_pending()
        self._resume.revoke(partitions)
        log.info("revoked %s", _describe(partitions))

    def _raw_events(self, messages) -> list[RawEvent]:
        kinds = self._kinds
        return [event for m in messages if (event := raw_event(m, kinds)) is not None]

    def _finish_pending(self) -> None:
        """Wait for the batch in flight, then commit its offsets."""
        if self._pending is None:
            return
        pending, offsets = self._pending, self._pending_offsets
        self._pending, self._pending_offsets = None, []
        self._resume.stored(pending.result())  # re-raises what the writer could not handle
        if offsets and self._consumer is not None:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
                self.metrics.committed()
                self.metrics.consumer_lag_known(lambda: known_lag(self._consumer))
            except KafkaException as exc:
                # The rows are durable; a failed commit only means a harmless redelivery.
                log.warning("offset commit failed, the batch will be read again: %s", exc)

    # -- PostgreSQL side ----------------------------------------------------------------------

    def _on_retry(self, exc: Unavailable) -> None:
        self.stats.retries += 1
        self.metrics.retried(exc)

    def _reconnected(self, conn: psycopg.Connection) -> None:
        self._resume.reconnected(conn)

    def _store(self, raw: list[RawEvent], batch: CleanBatch, marks: Marks) -> Marks:
        started = time.monotonic()
        written = self.store.store(raw, batch, marks)
        self.stats.add(batch, written)
        self.metrics.batch_written(raw, batch, written, time.monotonic() - started)
        return marks

    # -- the loop -----------------------------------------------------------------------------

    def run(self, until_idle: float | None = None) -> IngestStats:
        """Consume until stopped, or until no event arrived for `until_idle` seconds."""
        ensure_topics(self.brokers, list(self._kinds), self.settings.kafka_partitions)
        settings = self.settings
        # A database that is down at start is a fault like any other: wait for it.
        for attempt in retrying(
            log, "nothing consumed yet", max_wait=settings.ingest_retry_max_seconds, stop=self.stop
        ):
            with attempt:
                self.store.connect_and_migrate()
        consumer = Consumer(
            consumer_config(
                self.brokers, settings.kafka_consumer_group, settings.kafka_session_timeout_ms
            )
        )
        self._consumer = consumer
        consumer.subscribe(list(self._kinds), on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info(
            "consuming %s from %s as group %s",
            ", ".join(self._kinds),
            self.brokers,
            settings.kafka_consumer_group,
        )
        self._last_activity = time.monotonic()
        next_log = time.monotonic() + settings.ingest_log_every_seconds
        last_logged = (0, time.monotonic())
        try:
            while not self.stop.is_set():
                messages = consumer.consume(
                    settings.ingest_batch_size, timeout=settings.ingest_batch_wait_ms / 1000
                )
                raw = self._raw_events(messages)
                now = time.monotonic()
                if raw:
                    self._last_activity = now
                    batch = clean(settings, raw)
                    self._finish_pending()
                    if not self._resume.rewind(consumer):  # else read again from the database's
                        self.stats.consumed += len(raw)
                        marks = self._resume.marks(raw)
                        self._pending = self._writer.submit(self._store, raw, batch, marks)
                        # Kafka's copy of the offsets: where each partition goes on.
                        self._pending_offsets = [
                            TopicPartition(topic, partition, after)
                            for (topic, partition), (_, after) in marks.ranges.items()
                        ]
                elif self._pending is not None and self._pending.done():
                    self._finish_pending()
                    self._resume.rewind(consumer)
                if now >= next_log:
                    last_logged = log_progress(self.stats, last_logged, self._lag())
                    next_log = now + settings.ingest_log_every_seconds
                idle_for = now - self._last_activity
                if until_idle is not None and idle_for >= until_idle and self._drained():
                    log.info("no new event for %.1fs and lag 0: drained, stopping", idle_for)
                    break
            self._finish_pending()
        finally:
            self._shutdown(consumer)
        return self.stats

    def _shutdown(self, consumer: Consumer) -> None:
        try:
            if self._pending is not None and not self._pending.done():
                self.stop.set()  # give up a retry loop; the batch stays uncommitted
            self._pending = None
            consumer.close()
        finally:
            self._writer.shutdown(wait=True)
            self.store.close()
            self._consumer = None

    def _lag(self) -> str:
        """Events on the broker not yet consumed, per topic, for the progress line; the
        same reading goes to the metrics (the broker is asked once)."""
        try:
            lags = self.lag()
        except KafkaException as exc:
            return f"unknown ({exc.args[0]})"  # the metrics keep their last reading
        self.metrics.consumer_lag(lags)
        return describe(lags)

    def _drained(self) -> bool:
        """True when nothing is in flight and the partitions this member owns have lag 0.

        Never in the middle of a rebalance: between a revoke and the next assignment the
        member's share is not known, so it cannot be drained. A member the group gave no
        partition waits SPARE_MEMBER_SECONDS for a share (Tansu can hand a dead member's
        partitions around late), then counts as drained: with more members than partitions it
        would otherwise never stop. The lag asks the group coordinator, so it is checked at
        most once a second.
        """
        if self._pending is not None:
            return False
        now = time.monotonic()
        if now < self._next_drain_check:
            return False
        self._next_drain_check = now + 1.0
        lags: list[PartitionLag] = []
        if self._rebalancing:
            why = "a rebalance is in progress"
        else:
            try:
                lags = self.lag()
                spare = now - self._last_activity >= SPARE_MEMBER_SECONDS
                why = "" if lags or spare else "no partitions are assigned to it (yet)"
            except KafkaException as exc:
                why = f"its lag is unknown ({exc.args[0]})"
        if not why and any(lag != 0 for *_, lag in lags):
            why = f"lag {describe(lags)}"
        if why and why != self._not_drained:
            log.info("idle but not drained: %s", why)
        self._not_drained = why
        return not why


def _describe(partitions: list[TopicPartition]) -> str:
    if not partitions:
        return "no partitions"
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return "; ".join(f"{t} {sorted(p)}" for t, p in sorted(by_topic.items()))


def log_progress(stats: IngestStats, last: tuple[int, float], lag: str) -> tuple[int, float]:
    """The progress line of both engines: the rate since `last` (consumed, when) and totals."""
    consumed, at = last
    now = time.monotonic()
    log.info(
        "%d events/s; stored %d views, %d order lines, %d dead letters, %d duplicates"
        " skipped, %d events of erased users skipped, %s; lag %s",
        (stats.consumed - consumed) / max(now - at, 1e-9),
        stats.views,
        stats.order_lines,
        stats.dead_letters,
        stats.duplicates,
        stats.erased,
        stats.replaced_times_text(),
        lag,
    )
    return stats.consumed, now
