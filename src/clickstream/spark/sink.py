"""Micro-batches into PostgreSQL through the default engine's cleaning rules and writer.

Each micro-batch is cleaned by `clean_batch` and stored by the consumer's own write path
(COPY, `ON CONFLICT` on replay, an outage retried, a row the database refuses isolated and
dead-lettered), so both engines store the same rows. Duplicates are recognised by
`messageid`, never by Spark's batch or partition ids: a replayed micro-batch may be cut
differently and still changes nothing.

Two ways to write, one per deployment:
- `driver`: the batch is collected to the driver as Arrow and written in one transaction.
  Simplest and fastest on one machine (local mode).
- `tasks`: each task cleans and writes its own share in its own transaction (`mapInArrow`)
  and returns its counts. On a cluster the data never travels to the driver; a retried or
  speculative task writes nothing twice.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping

import pyarrow as pa

from clickstream.config import Settings
from clickstream.events import Kind, RawEvent, clean_batch
from clickstream.ingest import Ingestor, IngestStats

__all__ = ["BatchSink", "raw_events", "warm_up"]

log = logging.getLogger("clickstream.spark")

COLUMNS = ("topic", "partition", "offset", "value", "timestamp_ms")
_COUNTS = "consumed long, orders long, views long, order_lines long, dead_letters long,"
_COUNTS += " duplicates long, retries long"
_COUNT_FIELDS = [name.split()[0] for name in _COUNTS.split(",")]
# Test hook: SIGKILL the whole job right after this micro-batch's rows committed in
# PostgreSQL and before Spark recorded the batch as done (see tests/test_spark_engine.py).
CRASH_AFTER_BATCH = "_CLICKSTREAM_SPARK_CRASH_AFTER_BATCH"


def raw_events(table: pa.Table | pa.RecordBatch, kinds: Mapping[str, Kind]) -> list[RawEvent]:
    """Rows of the source's columns as the cleaning rules' input."""
    columns = [table.column(name).to_pylist() for name in COLUMNS]
    return [
        tuple.__new__(RawEvent, (kinds[topic], topic, partition, offset, value, stamp))
        for topic, partition, offset, value, stamp in zip(*columns, strict=True)
    ]


class BatchSink:
    """The `foreachBatch` function: one micro-batch in, its rows durable when it returns."""

    def __init__(self, settings: Settings, *, tasks: bool, stop) -> None:
        self.settings = settings
        self.tasks = tasks
        self.kinds = {
            settings.kafka_views_topic: Kind.VIEW,
            settings.kafka_orders_topic: Kind.ORDER,
        }
        # The consumer's write path: cleaning, COPY, retries, isolating a refused row.
        self._ingestor = Ingestor(settings, bootstrap="", stop=stop)
        self.stats: IngestStats = self._ingestor.stats
        self.last_rows_at: float | None = None
        self.busy = False
        self._crash_after = int(os.environ.get(CRASH_AFTER_BATCH, "0"))

    def __call__(self, frame, batch_id: int) -> None:
        self.busy = True
        try:
            if self.tasks:
                self._write_in_tasks(frame)
            else:
                self._write_on_driver(frame)
        finally:
            self.busy = False
        if self._crash_after and self.stats.batches >= self._crash_after:
            _kill_job()

    def _write_on_driver(self, frame) -> None:
        started = time.monotonic()
        table = frame.toArrow()
        read = time.monotonic()
        raw = raw_events(table, self.kinds)
        if not raw:
            return
        self.stats.consumed += len(raw)
        batch = clean_batch(
            raw,
            max_event_bytes=self.settings.ingest_max_event_bytes,
            rule=self.settings.event_time_rule,
        )
        cleaned = time.monotonic()
        self._ingestor._write_with_retry(raw, batch)
        self.last_rows_at = time.monotonic()  # idle time counts from the end of a batch
        log.debug(
            "micro-batch of %d events: read %.2fs, cleaned %.2fs, written %.2fs",
            len(raw),
            read - started,
            cleaned - read,
            self.last_rows_at - cleaned,
        )

    def _write_in_tasks(self, frame) -> None:
        settings, kinds = self.settings, self.kinds

        def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            yield write_share(settings, kinds, batches)

        shares = frame.mapInArrow(write, _COUNTS).collect()
        consumed = sum(share.consumed for share in shares)
        if not consumed:
            return
        self.last_rows_at = time.monotonic()  # idle time counts from the end of a batch
        stats = self.stats
        for share in shares:
            for name in _COUNT_FIELDS:
                setattr(stats, name, getattr(stats, name) + getattr(share, name))
        stats.batches += 1


_TASK_WRITERS: dict[str, Ingestor] = {}  # per Python worker: one connection, reused


def write_share(
    settings: Settings, kinds: Mapping[str, Kind], batches: Iterator[pa.RecordBatch]
) -> pa.RecordBatch:
    """Clean and store one task's rows in one transaction; return its counts."""
    raw = [event for batch in batches for event in raw_events(batch, kinds)]
    stats = IngestStats()
    if raw:
        ingestor = _TASK_WRITERS.get(str(settings.database_url))
        if ingestor is None:
            ingestor = _TASK_WRITERS[str(settings.database_url)] = Ingestor(settings, "")
        ingestor.stats = stats
        batch = clean_batch(
            raw, max_event_bytes=settings.ingest_max_event_bytes, rule=settings.event_time_rule
        )
        ingestor._write_with_retry(raw, batch)
        stats.consumed = len(raw)
    return pa.RecordBatch.from_pylist(
        [{name: getattr(stats, name) for name in _COUNT_FIELDS}],
        schema=pa.schema([(name, pa.int64()) for name in _COUNT_FIELDS]),
    )


def _kill_job() -> None:
    """SIGKILL the driver, its JVM and the Python workers (their process group, when ours)."""
    log.warning("%s: killing the Spark job now", CRASH_AFTER_BATCH)
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def warm_up(spark, *, tasks: bool) -> None:
    """Start the Python workers and import what the tasks need, before the first micro-batch.

    Otherwise the first micro-batch with data pays for it, seconds in local mode. The job
    has the sink's shape: a task that reads and writes runs two Python workers at once (the
    source's, the writer's); the driver collects as Arrow.
    """
    cores = spark.sparkContext.defaultParallelism

    def load(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import clickstream.spark.kafka_source  # noqa: F401  (confluent-kafka, pyarrow)
        import clickstream.spark.sink  # noqa: F401  (the cleaning rules, psycopg)

        yield from batches

    job = spark.range(cores, numPartitions=cores).mapInArrow(load, "id long")
    if tasks:
        job.mapInArrow(load, "id long").collect()
    else:
        job.toArrow()  # the driver's way in: its Arrow classes loaded too
