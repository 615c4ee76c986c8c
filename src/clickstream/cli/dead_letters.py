"""`clickstream dead-letters list|replay|export`: inspect, replay and hand-fix dead letters."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from clickstream.cli._common import command, group, positive_int
from clickstream.config import Settings
from clickstream.errors import UsageError
from clickstream.ingest.cleaning import Reason
from clickstream.util.printable import preview, printable

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_arg(text: str) -> datetime:
    """`2026-11-24T13:00` (UTC unless it says otherwise) or an age such as `90m`, `6h`, `7d`."""
    age = _DURATION.fullmatch(text.strip())
    if age:
        amount, unit = age.groups()
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a time such as 2026-11-24T13:00Z or an age such as 90m, 6h, 7d; got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _stamp(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selection(args: argparse.Namespace, **extra):
    from clickstream.store.dead_letters import Selection

    return Selection(
        reason=getattr(args, "reason", None),
        topic=getattr(args, "topic", None),
        since=getattr(args, "since", None),
        **extra,
    )


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.store import dead_letters as store
    from clickstream.store.db import connect
    from clickstream.store.faults import database_errors

    selection = _selection(args)
    with (
        connect(settings, autocommit=True) as conn,
        database_errors(role=conn.info.user, privileges="SELECT"),
    ):
        counts = store.counts(conn, selection)
        entries = store.newest(conn, selection, args.limit)
    if args.json:
        document = {
            "counts": [{"reason": c, "pending": p, "replayed": r} for c, p, r in counts],
            "entries": [
                {
                    "id": e.id,
                    "topic": e.topic,
                    "partition": e.partition,
                    "offset": e.offset,
                    "reason": e.reason,
                    "received_at": _stamp(e.received_at),
                    "replayed_at": None if e.replayed_at is None else _stamp(e.replayed_at),
                    "replay_outcome": e.replay_outcome,
                    "payload_bytes": e.size,
                    "payload_head": preview(e.head, store.PREVIEW_BYTES),
                }
                for e in entries
            ],
        }
        sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    total = sum(p + r for _, p, r in counts)
    if not total:
        print("no dead letters" + (" match" if args.reason or args.topic or args.since else ""))
        return 0
    print(f"{total:,} dead letters by reason (pending / replayed):")
    for code, pending, replayed in counts:
        print(f"  {printable(code):<22} {pending:>10,} {replayed:>10,}")
    print(f"newest {len(entries)}:")
    for e in entries:
        where = f"{printable(e.topic)}[{e.partition}]@{e.offset}"
        print(f"  #{e.id}  {where}  {_stamp(e.received_at)}  {printable(e.reason)}")
        if e.replay_outcome is not None:
            print(f"      replayed {_stamp(e.replayed_at)}: {printable(e.replay_outcome)}")
        print(f"      {e.size:,} bytes: {preview(e.head, store.PREVIEW_BYTES)}")
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clickstream.lifecycle.replay import CHUNK, replay
    from clickstream.store import dead_letters as store
    from clickstream.store.db import connect
    from clickstream.store.faults import database_errors

    ids = tuple(args.id) if args.id else None
    selection = _selection(args, ids=ids)
    with (
        connect(settings, autocommit=True) as conn,
        database_errors(role=conn.info.user, privileges="SELECT, INSERT, UPDATE"),
    ):
        if ids is not None:
            found = {e.id for e in store.newest(conn, selection, len(ids))}
            missing = sorted(set(ids) - found)
            if missing:
                raise UsageError(f"no dead letter with id {', '.join(map(str, missing))}")
        total = store.pending_count(conn, selection)
        if not total:
            print("nothing to replay: no pending dead letter matches")
            return 0
        with tqdm(total=total, unit="letters", disable=total <= CHUNK or None) as bar:
            summary = replay(conn, settings, selection, on_progress=bar.update)
    rejected = sum(summary.still_rejected.values())
    print(
        f"replayed {summary.total:,} dead letters: {summary.stored:,} stored,"
        f" {summary.duplicate:,} already stored, {rejected:,} still rejected"
    )
    for code, n in sorted(summary.still_rejected.items()):
        print(f"  still rejected as {code}: {n:,} (kept, pending)")
    if summary.unknown_topic:
        print(
            f"  {summary.unknown_topic:,} from topics this configuration does not consume"
            f" (kept, pending): set kafka.views_topic / kafka.orders_topic to replay them"
        )
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.lifecycle.replay import export
    from clickstream.store import dead_letters as store
    from clickstream.store.db import connect
    from clickstream.store.faults import database_errors

    selection = _selection(args, pending_only=True)
    with (
        connect(settings, autocommit=True) as conn,
        database_errors(role=conn.info.user, privileges="SELECT"),
    ):
        found = store.topics(conn, selection)
        if len(found) > 1:
            raise UsageError(
                f"the dead letters come from {len(found)} topics"
                f" ({', '.join(printable(t) for t in found)}): export one topic at a time"
                " with --topic, so that the file can be produced back to it"
            )
        summary = export(conn, selection, args.out)
    topic = printable(found[0]) if found else "TOPIC"
    print(f"wrote {summary.written:,} payloads to {args.out}")
    if summary.reshaped:
        print(f"  {summary.reshaped:,} JSON payloads had line breaks, written as spaces")
    if summary.left_out:
        shown = ", ".join(map(str, summary.left_out[:20]))
        more = " …" if len(summary.left_out) > 20 else ""
        print(
            f"  left out {len(summary.left_out):,} that cannot be one UTF-8 line"
            f" (ids {shown}{more}): see `clickstream dead-letters list`"
        )
    print(
        f"fix them, then: clickstream produce {args.out} --topic {topic} --max-speed"
        " --keep-timestamps; then `clickstream dead-letters replay` marks them stored"
    )
    return 0


def register(sub) -> None:
    dead = group(
        sub,
        "dead-letters",
        "inspect, replay and export dead letters",
        "Inspect the events the consumer refused, replay them under the current rules and "
        "settings (each stored exactly once), or export their payloads to fix by hand.",
        metavar="ACTION",
        what="an action",
    )
    codes = [reason.value for reason in Reason]
    p = command(
        dead,
        "list",
        cmd_list,
        "counts by reason, then the newest dead letters",
        "Counts by reason code (pending and replayed), then the newest dead letters: id, "
        "topic[partition]@offset, received time, reason, replay outcome and the payload's "
        "first bytes, escaped (never interpreted: any byte shows as text or \\xNN).",
    )
    p.add_argument("--reason", choices=codes, metavar="CODE", help="only this reason code")
    p.add_argument("--topic", metavar="T", help="only dead letters from this topic")
    p.add_argument(
        "--since",
        type=since_arg,
        metavar="TIME",
        help="received at or after TIME: 2026-11-24T13:00Z (UTC by default) or an age: 6h, 7d",
    )
    p.add_argument(
        "--limit", type=positive_int, default=20, metavar="N", help="entries shown (default 20)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead")

    p = command(
        dead,
        "replay",
        cmd_replay,
        "clean pending dead letters again and store what now passes, exactly once",
        "Clean the pending dead letters again with the current rules and settings (e.g. after "
        "raising ingest.max_event_bytes) and store what now passes through the consumer's "
        "writer: a messageid already stored changes nothing. Each replayed dead letter is kept, "
        "marked with when and the outcome (stored, duplicate or still-rejected: reason); one "
        "still rejected stays pending. Replaying twice stores nothing new. Without --reason or "
        "--id: every pending dead letter.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--reason", choices=codes, metavar="CODE", help="only this reason code")
    which.add_argument(
        "--id", type=positive_int, nargs="+", metavar="ID", help="only these dead letters"
    )

    p = command(
        dead,
        "export",
        cmd_export,
        "write pending payloads as NDJSON to fix by hand and produce back",
        "Write the raw payloads of pending dead letters into FILE, one per line, to fix by "
        "hand and send back with `clickstream produce FILE --topic T --keep-timestamps` (the "
        "messageid rule keeps that safe). A UTF-8 payload without line breaks is written "
        "byte for byte; a JSON payload with line breaks (only possible between tokens) has "
        "them written as spaces; a payload that is not UTF-8, or has line breaks and is not "
        "JSON, cannot come back intact through a line-based file: it is left out and its id "
        "printed. One topic per file (--topic when the dead letters come from several).",
    )
    p.add_argument("--reason", choices=codes, metavar="CODE", help="only this reason code")
    p.add_argument("--topic", metavar="T", help="only dead letters from this topic")
    p.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the NDJSON file to write"
    )
