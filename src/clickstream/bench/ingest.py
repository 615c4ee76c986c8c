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

import dataclasses
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from clickstream.bench.cost import (
    LegCost,
    backend_pids,
    cpu_seconds,
    format_cost,
    print_cost,
)
from clickstream.bench.full_path import delete_topics, time_full_path
from clickstream.bench.metrics import METRICS_LEGS, batch_seconds, scrape_seconds
from clickstream.bench.prune import generate_stored
from clickstream.bench.scratch import scratch_leg
from clickstream.config import Settings
from clickstream.generate import view_lines
from clickstream.ingest.cleaning import CleanBatch
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.kafka.producer import TimestampClock, stamp
from clickstream.kafka.security import Brokers, brokers
from clickstream.store.batches import clean
from clickstream.store.db import connect
from clickstream.store.writer import copy_views

__all__ = ["IngestFigures", "run_ingest_benchmark"]

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
        pipeline_seconds, produce_seconds, cost = _leg(leg, bootstrap, lines, consumers, on)
        legs[on].append((pipeline_seconds, produce_seconds, cost))
        between = " between checkpoints" if stored else ""
        print(
            f"(b) produce -> consume -> PostgreSQL{between}, metrics {'on' if on else 'off'}:"
            f" {events:,} events in {pipeline_seconds:.2f}s"
            f" = {events / pipeline_seconds:,.0f} events/s"
            f" (producing alone took {produce_seconds:.2f}s)"
        )
        print_cost(cost, events, copy_cpu)
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
    seconds, _, cost = _leg(leg, bootstrap, lines, consumers, False)
    print(
        f"(b) right after the checkpoint: {len(lines):,} events in {seconds:.2f}s"
        f" = {len(lines) / seconds:,.0f} events/s"
    )
    print_cost(cost, len(lines), copy_cpu)


def _leg(
    settings: Settings, bootstrap: Brokers, lines: list[bytes], consumers: int, metrics: bool
) -> tuple[float, float, LegCost]:
    """(b) once on the leg's topics, which it deletes after: (seconds until every row is
    stored, seconds the producer took, the CPU each part spent)."""
    costs: list[LegCost] = []
    try:
        seconds, producing = time_full_path(
            settings, bootstrap, lines, consumers, metrics=metrics, costs=costs
        )
    finally:
        delete_topics(bootstrap, [settings.kafka_views_topic, settings.kafka_orders_topic])
    return seconds, producing, costs[0]


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
