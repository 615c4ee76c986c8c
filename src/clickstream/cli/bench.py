"""`clickstream bench ...`: each benchmark prints its figures, the last line a summary."""

from __future__ import annotations

import argparse

from clickstream.cli._common import command, group, nonneg_int, positive_float, positive_int
from clickstream.config import Settings


def cmd_bench_api(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.bench.api import run_api_benchmark

    run_api_benchmark(
        settings,
        views=args.views,
        users=args.users,
        seconds=args.seconds,
        concurrency=args.concurrency,
        metrics=args.metrics,
        history_days=args.history_days,
    )
    return 0


def cmd_bench_realtime(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.bench.realtime import run_realtime_benchmark

    run_realtime_benchmark(
        settings, events=args.events, users=args.users, seed=args.seed, rate=args.rate
    )
    return 0


def cmd_bench_ingest(settings: Settings, args: argparse.Namespace) -> int:
    if args.engine == "spark":
        from clickstream.bench.spark_ingest import run_spark_ingest_benchmark

        run_spark_ingest_benchmark(
            settings,
            events=args.events,
            seed=args.seed,
            consumers=args.consumers,
            master=args.master,
        )
        return 0
    from clickstream.bench.ingest import run_ingest_benchmark

    run_ingest_benchmark(
        settings,
        events=args.events,
        seed=args.seed,
        consumers=args.consumers,
        metrics=args.metrics,
        stored=args.stored,
    )
    return 0


def cmd_bench_reports(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.bench.reports import run_reports_benchmark

    run_reports_benchmark(settings, views=args.views, orders=args.orders, seed=args.seed)
    return 0


def cmd_bench_prune(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.bench.prune import run_prune_benchmark

    run_prune_benchmark(settings, views=args.views, baseline_seconds=args.baseline_seconds)
    return 0


def register(sub) -> None:
    sub = group(
        sub,
        "bench",
        "run a benchmark and print its figures",
        "Run a benchmark on scratch data and print its figures.",
        metavar="BENCHMARK",
        what="a benchmark",
    )
    _add_ingest(sub)
    _add_realtime(sub)
    _add_api(sub)
    _add_reports(sub)
    _add_prune(sub)


def _add_ingest(sub) -> None:
    p = command(
        sub,
        "ingest",
        cmd_bench_ingest,
        "raw COPY versus produce -> consume -> PostgreSQL",
        "Measure, in one run and in a scratch database, (a) a raw COPY of cleaned view rows "
        "into product_views and (b) the full path: produce at max speed, consume, store. The "
        "last line gives (b) in events/s and ratio=b/a; with --metrics both, (b) with the "
        "consumers' metrics off and on, and ratio=on/off.",
    )
    p.add_argument("--events", type=positive_int, default=1_000_000, help="views (default 1000000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument(
        "--consumers",
        type=positive_int,
        default=2,
        help="consumer processes in the group (default 2, one per core)",
    )
    p.add_argument(
        "--metrics",
        choices=("off", "on", "both"),
        default="off",
        help="the consumers' Prometheus metrics off, on (served and scraped every second), or"
        " both: (b) off, on, on, off in the same run, the last line giving each side's best"
        " and ratio=on/off (default off)",
    )
    p.add_argument(
        "--stored",
        type=nonneg_int,
        default=0,
        metavar="N",
        help="views already stored before (b), generated in SQL over the 60 days before today"
        " with their keys and user_product_hours rows, as bench prune does; (b) then runs"
        " twice, right after the fill's checkpoint and then between checkpoints, the figure"
        " (default 0)",
    )
    p.add_argument(
        "--engine",
        choices=("python", "spark"),
        default="python",
        help="spark: measure consume --engine spark and, in the same run, the default engine "
        "on the same events; last line: both events/s, Spark's start-up and ratio=spark/python",
    )
    p.add_argument(
        "--master",
        metavar="URL",
        help="Spark master of --engine spark (default: spark.master, local[*])",
    )


def _add_realtime(sub) -> None:
    p = command(
        sub,
        "realtime",
        cmd_bench_realtime,
        "send -> /api/realtime delay and the events/s the live window takes",
        "On a fresh topic: produce views (at max speed, or --rate) from another process while "
        "the server runs, polling GET /api/realtime for probe events (p50, p95 of send -> "
        "shown); then read the whole topic back into a fresh window; then fill a window with "
        "2,000,000 views in a process of its own. The last line gives the delays, the window's "
        "events/s, ratio=window/producer events/s and the window's bytes a view.",
    )
    p.add_argument("--events", type=positive_int, default=1_000_000, help="views (default 1000000)")
    p.add_argument("--users", type=positive_int, default=10_000, help="users (default 10000)")
    p.add_argument("--seed", type=int, default=5, help="random seed (default 5)")
    p.add_argument(
        "--rate",
        type=positive_int,
        help="views a second the producer sends (default: as fast as it can, which on a small"
        " machine measures the queue behind a saturated CPU more than the live view)",
    )


def _add_api(sub) -> None:
    p = command(
        sub,
        "api",
        cmd_bench_api,
        "recently-viewed requests/s and latency versus a trivial endpoint",
        "Load views into a scratch database, start the server, drive GET "
        "/api/users/{id}/recently-viewed and GET /api/ping (no database) in turns at a fixed "
        "concurrency from a load generator pinned to its own core, and time the original "
        "system's query (oldest first, no index) on the same data. The last line gives both "
        "endpoints' requests/s, p50 and p99, the server's CPU per request of each, and "
        "ratio=real/trivial; with --metrics both, the real endpoint's figures with metrics "
        "off and on, and ratio=on/off.",
    )
    p.add_argument(
        "--views", type=positive_int, default=10_000_000, help="stored views (default 10000000)"
    )
    p.add_argument("--users", type=positive_int, default=100_000, help="users (default 100000)")
    p.add_argument(
        "--seconds",
        type=positive_float,
        default=15.0,
        help="seconds per endpoint, in 3 turns (default 15)",
    )
    p.add_argument(
        "--concurrency", type=positive_int, default=64, help="requests in flight (default 64)"
    )
    p.add_argument(
        "--metrics",
        choices=("off", "on", "both"),
        default="on",
        help="the server's Prometheus metrics (api.metrics) off, on (scraped every second), or"
        " both: a server each time off, on, on, off, the last line giving each side's best"
        " and ratio=on/off (default on)",
    )
    p.add_argument(
        "--history-days",
        type=nonneg_int,
        default=0,
        help="also create this many empty day partitions of user_product_hours before the"
        " loaded views, as a server keeping that much history has (retention."
        "user_product_hours_days, 90 by default): each lookup's plan holds every partition"
        " (default 0)",
    )


def _add_reports(sub) -> None:
    p = command(
        sub,
        "reports",
        cmd_bench_reports,
        "hourly report from the ingest-time counters versus the raw events",
        "Ingest, in a scratch database and through the consumer's writer, views and order "
        "lines all inside one hour, then time that hour's report from the counters kept at "
        "ingest and, in the same run, the straightforward query over the raw events (join to "
        "the catalog, distinct users per product, rank per category); both must give the same "
        "files. The last line gives both times and ratio=straightforward/report.",
    )
    p.add_argument("--views", type=positive_int, default=5_000_000, help="views (default 5000000)")
    p.add_argument(
        "--orders", type=positive_int, default=500_000, help="order lines (default 500000)"
    )
    p.add_argument("--seed", type=int, default=11, help="random seed (default 11)")


def _add_prune(sub) -> None:
    p = command(
        sub,
        "prune",
        cmd_bench_prune,
        "pruning 30 of 60 days while the ingest writes: its speed and the locks taken",
        "Generate views over the 60 days before today in a scratch database (inside "
        "PostgreSQL), run the ingest's writer flat out in another process, measure its "
        "events/s without pruning and then while the oldest 30 days are pruned, and sample "
        "the locks the prune holds on the event tables. The last line gives the prune time, "
        "both rates, the longest lock that blocks writes and ratio=during/without.",
    )
    p.add_argument(
        "--views", type=positive_int, default=20_000_000, help="stored views (default 20000000)"
    )
    p.add_argument(
        "--baseline-seconds",
        type=positive_float,
        default=15.0,
        help="how long the ingest is measured without pruning (default 15)",
    )
