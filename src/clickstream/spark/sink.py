"""Micro-batches into PostgreSQL through the default engine's cleaning rules and writer.

Each micro-batch is cleaned by `clean_batch` and stored by the consumer's own write path
(COPY, `ON CONFLICT` on replay, an outage retried, a row the database refuses isolated and
dead-lettered), so both engines store the same rows. Duplicates are recognised by
`messageid`, never by Spark's batch or partition ids: a replayed micro-batch may be cut
differently and still changes nothing.

Two ways to write, one per deployment, through pyspark's public API only:
- `driver`: the batch is collected to the driver as Arrow (`toArrow`) and written in one
  transaction. Simplest on one machine (local mode). Cleaning and writing overlap: each
  chunk of Arrow rows is cleaned and handed to a writer thread that writes it into the
  micro-batch's open transaction while the next is cleaned; the transaction commits once
  the last chunk is in, so the micro-batch stays all or nothing.
- `tasks`: each task cleans and writes its own share in its own transaction (`mapInArrow`)
  and returns its counts. On a cluster the data never travels to the driver; a retried or
  speculative task writes nothing twice. The transaction also records the share's counts
  (`spark_task_shares`), so a task retried after its first attempt committed (its executor
  died before Spark heard of it) reports what that attempt stored: the summary and the
  metrics count each share once, whichever attempt Spark keeps.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pyarrow as pa

from clickstream.config import Settings
from clickstream.ingest.cleaning import CleanBatch
from clickstream.ingest.consumer import COUNTS, IngestStats
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.metrics import IngestMetrics, records_and_newest, retry_cause
from clickstream.spark.resume import save_stored
from clickstream.store.batches import BatchStore, clean
from clickstream.store.writer import NOTHING_WRITTEN, WriteResult

__all__ = ["BatchSink", "Chunks", "arrow_batches", "raw_events", "warm_up"]

log = logging.getLogger("clickstream.spark")

COLUMNS = ("topic", "partition", "offset", "value", "timestamp_ms")
# What a task reports of its share: its counts and what metrics count (JSON, see write_share).
_SHARE = "share string"
_SHARE_SCHEMA = pa.schema([("share", pa.string())])


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
        self.kinds = settings.kinds
        self.stats = IngestStats()
        self.metrics = IngestMetrics(settings)
        # The consumers' write path: COPY, retries, isolating a refused row.
        self.store = BatchStore(settings, stop=stop, on_retry=self._on_retry)
        self.last_rows_at: float | None = None
        self.busy = False
        # Names this run's shares in spark_task_shares: a replay after a restart is a new run.
        self.run = uuid.uuid4().hex
        # Where the database's offsets go after each micro-batch, for the source to rewind
        # to (spark/resume.py); set by the engine.
        self.rewind_file: str | None = None

    def _on_retry(self, exc) -> None:
        self.stats.retries += 1
        self.metrics.retried(exc)

    def __call__(self, frame, batch_id: int) -> None:
        self.busy = True
        try:
            if self.tasks:
                self._write_in_tasks(frame, batch_id)
            else:
                self._write_on_driver(frame)
            if self.rewind_file:
                save_stored(self.store, self.rewind_file)
        finally:
            self.busy = False

    def _write_on_driver(self, frame) -> None:
        started = time.monotonic()
        chunks, written = write_streamed(self.store, self.kinds, arrow_batches(frame))
        raw, batch = chunks.raw, chunks.batch
        if not raw:
            return
        self.stats.consumed += len(raw)
        self.stats.add(batch, written)
        self.last_rows_at = time.monotonic()  # idle time counts from the end of a batch
        self.metrics.batch_written(raw, batch, written, self.last_rows_at - started)
        log.debug(
            "micro-batch of %d events: read and cleaned %.2fs, written %.2fs later,"
            " %d writes in its transaction",
            len(raw),
            chunks.read_at - started,
            self.last_rows_at - chunks.read_at,
            chunks.writes,
        )

    def _write_in_tasks(self, frame, batch_id: int) -> None:
        settings, kinds, share = self.settings, self.kinds, (self.run, batch_id)

        def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            yield write_share(settings, kinds, share, batches)

        consumed = 0
        for (text,) in frame.mapInArrow(write, _SHARE).collect():
            report = json.loads(text)
            self._count_share(report)
            consumed += report["stats"]["consumed"]
        if consumed:
            self.last_rows_at = time.monotonic()  # idle time counts from the end of a batch
            self.stats.batches += 1
            self.store.retrying(lambda conn: _forget_shares(self.store, conn, share))

    def _count_share(self, report: dict) -> None:
        """Count what a task did in this process's stats and metrics, as if the driver had."""
        replaced = Counter({(topic, cause): n for topic, cause, n in report["replaced_times"]})
        self.stats.merge(IngestStats(**report["stats"], replaced_times=replaced))
        for cause in report["retries"]:
            self.metrics.retried_for(cause)
        if "written" in report:
            *counts, reasons = report["written"]
            written = WriteResult(*counts, tuple(map(tuple, reasons)))
            self.metrics.share_written(
                report["records"], report["newest"], written, report["seconds"]
            )


