"""The full path of `clickstream bench ingest`, timed: produce at max speed into fresh topics
while the members of a consumer group, each a process of its own, store the events; from
the first send until the last row is committed. `bench ingest --engine spark` times its
default-engine leg with it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from tqdm import tqdm

from clickstream.bench.cost import (
    LegCost,
    leg_meter,
    statements_of,
    wal_bytes_since,
    wal_position,
)
from clickstream.bench.metrics import Scraper
from clickstream.bench.server import free_port
from clickstream.config import Settings
from clickstream.ingest.consumer import Ingestor
from clickstream.kafka.client import admin_config, ensure_topics
from clickstream.kafka.producer import produce_lines
from clickstream.kafka.security import Brokers
from clickstream.metrics import serve_consumer_metrics
from clickstream.util.process import tune_garbage_collector

__all__ = ["delete_topics", "produce_on_signal", "time_full_path", "wait_stored"]


def time_full_path(
    settings: Settings,
    bootstrap: Brokers,
    lines: list[bytes],
    consumers: int,
    *,
    metrics: bool,
    costs: list[LegCost] | None = None,
) -> tuple[float, float]:
    """Time (b); return (seconds until every row is stored, seconds the producer took).
    With `costs`, what the leg cost is appended to it."""
    path = settings.data_dir / f"{settings.kafka_views_topic}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    try:
        return _timed_pipeline(settings, bootstrap, path, len(lines), consumers, metrics, costs)
    finally:
        path.unlink(missing_ok=True)


def _timed_pipeline(
    settings: Settings,
    bootstrap: Brokers,
    path: Path,
    total: int,
    consumers: int,
    metrics: bool,
    costs: list[LegCost] | None,
) -> tuple[float, float]:
    ensure_topics(
        bootstrap,
        [settings.kafka_views_topic, settings.kafka_orders_topic],
        settings.kafka_partitions,
    )
    # Producer and consumers are separate processes, as in production: none shares a GIL
    # with another. They start before any Kafka client exists in this process.
    ctx = multiprocessing.get_context("spawn")
    go, done, stop = ctx.Event(), ctx.Queue(), ctx.Event()
    producer = ctx.Process(
        target=produce_on_signal, args=(bootstrap, settings.kafka_views_topic, path, go, done)
    )
    members = [_Member(ctx) for _ in range(consumers)]
    ports = [free_port() if metrics else 0 for _ in members]
    processes = [producer] + [
        ctx.Process(
            target=_consume,
            args=(
                dataclasses.replace(settings, ingest_metrics_port=port),
                bootstrap,
                m.assigned,
                m.stored,
                stop,
            ),
        )
        for m, port in zip(members, ports, strict=True)
    ]
    for process in processes:
        process.start()
    delivered = -1
    try:
        print(f"waiting for {consumers} consumer(s) to join their group ...")
        while not all(m.assigned.is_set() for m in members):
            if not all(p.is_alive() for p in processes[1:]):
                raise RuntimeError("a consumer stopped before it was assigned partitions")
            time.sleep(0.05)
        meter = statements = None
        if costs is not None:
            meter, statements = leg_meter(settings, producer.pid, [p.pid for p in processes[1:]])
            meter.start()
            wal = wal_position(settings)
        started = time.monotonic()
        go.set()
        with Scraper([f"http://127.0.0.1:{p}/metrics" for p in ports if p]):
            wait_stored(
                total,
                lambda: sum(m.stored.value for m in members),
                lambda: (
                    None
                    if all(p.is_alive() for p in processes[1:])
                    else "a consumer stopped before storing every event"
                ),
            )
        took = time.monotonic() - started
        if meter is not None:
            spent = meter.stop()
            listed = statements_of(settings) if statements else None
            costs.append(LegCost(spent, listed, wal_bytes_since(settings, wal)))
        produce_seconds, delivered = done.get(timeout=120)
    finally:
        stop.set()
        go.set()
        for process in processes:
            process.join()
    if delivered != total:
        raise RuntimeError(f"the producer delivered {delivered:,} of {total:,} events")
    return took, produce_seconds


def wait_stored(
    total: int, stored: Callable[[], int], failure: Callable[[], str | None]
) -> float | None:
    """Show a progress bar until `stored()` reaches `total`; stop with `failure()` once it
    names one. Returns when the first rows were seen (time.monotonic), if before the end."""
    first = None
    with tqdm(total=total, unit="ev", unit_scale=True, desc="stored") as bar:
        while (count := stored()) < total:
            if (failed := failure()) is not None:
                raise RuntimeError(failed)
            if count and first is None:
                first = time.monotonic()
            time.sleep(0.02)
            bar.update(count - bar.n)
        bar.update(count - bar.n)
    return first


class _Member:
    """What the benchmark sees of one consumer process: assigned yet, and rows stored."""

    def __init__(self, ctx) -> None:
        self.assigned = ctx.Event()
        self.stored = ctx.Value("q", 0, lock=False)


def _consume(settings: Settings, bootstrap: Brokers, assigned, stored, stop) -> None:
    tune_garbage_collector()
    if settings.ingest_metrics_port:
        serve_consumer_metrics(settings)
    ingestor = Ingestor(settings, bootstrap)
    consumer = threading.Thread(target=ingestor.run, name="bench-consumer")
    consumer.start()
    while consumer.is_alive():
        if ingestor.assigned:
            assigned.set()
        stored.value = ingestor.stats.views
        if stop.wait(0.02):
            ingestor.stop.set()
    stored.value = ingestor.stats.views


def produce_on_signal(bootstrap: Brokers, topic: str, path: Path, go, done) -> None:
    tune_garbage_collector()
    with open(path, "rb") as handle:
        lines = handle.readlines()
    go.wait()
    started = time.monotonic()
    result = produce_lines(bootstrap, topic, lines)
    done.put((time.monotonic() - started, result.delivered))


def delete_topics(bootstrap: Brokers, topics: list[str]) -> None:
    """Tansu keeps topics in memory: give the benchmark's back."""
    admin = AdminClient(admin_config(bootstrap))
    for future in admin.delete_topics(topics, operation_timeout=15).values():
        with contextlib.suppress(KafkaException):  # already gone is fine
            future.result(timeout=15)
