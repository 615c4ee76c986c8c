"""`clickstream bench api`: the recently-viewed endpoint under load, next to a trivial one.

In a scratch database on the configured server it stores `--views` views of `--users` users
(generated inside PostgreSQL: shipping ten million rows through the client would only be
slower than generating them where they are stored) and derives `user_product_hours` from
them exactly as the migration does for existing data; `--history-days N` adds the N empty day
partitions before them that a server keeping N days has, which every lookup's plan holds.
Then it starts `clickstream serve` pinned to one core and drives, from a load generator
pinned to the other, `GET /api/users/{id}/recently-viewed` (random users) and `GET
/api/ping`, which answers without touching the database: the ratio of the two is what the
database path costs. The two take turns, `ROUNDS` times each, so that a machine whose speed
drifts over a minute slows both alike; and the server's CPU per request of each shows the
cost without the drift.

Last, the original system's strategy: `WHERE userid = ... ORDER BY viewed_at LIMIT 5` on
`product_views` with no index to use (index scans are switched off for that session, so an
index another feature adds to `product_views` cannot help it). It and our query run one at a
time on one connection for a few seconds each, and the speed-up compares their mean times.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from tqdm import tqdm

from clickstream.bench.loadgen import LoadResult, drive_in_process
from clickstream.bench.metrics import METRICS_LEGS, Scraper, request_seconds
from clickstream.bench.scratch import scratch_database
from clickstream.bench.server import free_port, start_server
from clickstream.config import Settings
from clickstream.errors import ClickstreamError
from clickstream.store.derived import hour_bin
from clickstream.store.partitions import ensure_days, partition_name
from clickstream.store.recent import FIRST_WINDOW, RECENT_ENTRIES

__all__ = ["ORIGINAL_QUERY", "run_api_benchmark"]

SCRATCH_DATABASE = "clickstream_bench_api"
PRODUCTS = 20_000
WARMUP_SECONDS = 2.0
ROUNDS = 3  # turns of each endpoint, alternating
FIRST_VIEW = datetime(2026, 11, 1, tzinfo=UTC)

# What the replaced system ran for every request: the oldest five, duplicates and all.
ORIGINAL_QUERY = "SELECT productid FROM product_views WHERE userid = %s ORDER BY viewed_at LIMIT 5"

# Views spread evenly over the users, one per millisecond; product popularity skewed (a
# cube of a uniform number) so that users come back to the same products now and then.
_GENERATE = """
INSERT INTO product_views (messageid, userid, productid, source, viewed_at)
SELECT 'bench-' || i,
       'user-' || (i %% %(users)s),
       'product-' || floor(%(products)s * random() ^ 3)::int,
       (ARRAY['desktop', 'mobile-web', 'android', 'ios'])[1 + i %% 4],
       %(first)s::timestamptz + i * interval '1 millisecond'
FROM generate_series(%(start)s, %(stop)s - 1) AS i
"""

_DERIVE = f"""
INSERT INTO user_product_hours (userid, productid, hour, viewed_at)
SELECT userid, productid, {hour_bin("viewed_at")}, max(viewed_at)
FROM product_views GROUP BY 1, 2, 3
"""

# Every index page of user_product_hours into the server's cache, as a running API has the
# pages it reads: without this the first lookups read from disk and the ratio measures that.
_WARM = "SELECT count(*) FROM user_product_hours WHERE userid > ''"


@dataclass(frozen=True)
class Endpoint:
    """One endpoint's turns under load, taken together."""

    name: str
    turns: tuple[LoadResult, ...]

    @property
    def requests(self) -> int:
        return sum(len(turn.latencies) for turn in self.turns)

    @property
    def rate(self) -> float:
        return self.requests / sum(turn.seconds for turn in self.turns)

    @property
    def server_cpu(self) -> float | None:
        """The server's CPU seconds per request."""
        cpu = [turn.watched[0] if turn.watched else None for turn in self.turns]
        return None if None in cpu or not self.requests else sum(cpu) / self.requests

    def percentile(self, p: float) -> float:
        latencies = np.concatenate([turn.latencies for turn in self.turns])
        return float(np.percentile(latencies, p)) if len(latencies) else float("nan")

    def describe(self) -> str:
        return (
            f"{self.name}: {self.rate:,.0f} req/s"
            f" p50={self.percentile(50) * 1000:.1f}ms p99={self.percentile(99) * 1000:.1f}ms"
        )