_TASK_STORES: dict[str, BatchStore] = {}  # per Python worker: one connection, reused


def write_share(
    settings: Settings,
    kinds: Mapping[str, Kind],
    share: tuple[str, int],
    batches: Iterator[pa.RecordBatch],
) -> pa.RecordBatch:
    """Clean and store one task's rows in one transaction; return its counts.

    The rows are gathered first and written at once, unlike the driver's: the counters are
    hot rows that every task's transaction updates, so a transaction open while its task
    still reads would hold their locks and make the other tasks wait (measured: slower).
    `share` is (run, micro-batch): with the share's first record it names the report that
    the transaction records, which a later attempt of the same task returns instead.
    """
    raw = [event for batch in batches for event in raw_events(batch, kinds)]
    store = _TASK_STORES.get(str(settings.database_url))
    if store is None:
        store = BatchStore(settings, stop=threading.Event())
        _TASK_STORES[str(settings.database_url)] = store
    retries: list[str] = []
    store.on_retry = lambda exc: retries.append(retry_cause(exc))
    if raw:
        batch = clean(settings, raw)
        first = raw[0]
        key = (*share, first.topic, first.partition, first.offset)
        text = store.retrying(lambda conn: _write_once(store, key, raw, batch))
    else:
        text = _report(settings, raw, None, None, 0.0)
    report = json.loads(text)
    report["retries"] += retries  # this attempt's own, whichever attempt stored the share
    report["stats"]["retries"] += len(retries)
    return pa.RecordBatch.from_pylist([{"share": json.dumps(report)}], _SHARE_SCHEMA)


def _write_once(store: BatchStore, key: tuple, raw: list[RawEvent], batch: CleanBatch) -> str:
    """The share's rows and its report in one transaction, or the report an earlier attempt
    of this task committed (its rows are in: writing them again would count duplicates)."""
    conn = store.connection
    assert conn is not None
    with store.errors():
        try:
            with conn.transaction():
                found = conn.execute(_SHARE_REPORT, key).fetchone()
                if found is not None:
                    return found[0]
                started = time.monotonic()
                written = store.write(raw, batch, store.marks(raw))
                text = _report(store.settings, raw, batch, written, time.monotonic() - started)
                if conn.execute(_RECORD_SHARE, (*key, text)).fetchone() is None:
                    raise _Lost  # a concurrent attempt recorded it first: ours rolls back
                return text
        except _Lost:
            with conn.transaction():
                return conn.execute(_SHARE_REPORT, key).fetchone()[0]


_SHARE_REPORT = (
    "SELECT report FROM spark_task_shares"
    ' WHERE run = %s AND batch = %s AND topic = %s AND "partition" = %s AND first_offset = %s'
)
_RECORD_SHARE = (
    'INSERT INTO spark_task_shares (run, batch, topic, "partition", first_offset, report)'
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1"
)


class _Lost(Exception):
    """Another attempt of the same task recorded its share first."""


def _report(
    settings: Settings,
    raw: list[RawEvent],
    batch: CleanBatch | None,
    written: WriteResult | None,
    seconds: float,
) -> str:
    """A share's counts, and what the driver's metrics count of it, as JSON."""
    stats = IngestStats()
    report: dict = {"retries": []}
    if batch is not None and written is not None:
        stats.add(batch, written)
        stats.consumed = len(raw)
        if settings.ingest_metrics_port:  # only the driver's metrics read these
            records, newest = records_and_newest(raw, batch, written)
            report |= {"records": records, "newest": newest, "written": written, "seconds": seconds}
    report["stats"] = {name: getattr(stats, name) for name in COUNTS}
    report["replaced_times"] = [[*key, n] for key, n in stats.replaced_times.items()]
    return json.dumps(report)


