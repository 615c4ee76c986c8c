"""`clickstream consume --engine spark`: the consumer as a Spark Structured Streaming query.

The query reads both topics (the Python Kafka source, or Spark's own `kafka` source when
`spark.source` is `kafka`), and a `foreachBatch` sink cleans and stores each micro-batch
with the default engine's rules and writer. Spark's checkpoint under `spark.checkpoint_dir`
holds the offsets: a micro-batch that was stored but not recorded as done is replayed after
a crash, and the writer's `ON CONFLICT` makes that replay store nothing. Where the database
has stored less than the checkpoint says (a failover, a restore), the Python source reads
again from the database's offsets (spark/resume.py).

Stopping: Spark's streaming thread must not be interrupted inside a Python `foreachBatch`,
so the query is stopped between micro-batches. The Python source admits no new data once
asked to (a stop file) and acknowledges it from the planning step; a micro-batch planned
before that has then finished, and `query.stop()` interrupts nothing. A micro-batch that
does not finish within `_STOP_GRACE` (its writes retrying a database outage, in the driver
or in tasks on other machines) has its Spark jobs cancelled: nothing of it is recorded as
done, and the next start reads it again (what it had stored stays, and is a duplicate).
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from clickstream.config import Settings
from clickstream.errors import Unavailable
from clickstream.ingest.consumer import IngestStats, log_progress
from clickstream.kafka.client import ensure_topics
from clickstream.kafka.security import Brokers, brokers, java_client_options
from clickstream.spark.resume import save_stored
from clickstream.spark.sink import BatchSink, warm_up

__all__ = ["SparkIngestor", "checkpoint_dir"]

log = logging.getLogger("clickstream.spark")

_POLL = 0.1  # seconds between looks at the running query
_STOP_GRACE = 15.0  # seconds a running micro-batch may take to finish once a stop is asked


def checkpoint_dir(settings: Settings) -> str:
    """Where the query's checkpoint lives: one per consumer group (a path or a URL)."""
    base = settings.spark_checkpoint_dir
    if not base:
        return str(settings.data_dir / "spark-checkpoints" / settings.kafka_consumer_group)
    if "://" not in base:
        base = str(Path(base).expanduser())
    return f"{base.rstrip('/')}/{settings.kafka_consumer_group}"


