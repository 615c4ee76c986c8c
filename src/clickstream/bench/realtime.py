"""`clickstream bench realtime`: how fast the live view reflects an event, and how many
events a second its window takes.

One run, on a fresh topic and a scratch database holding the generated catalog:

  (a) latency: `clickstream serve` runs in a process of its own, a producer process replays
      generated views at max speed (or at `--rate` views a second) with a probe event from a
      user of its own every `PROBE_EVERY` events, and this process polls `GET /api/realtime`
      every `POLL_SECONDS`; a probe's delay runs from its send time to the first response
      that lists its user. At max speed on a small machine the producer takes a core and the
      window falls behind until it stops, so that delay is the queue behind a saturated CPU;
      at a steady rate it is the live view's own;
  (b) throughput: a fresh source reads the whole topic back into a window, timed from its
      start until it caught up: the events/s the window sustains, compared in `ratio=` with
      the producer's events/s of (a);
  (c) memory: resident bytes per view of a window filled with 2,000,000 views
      (`clickstream.bench.window_memory`).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import statistics
import time
import uuid
from dataclasses import dataclass

import httpx
import orjson
from confluent_kafka.admin import AdminClient
from tqdm import tqdm

from clickstream.bench.scratch import scratch_database
from clickstream.bench.server import free_port, start_server
from clickstream.bench.window_memory import (
    MEMORY_PRODUCTS,
    MEMORY_USERS,
    MEMORY_VIEWS,
    window_bytes_per_view,
)
from clickstream.config import Settings
from clickstream.errors import ClickstreamError
from clickstream.generate import generate
from clickstream.kafka.client import admin_config, ensure_topics
from clickstream.kafka.security import Brokers, brokers
from clickstream.realtime.source import RealtimeSource
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect

__all__ = ["RealtimeFigures", "run_realtime_benchmark"]

SCRATCH_DATABASE = "clickstream_bench_realtime"
PROBE_EVERY = 2_000
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class RealtimeFigures:
    events: int
    delays: list[float]
    produce_seconds: float
    live_seconds: float
    replay_seconds: float
    bytes_per_view: float

    @property
    def p50(self) -> float:
        return statistics.median(self.delays)

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.delays, n=20, method="inclusive")[-1]

    @property
    def producer_rate(self) -> float:
        return self.events / self.produce_seconds

    @property
    def window_rate(self) -> float:
        return self.events / self.replay_seconds

    @property
    def ratio(self) -> float:
        return self.window_rate / self.producer_rate


def _produce(
    bootstrap: Brokers,
    topic: str,
    events: int,
    users: int,
    seed: int,
    rate: float | None,
    queue,
    go,
) -> None:
    """The producer process: generate, say ready, send at `rate` (None: max speed) with probes."""
    from clickstream.kafka.producer import produce_lines

    lines = generate(
        users=users, products=1000, categories=25, views=events, orders=0, seed=seed
    ).views
    probes: list[float] = []

    def with_probes():
        for index, line in enumerate(lines):
            if index % PROBE_EVERY == 0:
                probe = len(probes)
                probes.append(time.time())
                yield orjson.dumps(
                    {
                        "event": "ProductView",
                        "messageid": f"probe-{probe}",
                        "userid": f"probe-{probe}",
                        "properties": {"productid": "product-1"},
                        "context": {"source": "bench"},
                    }
                )
            yield line

    queue.put(("ready", None))
    go.get()
    started = time.time()
    result = produce_lines(bootstrap, topic, with_probes(), rate=rate)
    queue.put(("done", (started, time.time(), result.delivered, result.failed, probes)))


def run_realtime_benchmark(
    settings: Settings, *, events: int, users: int, seed: int, rate: float | None = None
) -> RealtimeFigures:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    bootstrap = brokers(settings)
    run = uuid.uuid4().hex[:8]
    bench = dataclasses.replace(
        settings,
        database_url=scratch_database(settings, SCRATCH_DATABASE),
        kafka_bootstrap_servers=bootstrap.bootstrap,
        kafka_views_topic=f"bench-realtime-{run}",
        # the whole run stays inside the window, so (b) can check it holds every event
        realtime_window_seconds=max(settings.realtime_window_seconds, 3600),
    )
    ensure_topics(bootstrap, [bench.kafka_views_topic], bench.kafka_partitions)
    catalog = generate(products=1000, categories=25, views=0, orders=0, seed=seed).catalog
    with connect(bench) as conn:
        upsert_products(conn, catalog)
    print(f"scratch database {SCRATCH_DATABASE}, topic {bench.kafka_views_topic}")
    try:
        delays, total, produce_seconds, live_seconds = _latency(bench, events, users, seed, rate)
        print(
            f"(a) {total:,} events {'at max speed' if rate is None else f'at {rate:,.0f}/s'}"
            f" in {produce_seconds:.2f}s"
            f" = {total / produce_seconds:,.0f} events/s; all in the served window after"
            f" {live_seconds:.2f}s; {len(delays)} probes: send -> /api/realtime"
            f" p50 {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms"
        )
        replay_seconds = _replay(bench, total)
        print(
            f"(b) a fresh window read the {total:,} events back in {replay_seconds:.2f}s"
            f" = {total / replay_seconds:,.0f} events/s"
        )
    finally:
        AdminClient(admin_config(bootstrap)).delete_topics([bench.kafka_views_topic])
    per_view = window_bytes_per_view()
    print(
        f"(c) a window holding {MEMORY_VIEWS:,} views ({MEMORY_USERS:,} users,"
        f" {MEMORY_PRODUCTS:,} products) takes {per_view:.0f} bytes a view"
    )
    figures = RealtimeFigures(
        total, delays, produce_seconds, live_seconds, replay_seconds, per_view
    )
    print(
        f"send -> /api/realtime p50 {figures.p50 * 1000:.0f} ms, p95 {figures.p95 * 1000:.0f} ms;"
        f" window {figures.window_rate:,.0f} events/s, producer {figures.producer_rate:,.0f}"
        f" events/s, ratio={figures.ratio:.2f}; {per_view:.0f} bytes a view in the window"
    )
    return figures


def _latency(settings: Settings, events: int, users: int, seed: int, rate: float | None):
    context = multiprocessing.get_context("spawn")
    queue, go = context.Queue(), context.Queue()
    producer = context.Process(
        target=_produce,
        args=(
            brokers(settings),
            settings.kafka_views_topic,
            events,
            users,
            seed,
            rate,
            queue,
            go,
        ),
        daemon=True,
    )
    producer.start()
    port = free_port()
    server = start_server(settings, port)
    seen: dict[str, float] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait(lambda: not client.get("/api/realtime").json()["catching_up"], "server start")
            _wait(lambda: not queue.empty() or not producer.is_alive(), "producer", 600)
            if queue.empty():
                raise ClickstreamError("the producer process died while generating events")
            queue.get()
            probes = events // PROBE_EVERY + (1 if events % PROBE_EVERY else 0)
            total = events + probes
            go.put(True)
            done = None
            views = 0
            with tqdm(total=total, unit="ev", unit_scale=True, desc="in window") as bar:
                while views < total:
                    body = orjson.loads(client.get("/api/realtime").content)
                    now = time.time()
                    for user in body["active_users"]["users"]:
                        if user.startswith("probe-") and user not in seen:
                            seen[user] = now
                    bar.update(body["views"] - views)
                    views = body["views"]
                    if done is None and not queue.empty():
                        done = queue.get()[1]
                    if done is not None and done[3]:
                        raise ClickstreamError(f"{done[3]} events failed to send")
                    if not producer.is_alive() and done is None and queue.empty():
                        raise ClickstreamError("the producer process died")
                    time.sleep(POLL_SECONDS)
            finished = time.time()
            if done is None:
                done = queue.get(timeout=120)[1]
    finally:
        server.terminate()
        server.wait(30)
        producer.join(10)
    started, stopped, delivered, _, sent_at = done
    delays = [seen[f"probe-{i}"] - at for i, at in enumerate(sent_at) if f"probe-{i}" in seen]
    if len(delays) < len(sent_at):
        raise ClickstreamError(f"only {len(delays)} of {len(sent_at)} probes were seen")
    return delays, delivered, stopped - started, finished - started


def _replay(settings: Settings, total: int) -> float:
    started = time.monotonic()
    with RealtimeSource(settings) as source:
        if not source.wait_caught_up(600):
            raise ClickstreamError("the replay did not catch up within 10 minutes")
        took = time.monotonic() - started
        held = source.state().snapshot.views
    if held != total:
        raise ClickstreamError(f"the replayed window holds {held:,} events, expected {total:,}")
    return took


def _wait(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ClickstreamError(f"timed out waiting for the {what}")
        time.sleep(0.1)