def _forget_shares(
    store: BatchStore, conn: psycopg.Connection, share: tuple[str, int]
) -> WriteResult:
    """The driver has a micro-batch's counts: its shares' reports are no longer needed (nor
    those a crashed run left behind). A fault here (a failover) is retried like a write's."""
    with store.errors(), conn.transaction():
        conn.execute(
            "DELETE FROM spark_task_shares WHERE (run = %s AND batch <= %s)"
            " OR written_at < now() - interval '1 day'",
            share,
        )
    return NOTHING_WRITTEN


def write_streamed(
    store: BatchStore, kinds: Mapping[str, Kind], batches: Iterator[pa.RecordBatch]
) -> tuple[Chunks, WriteResult]:
    """Store Arrow batches of records in one transaction, cleaning each as it comes while a
    writer thread writes those before it: reading, cleaning and writing overlap."""
    chunks = Chunks()
    with ThreadPoolExecutor(1, thread_name_prefix="clickstream-chunks") as pool:
        writing = pool.submit(store.retrying, chunks.write_all(store))
        try:
            for rows in batches:
                raw = raw_events(rows, kinds)
                chunks.put(raw, clean(store.settings, raw))
        except BaseException:
            chunks.abort()  # the writer rolls back whatever it wrote of them
            raise
        chunks.end()
        chunks.read_at = time.monotonic()
        return chunks, writing.result()


def arrow_batches(frame) -> Iterator[pa.RecordBatch]:
    """The frame's rows as Arrow record batches (`toArrow`, public since pyspark 4.0).

    The whole micro-batch is on the driver before the first batch is cleaned: streaming it
    partition by partition took pyspark's private collect internals, which change between
    releases and do not exist under Spark Connect.
    """
    for rows in frame.toArrow().to_batches():
        if rows.num_rows:
            yield rows


class _Aborted(Exception):
    """The micro-batch could not be read whole: nothing of it may commit."""


class Chunks:
    """A micro-batch's cleaned chunks, from the reading thread to the writing one.

    The writer writes what has arrived, all of it at once (fewer, larger writes when it
    falls behind), each write a savepoint of the one transaction. After a fault the retry
    writes the chunks received so far again, in a new transaction, and goes on.
    """

    _END, _ABORT = object(), object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._received: list[tuple[list[RawEvent], CleanBatch]] = []
        self._ended = False
        self.writes = 0
        self.read_at = 0.0  # when the last chunk was in

    def put(self, raw: list[RawEvent], batch: CleanBatch) -> None:
        self._queue.put((raw, batch))

    def end(self) -> None:
        self._queue.put(self._END)

    def abort(self) -> None:
        self._queue.put(self._ABORT)

    def write_all(self, store: BatchStore):
        """The function `BatchStore.retrying` runs: every chunk, in one transaction."""

        def write(conn: psycopg.Connection) -> WriteResult:
            self.writes = 0
            written = NOTHING_WRITTEN
            chunks = self._chunks()
            first = next(chunks, None)  # an empty micro-batch opens no transaction
            if first is None:
                return written
            with store.errors(), conn.transaction():
                for raw, batch in itertools.chain([first], chunks):
                    written = written.plus(store.write(raw, batch))
                    self.writes += 1
                with conn.cursor() as cur:  # the micro-batch's offsets, in its transaction
                    store.marks(self.raw).record(cur)
            return written

        return write

    def _chunks(self) -> Iterator[tuple[list[RawEvent], CleanBatch]]:
        yield from list(self._received)
        while not self._ended:
            items = [self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get())
            if any(item is self._ABORT for item in items):
                raise _Aborted("the micro-batch was not read whole")
            self._ended = items[-1] is self._END
            chunks = [item for item in items if item is not self._END]
            if chunks:
                self._received.append(_merged(chunks))
                yield self._received[-1]

    @property
    def raw(self) -> list[RawEvent]:
        return [event for raw, _ in self._received for event in raw]

    @property
    def batch(self) -> CleanBatch:
        return _merged(self._received)[1]


def _merged(chunks: list[tuple[list[RawEvent], CleanBatch]]) -> tuple[list[RawEvent], CleanBatch]:
    """Chunks as one: cleaning is per event, so this is what cleaning them together gives."""
    if len(chunks) == 1:
        return chunks[0]
    merged = CleanBatch()
    raw: list[RawEvent] = []
    for events, batch in chunks:
        raw += events
        merged.views += batch.views
        merged.order_lines += batch.order_lines
        merged.rejects += batch.rejects
        merged.orders += batch.orders
        merged.replaced_times.update(batch.replaced_times)
    return raw, merged


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
