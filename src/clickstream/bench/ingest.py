"""`clickstream bench ingest`: how close the full pipeline comes to PostgreSQL's own COPY.

Both legs store the same cleaned view rows into the same `product_views` table of a scratch
database, so the ratio isolates what Kafka, the consumer loop, cleaning and the exactly-once
merge cost on top of the fastest possible write:

  (a) one raw COPY of the rows (the ceiling);
  (b) produce the raw events at max speed into fresh topics while the members of a consumer
      group (by default two processes, one per core of the reference machine) ingest them,
      timed from the first send until the last row is committed.

Where the CPU goes in (b) is printed per part, as CPU seconds per million events (µs per
event; clickstream.bench.cost), next to the raw COPY's backend in (a); the last line gives
PostgreSQL's cost per event against the raw COPY's.

With `--stored N`, each leg's database first holds N views over the 60 days before today
with their keys and derived rows, generated in SQL as `clickstream bench prune` does, and a
checkpoint follows. The first change to each index page after a checkpoint writes the whole
page into the WAL, and with N keys stored the key table's index has N / 100 or so leaves: a
million events right after the checkpoint pay that for nearly every leaf, where a running
ingest pays it once per leaf per checkpoint interval (tens of millions of events). So (b)
runs twice in that database, with other events each time: right after the checkpoint, then
between checkpoints, which is the leg's figure. Both are printed.

With `--metrics both`, (b) runs four times in the same run, each into a fresh database and
fresh topics: with the consumers' metrics off, on, on, off ("on": each consumer serves them
and this process scrapes every one of them each second, as Prometheus would). The last line
then gives the best rate of each side and ratio=on/off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from tqdm import tqdm

from clickstream.bench.cost import (
    LegCost,
    backend_pids,
    cpu_seconds,
    format_cost,
    leg_meter,
    print_cost,
    statements_of,
    wal_bytes_since,
    wal_position,
)
from clickstream.bench.metrics import METRICS_LEGS, Scraper, batch_seconds, scrape_seconds
from clickstream.bench.prune import generate_stored
from clickstream.bench.scratch import scratch_leg
from clickstream.bench.server import free_port
from clickstream.config import Settings
from clickstream.generate import view_lines
from clickstream.ingest.cleaning import CleanBatch
from clickstream.ingest.consumer import Ingestor
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.kafka.client import admin_config, ensure_topics
from clickstream.kafka.producer import TimestampClock, produce_lines, stamp
from clickstream.kafka.security import Brokers, brokers
from clickstream.metrics import serve_consumer_metrics
from clickstream.store.batches import clean
from clickstream.store.db import connect
from clickstream.store.writer import copy_views
from clickstream.util.process import tune_garbage_collector

__all__ = [
    "IngestFigures",
    "delete_topics",
    "produce_on_signal",
    "run_ingest_benchmark",
    "time_full_path",
    "wait_stored",
]

SCRATCH_DATABASE = "clickstream_bench"


@dataclass(frozen=True)
class IngestFigures:
    events: int
    copy_seconds: float
    pipeline_seconds: float
    produce_seconds: float
    copy_cpu_seconds: float | None = None  # the raw COPY's backend
    cost: LegCost | None = None  # (b)'s, of the leg the figures come from

    @property
    def copy_rate(self) -> float:
        return self.events / self.copy_seconds

    @property
    def pipeline_rate(self) -> float:
        return self.events / self.pipeline_seconds

    @property
    def ratio(self) -> float:
        return self.pipeline_rate / self.copy_rate


def run_ingest_benchmark(
    settings: Settings,
    *,
    events: int,
    seed: int,
    consumers: int = 2,
    metrics: str = "off",
    stored: int = 0,
) -> IngestFigures:
    bootstrap = brokers(settings)
    run = uuid.uuid4().hex[:8]
    bench = scratch_leg(settings, SCRATCH_DATABASE, f"ingest-{run}")
    print(
        f"scratch database {SCRATCH_DATABASE}, topics {bench.kafka_views_topic} (+orders),"
        f" {consumers} consumer(s), metrics {metrics}"
    )

    started = time.monotonic()
    lines = view_lines(events, seed=seed)
    print(f"generated {len(lines):,} views in {time.monotonic() - started:.1f}s")

    copy_seconds, copy_cpu = _raw_copy(bench, lines)
    print(
        f"(a) raw COPY: {events:,} rows in {copy_seconds:.2f}s"
        f" = {events / copy_seconds:,.0f} rows/s; its PostgreSQL backend"
        f" {format_cost(copy_cpu, events)} CPU µs a row"
    )
    legs: dict[bool, list[tuple[float, float, LegCost]]] = {False: [], True: []}
    for number, on in enumerate(METRICS_LEGS[metrics]):
        leg = bench
        if number:
            leg = scratch_leg(settings, SCRATCH_DATABASE, f"ingest-{run}-{number}")
        if stored:
            _store_first(leg, stored)
            others = view_lines(events, seed=seed + 1)
            _after_the_checkpoint(leg, bootstrap, others, consumers, copy_cpu)
        costs: list[LegCost] = []
        try:
            pipeline_seconds, produce_seconds = time_full_path(
                leg, bootstrap, lines, consumers, metrics=on, costs=costs
            )
        finally:
            delete_topics(bootstrap, [leg.kafka_views_topic, leg.kafka_orders_topic])
        legs[on].append((pipeline_seconds, produce_seconds, costs[0]))
        between = " between checkpoints" if stored else ""
        print(
            f"(b) produce -> consume -> PostgreSQL{between}, metrics {'on' if on else 'off'}:"
            f" {events:,} events in {pipeline_seconds:.2f}s"
            f" = {events / pipeline_seconds:,.0f} events/s"
            f" (producing alone took {produce_seconds:.2f}s)"
        )
        print_cost(costs[0], events, copy_cpu)
    best = {on: min(times, key=lambda leg: leg[0]) for on, times in legs.items() if times}
    pipeline_seconds, produce_seconds, cost = best[METRICS_LEGS[metrics][0]]
    figures = IngestFigures(events, copy_seconds, pipeline_seconds, produce_seconds, copy_cpu, cost)
    if len(best) == 2:
        off, on = (events / best[flag][0] for flag in (False, True))
        share = _metrics_share(bench, lines, rate=off, consumers=consumers)
        print(
            f"end to end (best of {len(legs[True])} legs each) metrics off {off:,.0f} events/s,"
            f" metrics on {on:,.0f} events/s ({(on - off) / off:+.1%}); the metrics' own work"
            f" {share:.2%} of each consumer's time; ratio={on / off:.3f}"
        )
        return figures
    postgres = cost.seconds.get("PostgreSQL")
    compared = ""
    if postgres is not None and copy_cpu:
        compared = (
            f"; PostgreSQL {format_cost(postgres, events)} CPU µs an event,"
            f" raw COPY {format_cost(copy_cpu, events)} µs a row:"
            f" PostgreSQL cost {postgres / copy_cpu:.1f}x the raw COPY's"
        )
    print(
        f"end to end {figures.pipeline_rate:,.0f} events/s,"
        f" raw COPY {figures.copy_rate:,.0f} rows/s{compared}, ratio={figures.ratio:.2f}"
    )
    return figures


def _store_first(settings: Settings, views: int) -> None:
    """What a database holds before (b) with `--stored`: the cost grows with what is stored
    (the key table's index, the derived tables' indexes outgrowing memory)."""
    started = time.monotonic()
    generate_stored(settings.database_url, views, datetime.now(UTC))
    print(
        f"stored {views:,} views first (60 days before today) in {time.monotonic() - started:.0f}s"
    )


def _after_the_checkpoint(
    settings: Settings,
    bootstrap: Brokers,
    lines: list[bytes],
    consumers: int,
    copy_cpu: float | None,
) -> None:
    """(b) with other events, into the same database, right after its fill's checkpoint."""
    leg = dataclasses.replace(
        settings,
        kafka_views_topic=settings.kafka_views_topic + "-first",
        kafka_orders_topic=settings.kafka_orders_topic + "-first",
        kafka_consumer_group=settings.kafka_consumer_group + "-first",
    )
    costs: list[LegCost] = []
    try:
        seconds, _ = time_full_path(leg, bootstrap, lines, consumers, metrics=False, costs=costs)
    finally:
        delete_topics(bootstrap, [leg.kafka_views_topic, leg.kafka_orders_topic])
    print(
        f"(b) right after the checkpoint: {len(lines):,} events in {seconds:.2f}s"
        f" = {len(lines) / seconds:,.0f} events/s"
    )
    print_cost(costs[0], len(lines), copy_cpu)