def _load(url: str, *, views: int, users: int, history_days: int = 0) -> None:
    """Fill product_views and user_product_hours as fast as the server can.

    The scratch tables' day partitions are unlogged and get their indexes after the rows, in
    one build each; the views get no messageid keys, as nothing here looks a view up by one.
    `history_days` more (empty) partitions of user_product_hours precede the loaded days, as
    a server that keeps that many days has them: a lookup's plan holds every partition.
    """
    chunk = 500_000
    with psycopg.connect(url, autocommit=True) as conn:
        days = {FIRST_VIEW.date() + timedelta(days=d) for d in range(views // 86_400_000 + 1)}
        for table in ("product_views", "user_product_hours"):
            ensure_days(conn, table, days)
        history = {FIRST_VIEW.date() - timedelta(days=d) for d in range(1, history_days + 1)}
        ensure_days(conn, "user_product_hours", history)
        for statement in (
            "SET maintenance_work_mem = '512MB'",
            "SET work_mem = '512MB'",
            "SELECT setseed(0.42)",
            *(
                f"ALTER TABLE {partition_name(table, day)} SET UNLOGGED"
                for table in ("product_views", "user_product_hours")
                for day in days
            ),
        ):
            conn.execute(statement)
        rebuild = _drop_indexes(conn, "user_product_hours")
        with tqdm(total=views, unit="view", unit_scale=True, desc="storing views") as bar:
            for start in range(0, views, chunk):
                stop = min(views, start + chunk)
                params = {
                    "users": users,
                    "products": PRODUCTS,
                    "start": start,
                    "stop": stop,
                    "first": FIRST_VIEW,
                }
                conn.execute(_GENERATE, params)
                bar.update(stop - start)
        steps = [
            ("deriving user_product_hours", _DERIVE),
            *(("indexing user_product_hours", statement) for statement in rebuild),
            ("analyzing", "VACUUM ANALYZE product_views, user_product_hours"),
            ("warming the cache", "SET enable_seqscan = off"),
            ("warming the cache", "SET enable_bitmapscan = off"),
            ("warming the cache", _WARM),
        ]
        with tqdm(total=len(steps), unit="step") as bar:
            for label, statement in steps:
                bar.set_description(label)
                conn.execute(statement)
                bar.update(1)


def _drop_indexes(conn: psycopg.Connection, table: str) -> list[sql.Composable]:
    """Drop the table's indexes (the migrations' current set) and return the statements that
    make them again: one build each after the rows is much faster than keeping them up."""
    found = conn.execute(
        "SELECT x.relname, pg_get_indexdef(i.indexrelid), c.conname, pg_get_constraintdef(c.oid)"
        " FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid"
        " LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid"
        " WHERE i.indrelid = to_regclass(%s)",
        (table,),
    ).fetchall()
    rebuild: list[sql.Composable] = []
    for index, definition, constraint, constraint_definition in found:
        if constraint:
            names = {"table": sql.Identifier(table), "name": sql.Identifier(constraint)}
            conn.execute(sql.SQL("ALTER TABLE {table} DROP CONSTRAINT {name}").format(**names))
            rebuild.append(
                sql.SQL("ALTER TABLE {table} ADD CONSTRAINT {name} {definition}").format(
                    **names, definition=sql.SQL(constraint_definition)
                )
            )
        else:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
            rebuild.append(sql.SQL(definition))
    return rebuild


def _cores() -> tuple[int | None, int | None]:
    """(load generator core, server core), or no pinning with fewer than two cores."""
    cores = sorted(os.sched_getaffinity(0))
    return (cores[0], cores[1]) if len(cores) >= 2 else (None, None)


def _time_queries(
    url: str, query: str, params: Callable[[str], Any], users: int, seconds: float
) -> float:
    """Mean seconds per query, one at a time on one connection, for about `seconds`.

    Index scans are off on this connection unless `query` is ours: the original system had
    no index for its query, and must not get one that another feature added.
    """
    rng = random.Random(5)
    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        if query == ORIGINAL_QUERY:
            for kind in ("indexscan", "indexonlyscan", "bitmapscan"):
                conn.execute(f"SET enable_{kind} = off")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or len(times) < 3:
            user = f"user-{rng.randrange(users)}"
            started = time.perf_counter()
            conn.execute(query, params(user)).fetchall()
            times.append(time.perf_counter() - started)
    return sum(times) / len(times)


def run_api_benchmark(
    settings: Settings,
    *,
    views: int,
    users: int,
    seconds: float,
    concurrency: int,
    metrics: str = "on",
    history_days: int = 0,
) -> None:
    url = scratch_database(settings, SCRATCH_DATABASE)
    print(
        f"scratch database {SCRATCH_DATABASE}: {views:,} views of {users:,} users,"
        f" {history_days} empty day(s) of user_product_hours before them"
    )
    started = time.monotonic()
    _load(url, views=views, users=users, history_days=history_days)
    print(f"loaded in {time.monotonic() - started:.0f}s")

    rng = random.Random(11)
    user_paths = [f"/api/users/user-{rng.randrange(users)}/recently-viewed" for _ in range(100_000)]
    legs: dict[bool, list[tuple[Endpoint, Endpoint]]] = {False: [], True: []}
    for on in METRICS_LEGS[metrics]:
        leg = dataclasses.replace(settings, database_url=url, api_metrics=on)
        legs[on].append(_drive_server(leg, user_paths, seconds=seconds, concurrency=concurrency))
    # Each side's best leg by the real endpoint's rate (one leg each unless --metrics both).
    best = {on: max(runs, key=lambda r: r[0].rate) for on, runs in legs.items() if runs}

    probe = max(3.0, seconds / 3)
    print(f"original strategy (oldest first, no index) versus ours, {probe:g}s each, 1 connection")
    original = _time_queries(url, ORIGINAL_QUERY, lambda user: (user,), users, probe)
    window = 5 * FIRST_WINDOW  # limit 5
    ours = _time_queries(
        url, RECENT_ENTRIES, lambda user: {"user": user, "rows": window}, users, probe
    )
    print(
        f"per query: original {original * 1000:.1f}ms, ours {ours * 1000:.3f}ms:"
        f" ours is {original / ours:,.0f} times faster"
    )
    if len(best) == 2:
        (real_off, trivial_off), (real_on, trivial_on) = best[False], best[True]
        ratio = real_on.rate / real_off.rate
        trivial = trivial_on.rate / trivial_off.rate
        per_request = request_seconds()
        share = per_request * real_off.rate  # the server has one core
        print(f"the request metrics' own work: {per_request * 1e6:.1f}µs per request")
        print(
            f"best of {len(legs[True])} each: metrics off {real_off.describe()}"
            f" | metrics on {real_on.describe()} | trivial on/off {trivial:.3f}"
            f" | metrics' own work {share:.2%} of the server's time | ratio={ratio:.3f}"
        )
        return
    real, trivial = best[METRICS_LEGS[metrics][0]]
    ratio = real.rate / trivial.rate
    cpu = _server_cpu(real, trivial)
    print(f"{real.describe()} | {trivial.describe()} |{cpu} ratio={ratio:.2f}")


def _server_cpu(real: Endpoint, trivial: Endpoint) -> str:
    """The server's CPU per request of each, where it could be read."""
    if real.server_cpu is None or trivial.server_cpu is None:
        return ""
    return (
        f" server CPU a request: real {real.server_cpu * 1e6:.0f}µs,"
        f" trivial {trivial.server_cpu * 1e6:.0f}µs ({trivial.server_cpu / real.server_cpu:.2f}) |"
    )


def _drive_server(
    settings: Settings, user_paths: list[str], *, seconds: float, concurrency: int
) -> tuple[Endpoint, Endpoint]:
    """Start a server with these settings, drive the real and the trivial endpoint in turns.

    With metrics on, /metrics is scraped every second meanwhile, as Prometheus would.
    """
    client_core, server_core = _cores()
    port = free_port()
    server = start_server(settings, port, server_core)
    pinning = (
        f"server on core {server_core}, load generator on core {client_core}"
        if server_core is not None
        else "fewer than two cores: nothing pinned"
    )
    state = "on, scraped every second" if settings.api_metrics else "off"
    print(f"server on 127.0.0.1:{port}, metrics {state}; {pinning}; {concurrency} connections")
    print(
        f"{ROUNDS} turns of {seconds / ROUNDS:g}s (+{WARMUP_SECONDS:g}s warm-up) each:"
        " the recently-viewed lookup of random users, then /api/ping"
    )
    turns: dict[str, list[LoadResult]] = {"real": [], "trivial": []}
    try:
        with Scraper([f"http://127.0.0.1:{port}/metrics"] if settings.api_metrics else []):
            for turn in range(1, ROUNDS + 1):
                for name, paths in (("real", user_paths), ("trivial", ["/api/ping"])):
                    result = drive_in_process(
                        "127.0.0.1",
                        port,
                        paths,
                        concurrency=concurrency,
                        seconds=seconds / ROUNDS,
                        warmup=WARMUP_SECONDS,
                        core=client_core,
                        watch=(server.pid,),
                    )
                    if result.failures:
                        raise ClickstreamError(
                            f"{name}: {result.failures} failed requests,"
                            f" first: {result.first_failure}"
                        )
                    turns[name].append(result)
                real, trivial = turns["real"][-1], turns["trivial"][-1]
                print(
                    f"  turn {turn}: real {real.rate:,.0f} req/s, trivial {trivial.rate:,.0f}"
                    f" req/s ({real.rate / trivial.rate:.2f}); load generator busy"
                    f" {real.busy:.0%} and {trivial.busy:.0%} of its core"
                )
    finally:
        server.terminate()
        server.wait(30)
    return Endpoint("real", tuple(turns["real"])), Endpoint("trivial", tuple(turns["trivial"]))
