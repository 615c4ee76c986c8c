"""`clickstream consume`, `serve`, `realtime`, `report` and `demo`: the running system."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from clickstream.cli._common import (
    command,
    hour_arg,
    port_number,
    positive_float,
    positive_int,
    stop_on_signals,
)
from clickstream.config import Settings
from clickstream.errors import UsageError

log = logging.getLogger("clickstream")


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.kafka.security import brokers
    from clickstream.metrics import serve_consumer_metrics

    if args.metrics_port is not None:
        settings = dataclasses.replace(settings, ingest_metrics_port=args.metrics_port)
    if settings.ingest_metrics_port:
        serve_consumer_metrics(settings)
        log.info(
            "metrics at http://%s:%d/metrics",
            settings.ingest_metrics_host,
            settings.ingest_metrics_port,
        )
    stop = stop_on_signals()
    if args.engine == "spark":
        from clickstream.spark.session import check_prerequisites

        check_prerequisites()
        from clickstream.spark.engine import SparkIngestor

        ingestor = SparkIngestor(settings, brokers(settings), master=args.master, stop=stop)
    else:
        from clickstream.ingest.consumer import Ingestor

        if args.master:
            raise UsageError("--master applies to --engine spark only")
        ingestor = Ingestor(settings, brokers(settings), stop=stop)
    stats = ingestor.run(until_idle=args.until_idle)
    took = time.monotonic() - stats.started
    print(
        f"consumed {stats.consumed:,} events in {took:.1f}s: stored {stats.views:,} views and"
        f" {stats.order_lines:,} order lines of {stats.orders:,} orders,"
        f" {stats.dead_letters:,} dead letters, {stats.duplicates:,} duplicates skipped,"
        f" {stats.erased:,} events of erased users skipped, {stats.replaced_times_text()}"
    )
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.demo import run_demo

    duration = args.duration if args.duration is not None else settings.demo_duration
    return run_demo(settings, duration=duration, stop=stop_on_signals())


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.api.server import serve
    from clickstream.errors import ServiceDown, Unavailable
    from clickstream.store.db import connect

    # An older schema stops the server here (exit 2); a database that is down does not:
    # the server answers what it can and /healthz says what is missing until it is back.
    try:
        with connect(settings):
            pass
    except (ServiceDown, Unavailable) as exc:
        log.warning("%s; serving anyway, /healthz answers 503 until the database is back", exc)

    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    workers = args.workers or settings.api_workers
    log.info("serving on http://%s:%d (API docs at /docs), %d worker(s)", host, port, workers)
    access_log = settings.api_access_log and not args.no_access_log
    serve(settings, host=host, port=port, workers=workers, access_log=access_log)
    return 0


def cmd_realtime(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.realtime.terminal import run_terminal

    run_terminal(settings, stop_on_signals(), once=args.once)
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from clickstream.reports import write_reports
    from clickstream.reports.hours import last_complete_hour
    from clickstream.reports.scheduler import run_every_hour

    out = args.out or settings.reports_dir
    if args.every_hour:
        print(f"reporting every closed hour into {out}; Ctrl-C stops", file=sys.stderr)
        run_every_hour(
            settings, out, stop_on_signals(), on_report=lambda s: print(*s.lines(), sep="\n")
        )
        return 0
    hour = None if args.all_time else args.hour or last_complete_hour(datetime.now(UTC))
    print(*write_reports(settings, hour, out).lines(), sep="\n")
    return 0


def register(sub) -> None:
    _add_consume(sub)
    _add_report(sub)
    _add_demo(sub)
    _add_serve(sub)
    _add_realtime(sub)


def _add_consume(sub) -> None:
    p = command(
        sub,
        "consume",
        cmd_consume,
        "clean both topics into PostgreSQL",
        "Read the views and orders topics in one consumer group, clean the events, store them "
        "with COPY (each messageid once), dead-letter bad events with a reason, and commit "
        "offsets only after the rows are durable. Error policy: only an event whose content "
        "the database refuses (SQLSTATE class 22/23) is dead-lettered, and only while such "
        "events are at most ingest.max_rejected_share of a batch; every other database error "
        "(connection, privilege, schema, read-only, timeout, disk full) is a fault, retried "
        "with backoff up to ingest.retry_max_seconds and logged with its cause and remedy, "
        "nothing committed meanwhile. Run several to share the partitions. "
        "An event's time is its own timestamp unless that is missing, broken, before 2000, "
        "more than events.max_ahead_seconds (5) ahead of or events.max_behind_seconds "
        "(7 days) behind its Kafka record's timestamp: then the record's, and the "
        "replacement is counted in the progress log and the summary. On first start it "
        "creates or upgrades the schema when its role may, unless database.auto_migrate is "
        "false (then an older schema stops it with exit code 2). "
        "SIGTERM or Ctrl-C finishes the current batch and stops.",
    )
    p.add_argument(
        "--until-idle",
        type=positive_float,
        metavar="SECONDS",
        help="exit once no new event arrived for that long and the partitions this member "
        "owns have lag 0; never in the middle of a rebalance (drain and stop)",
    )
    p.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="N",
        help="serve Prometheus metrics at http://ingest.metrics_host:N/metrics"
        " (default: ingest.metrics_port; 0 turns them off)",
    )
    p.add_argument(
        "--engine",
        choices=("python", "spark"),
        default="python",
        help="python (default): this process consumes; spark: the same job as a Spark "
        "Structured Streaming query (needs clickstream[spark] and Java 17+)",
    )
    p.add_argument(
        "--master",
        metavar="URL",
        help="Spark master for --engine spark (default: spark.master, local[*])",
    )


def _add_report(sub) -> None:
    p = command(
        sub,
        "report",
        cmd_report,
        "write the hourly category reports",
        "Write category_viewed_H.csv, category_bought_H.csv and conversion_rates_H.csv for one "
        "UTC hour H (default: the last complete hour), each file atomically; a rerun gives the "
        "same bytes. Events of products missing from the catalog are left out and counted. "
        "--every-hour keeps running: it writes each hour shortly after it closes, catches up "
        "the hours it missed while stopped, and rewrites an hour that received late events. "
        "It never changes the schema: on an older one it stops with exit code 2 and says to "
        "run `clickstream migrate`.",
    )
    window = p.add_mutually_exclusive_group()
    window.add_argument(
        "--hour",
        type=hour_arg,
        metavar="YYYY-MM-DDTHH",
        help="the UTC hour to report, e.g. 2026-11-24T13",
    )
    window.add_argument(
        "--all-time", action="store_true", help="cover every stored event (file suffix 'all')"
    )
    window.add_argument(
        "--every-hour", action="store_true", help="keep running and report every closed hour"
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="folder to write into (default: reports_dir)"
    )


def _add_demo(sub) -> None:
    p = command(
        sub,
        "demo",
        cmd_demo,
        "run everything at once on embedded services with generated data",
        "Start the embedded services, generate data, load the catalog, produce and consume "
        "events and show them arriving in PostgreSQL.",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        help="how long to run (default: demo.duration, $CLICKSTREAM_DEMO_DURATION, 120)",
    )


def _add_serve(sub) -> None:
    p = command(
        sub,
        "serve",
        cmd_serve,
        "serve the recommendation API and the dashboard",
        "Serve the HTTP API (OpenAPI docs at /docs) with uvicorn. SIGTERM or Ctrl-C lets the "
        "requests in flight finish, then stops. With CLICKSTREAM_API_KEY set, every /api/ "
        "request needs the key in the X-API-Key header. It never changes the schema and "
        "needs only SELECT: on an older schema it stops with exit code 2 and says to run "
        "`clickstream migrate` (a running server answers /healthz and lookups with 503).",
    )
    p.add_argument("--host", help="address to listen on (default: api.host, 127.0.0.1)")
    p.add_argument("--port", type=port_number, help="port to listen on (default: api.port, 8000)")
    p.add_argument(
        "--workers", type=positive_int, help="worker processes (default: api.workers, 1)"
    )
    p.add_argument(
        "--no-access-log", action="store_true", help="do not log every request (api.access_log)"
    )


def _add_realtime(sub) -> None:
    p = command(
        sub,
        "realtime",
        cmd_realtime,
        "the live 5-minute view in the terminal",
        "Read the views topic straight from Kafka (as the dashboard's server does) and show "
        "active users, views per category and views per platform over the last "
        "realtime.window_seconds, redrawn every second. Events are placed by the consumer's "
        "event time (a timestamp too far from its Kafka record's takes the record's); one "
        "still ahead of this clock by more than events.max_ahead_seconds is counted as "
        "future, not shown. Ctrl-C exits.",
    )
    p.add_argument("--once", action="store_true", help="print the view once, then exit")