class SparkIngestor:
    """The consumer on Spark: same input, same rows, same summary as `Ingestor`."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: Brokers | str,
        *,
        master: str | None = None,
        stop: threading.Event | None = None,
        spark=None,
    ) -> None:
        self.settings = settings
        self.brokers = brokers(settings, bootstrap)
        self.master = master or settings.spark_master
        self.stop = stop or threading.Event()
        self._spark = spark
        self.sink = BatchSink(settings, tasks=False, stop=self.stop)
        self.ready_at: float | None = None  # when the query finished its first trigger

    @property
    def stats(self) -> IngestStats:
        return self.sink.stats

    def run(self, until_idle: float | None = None) -> IngestStats:
        """Consume until stopped, or until no event arrived for `until_idle` seconds."""
        settings = self.settings
        started = time.monotonic()
        spark = self._session()
        master = spark.sparkContext.master  # under spark-submit, spark-submit's
        self.sink.tasks = settings.spark_sink != "driver"  # auto: tasks (docs/performance.md)
        checkpoint = checkpoint_dir(settings)
        with (
            ThreadPoolExecutor(1, thread_name_prefix="spark-warm-up") as pool,
            tempfile.TemporaryDirectory(prefix="clickstream-spark-") as scratch,
        ):
            # The first micro-batch with data would otherwise pay for starting the Python
            # workers: they start while the query is defined and plans its first trigger.
            warm = pool.submit(warm_up, spark, tasks=self.sink.tasks)
            stop_file = str(Path(scratch) / "stop")
            if settings.spark_source == "python":  # Spark's own source cannot rewind
                self.sink.rewind_file = str(Path(scratch) / "stored-offsets.json")
                save_stored(self.sink.store, self.sink.rewind_file)
            query = (
                self._stream(spark, stop_file)
                .writeStream.foreachBatch(self.sink)
                .option("checkpointLocation", checkpoint)
                .trigger(processingTime=f"{settings.ingest_batch_wait_ms} milliseconds")
                .start()
            )
            log.info(
                "consuming %s from %s on Spark %s (%s source, writes in %s), checkpoint %s",
                ", ".join(settings.topics),
                self.brokers,
                master,
                settings.spark_source,
                "tasks" if self.sink.tasks else "the driver",
                checkpoint,
            )
            try:
                warm.result()
                log.debug("Python workers warm %.1fs after start", time.monotonic() - started)
                self._watch(query, until_idle)
            finally:
                self._stop_between_batches(spark, query, stop_file)
                self.sink.store.close()
        return self.stats

    def _session(self):
        """The SparkSession, its JVM started while the topics and the schema are checked."""
        from clickstream.spark.session import spark_session

        settings = self.settings
        with ThreadPoolExecutor(1, thread_name_prefix="spark-start") as pool:
            session = pool.submit(spark_session, self.master) if self._spark is None else None
            ensure_topics(self.brokers, list(settings.topics), settings.kafka_partitions)
            # The schema is current before any task writes: migrated here, as the default
            # engine does on first start, when allowed and the role may.
            self.sink.store.connect_and_migrate()
            return self._spark or session.result()

    def _stream(self, spark, stop_file: str):
        """Both topics as rows of (topic, partition, offset, value, timestamp_ms)."""
        settings = self.settings
        kinds = settings.kinds
        if settings.spark_source == "kafka":
            reader = (
                spark.readStream.format("kafka")
                .option("kafka.bootstrap.servers", self.brokers.bootstrap)
                .option("subscribe", ",".join(kinds))
                .option("startingOffsets", "earliest")
                .option("failOnDataLoss", "false")
                .option("maxOffsetsPerTrigger", str(settings.spark_max_batch_events))
            )
            for name, value in java_client_options(settings).items():
                reader = reader.option(f"kafka.{name}", value)
            return reader.load().selectExpr(
                "topic",
                "partition",
                "offset",
                "value",
                "CAST(unix_millis(timestamp) AS BIGINT) AS timestamp_ms",
            )
        from clickstream.spark.kafka_source import NAME, PROPERTY_PREFIX, KafkaSource

        spark.dataSource.register(KafkaSource)
        reader = (
            spark.readStream.format(NAME)
            .option("bootstrap.servers", self.brokers.bootstrap)
            .option("topics", json.dumps(kinds))
            .option("group.id", settings.kafka_consumer_group)
            .option("max_events", str(settings.spark_max_batch_events))
            .option("stop_file", stop_file)
            .option("rewind_file", self.sink.rewind_file or "")
        )
        # One option per property: Spark redacts the values of options named like a password
        # or a secret in the plans and logs it prints.
        for name, value in self.brokers.properties.items():
            reader = reader.option(f"{PROPERTY_PREFIX}{name}", value)
        return reader.load()

    def _watch(self, query, until_idle: float | None) -> None:
        settings = self.settings
        committer = (
            _OffsetCommitter(self.brokers, settings) if settings.spark_commit_offsets else None
        )
        next_log = time.monotonic() + settings.ingest_log_every_seconds
        last_logged = (0, time.monotonic())
        logged_batch = None
        try:
            while not self.stop.wait(_POLL):
                if not query.isActive:
                    error = query.exception()
                    cause = str(error).strip().splitlines()[0] if error else "no error given"
                    raise Unavailable(f"the Spark query stopped: {cause}")
                progress = query.lastProgress
                now = time.monotonic()
                if progress is not None and self.ready_at is None:
                    self.ready_at = now
                    log.info("Spark query running: first trigger done")
                if progress is not None and progress["batchId"] != logged_batch:
                    logged_batch = progress["batchId"]
                    if progress["numInputRows"]:
                        log.debug(
                            "micro-batch %d: %d rows, Spark's phases (ms) %s",
                            logged_batch,
                            progress["numInputRows"],
                            progress["durationMs"],
                        )
                if committer is not None and progress is not None:
                    committer.commit(progress)
                if now >= next_log:
                    last_logged = log_progress(self.stats, last_logged, _lag(progress))
                    next_log = now + settings.ingest_log_every_seconds
                if until_idle is not None and self.ready_at is not None and not self.sink.busy:
                    idle_for = now - max(self.ready_at, self.sink.last_rows_at or 0)
                    # Idle and caught up: nothing on the broker past the last micro-batch.
                    if idle_for >= until_idle and not any(_behind(progress).values()):
                        log.info("no new event for %.1fs: drained, stopping", idle_for)
                        return
        finally:
            if committer is not None:
                committer.commit(query.lastProgress)
                committer.close()

    def _stop_between_batches(self, spark, query, stop_file: str) -> None:
        """Stop once no micro-batch is running and none can start (see the module's notes)."""
        if not query.isActive:
            return
        deadline = time.monotonic() + _STOP_GRACE
        if self.settings.spark_source == "kafka":
            # Spark's own source cannot be told to admit nothing: wait for a quiet moment.
            def running() -> bool:
                return self.sink.busy or query.status["isTriggerActive"]
        else:
            Path(stop_file).touch()
            ack = Path(stop_file + ".ack")

            def running() -> bool:
                return not ack.exists()

        while query.isActive and running():
            if time.monotonic() >= deadline and self.sink.busy:
                self._cancel_micro_batch(spark, query)
                break
            time.sleep(_POLL)
        query.stop()
        log.info("Spark query stopped")

    def _cancel_micro_batch(self, spark, query) -> None:
        """Cancel the running micro-batch's jobs (Spark runs them in the group of the query's
        run id); its failure ends the query, and nothing of it is recorded as done."""
        log.warning(
            "stopping: the micro-batch still running %.0fs after the stop (a fault being"
            " retried?) is cancelled; the next start reads it again",
            _STOP_GRACE,
        )
        spark.sparkContext.cancelJobGroup(str(query.runId))
        deadline = time.monotonic() + _STOP_GRACE
        while query.isActive and self.sink.busy and time.monotonic() < deadline:
            time.sleep(_POLL)


def _offsets(text: str | None) -> dict[str, dict[str, int]]:
    """Offsets from Spark's progress JSON; a source that reports none gives `null`."""
    return (json.loads(text) if text else None) or {}


def _behind(progress) -> dict[str, int]:
    """Records on the broker past the last micro-batch, per topic; empty when unknown."""
    if not progress or not progress.get("sources"):
        return {}
    source = progress["sources"][0]
    end, latest = _offsets(source.get("endOffset")), _offsets(source.get("latestOffset"))
    return {
        topic: sum(max(high - end.get(topic, {}).get(p, 0), 0) for p, high in parts.items())
        for topic, parts in latest.items()
    }


def _lag(progress) -> str:
    per_topic = _behind(progress)
    if not per_topic:
        return "unknown"
    return ", ".join(f"{topic} {count}" for topic, count in sorted(per_topic.items()))


class _OffsetCommitter:
    """Commit what Spark finished to the consumer group, so the usual lag tools see progress.

    Spark's checkpoint stays the source of truth; a brand-new query starts from these.
    """

    def __init__(self, brokers: Brokers, settings: Settings) -> None:
        self._consumer = Consumer(
            brokers.config(
                **{"group.id": settings.kafka_consumer_group, "enable.auto.commit": False}
            )
        )
        self._committed: str | None = None

    def commit(self, progress) -> None:
        if not progress or not progress.get("sources"):
            return
        end = progress["sources"][0].get("endOffset")
        if not end or end == self._committed:
            return
        offsets = [
            TopicPartition(topic, int(partition), offset)
            for topic, partitions in _offsets(end).items()
            for partition, offset in partitions.items()
        ]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
            self._committed = end
        except KafkaException as exc:
            log.warning("committing offsets to the consumer group failed: %s", exc)

    def close(self) -> None:
        self._consumer.close()
