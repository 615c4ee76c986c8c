"""`clickstream prune` and `reconcile`: the stored data's life after ingest."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from clickstream.cli._common import command, hour_arg
from clickstream.config import Settings


def _describe_cutoffs(limits) -> str:
    parts = []
    for kind, cutoff in limits.by_kind.items():
        when = "kept forever" if cutoff is None else f"before {cutoff:%Y-%m-%dT%H:%M:%SZ}"
        parts.append(f"{kind.replace('_', ' ')} {when}")
    return "retention: " + "; ".join(parts)


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clickstream.store.db import connect
    from clickstream.store.retention import cutoffs, plan, prune

    now = datetime.now(UTC)
    limits = cutoffs(settings, now)
    print(_describe_cutoffs(limits))
    with connect(settings, autocommit=True) as conn:
        if args.dry_run:
            doomed = plan(conn, limits)
            for item in doomed:
                print(f"would remove {item.table} {item.what}: {item.rows_text}")
            print(f"dry run: {len(doomed)} items would go, nothing was removed")
            return 0
        started = time.monotonic()
        with tqdm(unit="step", file=sys.stderr) as bar:

            def planned(doomed: list) -> None:
                bar.total = len(doomed)
                bar.refresh()

            result = prune(conn, limits, now, on_plan=planned, on_step=lambda _: bar.update())
    for line in result.lines():
        print(f"removed {line}")
    statement, longest = result.longest_statement
    slowest = f"; longest statement {longest:.3f}s ({statement})" if statement else ""
    print(
        f"pruned {len(result.removed)} items in {time.monotonic() - started:.1f}s,"
        f" created {len(result.created)} partitions ahead{slowest}"
    )
    return 0


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.lifecycle.reconcile import run_reconcile

    return run_reconcile(settings, hour=args.hour, since=args.since, fix=args.fix)


def register(sub) -> None:
    p = command(
        sub,
        "prune",
        cmd_prune,
        "drop raw data older than the retention settings",
        "Remove what is older than the retention settings (retention.events_days, "
        "retention.user_product_hours_days, retention.dead_letters_days), in whole UTC days: "
        "event and derived tables' day partitions are detached concurrently and dropped, old "
        "messageid keys and dead letters deleted in small batches. Safe while the ingest "
        "runs. Counters and written reports are kept. Also creates the next days' partitions.",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )

    p = command(
        sub,
        "reconcile",
        cmd_reconcile,
        "recompute derived tables and counters from raw events",
        "Recompute, from the stored raw events, user_product_hours and the report counters "
        "of the chosen hours (default: every hour with stored events), print each difference "
        "and, with --fix, repair it (one transaction per hour). Hours whose raw events were "
        "pruned are listed as pruned. Exit code 1 when differences remain.",
    )
    window = p.add_mutually_exclusive_group()
    window.add_argument(
        "--hour", type=hour_arg, metavar="YYYY-MM-DDTHH", help="one UTC hour, e.g. 2026-11-24T13"
    )
    window.add_argument(
        "--since",
        type=hour_arg,
        metavar="YYYY-MM-DDTHH",
        help="every hour from this one to the current one",
    )
    p.add_argument("--fix", action="store_true", help="repair the differences found")
