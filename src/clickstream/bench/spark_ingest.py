"""`clickstream bench ingest --engine spark`: the Spark engine against the default one.

Both engines ingest the same generated views, each into fresh topics and a scratch database
of its own, timed from the first send at max speed until the last row is committed:

  python: the default engine, its consumer group in separate processes (as `bench ingest`);
  spark:  `consume --engine spark` on the chosen master, started and ready (its first trigger
          done) before the producer starts; how long that took is its start-up.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
import uuid
from dataclasses import dataclass

from clickstream.bench.full_path import (
    delete_topics,
    produce_on_signal,
    time_full_path,
    wait_stored,
)
from clickstream.bench.scratch import scratch_leg
from clickstream.config import Settings
from clickstream.generate import view_lines
from clickstream.kafka.security import Brokers, brokers

__all__ = ["SparkIngestFigures", "run_spark_ingest_benchmark"]

SCRATCH_PYTHON = "clickstream_bench"
SCRATCH_SPARK = "clickstream_bench_spark"


@dataclass(frozen=True)
class SparkIngestFigures:
    events: int
    spark_seconds: float
    python_seconds: float
    startup_seconds: float
    first_rows_seconds: float

    @property
    def spark_rate(self) -> float:
        return self.events / self.spark_seconds

    @property
    def python_rate(self) -> float:
        return self.events / self.python_seconds

    @property
    def ratio(self) -> float:
        return self.spark_rate / self.python_rate


def run_spark_ingest_benchmark(
    settings: Settings, *, events: int, seed: int, consumers: int, master: str | None
) -> SparkIngestFigures:
    from clickstream.spark.session import check_prerequisites

    check_prerequisites()
    bootstrap = brokers(settings)
    run = uuid.uuid4().hex[:8]
    started = time.monotonic()
    lines = view_lines(events, seed=seed)
    print(f"generated {len(lines):,} views in {time.monotonic() - started:.1f}s")

    python = scratch_leg(settings, SCRATCH_PYTHON, f"python-{run}")
    try:
        python_seconds, _ = time_full_path(python, bootstrap, lines, consumers, metrics=False)
    finally:
        delete_topics(bootstrap, list(python.topics))
    print(
        f"python: {events:,} events in {python_seconds:.2f}s"
        f" = {events / python_seconds:,.0f} events/s ({consumers} consumer processes)"
    )

    spark = dataclasses.replace(
        scratch_leg(settings, SCRATCH_SPARK, f"spark-{run}"),
        spark_checkpoint_dir=str(settings.data_dir / "bench-spark-checkpoints"),
    )
    try:
        timings = _spark_leg(spark, bootstrap, lines, master)
    finally:
        delete_topics(bootstrap, list(spark.topics))
    startup, first_rows, spark_seconds, used = timings
    print(
        f"spark on {used}: started in {startup:.1f}s, first rows stored {first_rows:.1f}s after"
        f" start; {events:,} events in {spark_seconds:.2f}s = {events / spark_seconds:,.0f}"
        " events/s"
    )
    figures = SparkIngestFigures(events, spark_seconds, python_seconds, startup, first_rows)
    print(
        f"spark {figures.spark_rate:,.0f} events/s, python {figures.python_rate:,.0f} events/s,"
        f" start-up {startup:.1f} s, ratio={figures.ratio:.2f}"
    )
    return figures


def _spark_leg(
    settings: Settings, bootstrap: Brokers, lines: list[bytes], master: str | None
) -> tuple[float, float, float, str]:
    """(start-up, first rows after start, seconds from first send to last row, master)."""
    from clickstream.spark.engine import SparkIngestor

    path = settings.data_dir / f"{settings.kafka_views_topic}.json"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    # The producer process starts before the JVM does, as the consumers of `bench ingest` do.
    ctx = multiprocessing.get_context("spawn")
    go, done = ctx.Event(), ctx.Queue()
    producer = ctx.Process(
        target=produce_on_signal, args=(bootstrap, settings.kafka_views_topic, path, go, done)
    )
    producer.start()
    stop = threading.Event()
    ingestor = SparkIngestor(settings, bootstrap, master=master, stop=stop)
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            ingestor.run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    t0 = time.monotonic()
    thread = threading.Thread(target=consume, name="bench-spark")
    thread.start()
    try:
        print("starting Spark and its query ...")
        while ingestor.ready_at is None:
            if not thread.is_alive():
                raise RuntimeError(f"the Spark engine stopped before it was ready: {errors}")
            time.sleep(0.05)
        startup = ingestor.ready_at - t0
        sent = time.monotonic()
        go.set()
        total = len(lines)
        first = wait_stored(
            total,
            lambda: ingestor.stats.views,
            lambda: (
                None
                if thread.is_alive()
                else f"the Spark engine stopped before storing all: {errors}"
            ),
        )
        took = time.monotonic() - sent
        first_rows = (first or time.monotonic()) - t0
        _, delivered = done.get(timeout=120)
        if delivered != total:
            raise RuntimeError(f"the producer delivered {delivered:,} of {total:,} events")
        return startup, first_rows, took, ingestor.master
    finally:
        stop.set()
        go.set()
        thread.join()
        producer.join()
        path.unlink(missing_ok=True)