def _metrics_share(settings: Settings, lines: list[bytes], *, rate: float, consumers: int):
    """The share of a consumer's time its metrics take at `rate` events/s over all members:
    their work per batch, and one scrape a second."""
    size = min(settings.ingest_batch_size, len(lines))
    per_batch = batch_seconds(settings, *_cleaned(settings, lines[:size]))
    scrape = scrape_seconds()
    per_member = rate / consumers  # events each consumer takes a second
    print(
        f"(c) the metrics' own work: {per_batch * 1e6:,.0f}µs per batch of {size:,} events,"
        f" {scrape * 1e6:,.0f}µs per scrape"
    )
    return per_batch / size * per_member + scrape


def _cleaned(settings: Settings, lines: list[bytes]) -> tuple[list[RawEvent], CleanBatch]:
    """The events as the consumer reads and cleans them."""
    clock = TimestampClock()
    raw = [
        RawEvent(
            Kind.VIEW, settings.kafka_views_topic, 0, offset, stamp(line, clock.now())[1], None
        )
        for offset, line in enumerate(lines)
    ]
    batch = clean(settings, raw)
    if batch.rejects:
        raise RuntimeError(f"generated events must be valid: {batch.rejects[0].reason}")
    return raw, batch


def _raw_copy(settings: Settings, lines: list[bytes]) -> tuple[float, float | None]:
    """Clean the events as the consumer would, then time one COPY of the rows alone;
    return its seconds and its backend's CPU seconds (None when not on this machine)."""
    _, batch = _cleaned(settings, lines)
    with connect(settings) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.commit()
        local = backend_pids(conn) is not None
        conn.commit()
        with conn.cursor() as cur:
            before = cpu_seconds(pid) if local else None
            started = time.monotonic()
            with conn.transaction():
                copy_views(cur, batch.views)
            took = time.monotonic() - started
            after = cpu_seconds(pid) if local else None
        conn.execute("TRUNCATE product_views")
        conn.commit()
    spent = after - before if before is not None and after is not None else None
    return took, spent


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
