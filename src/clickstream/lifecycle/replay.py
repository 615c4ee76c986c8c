"""Dead letters fixed and sent back: replay under the current rules, export for hand fixes.

**Replay** cleans each stored payload again with the consumer's own rules and settings
(`clean_batch`, e.g. after raising `ingest.max_event_bytes`), with the Kafka record's time
kept at ingest as the fallback event time. What now passes goes through the consumer's own
writer (`write_batch`), so a `messageid` already stored changes nothing, and the derived
tables and report counters follow as at ingest. The rows and the marks of a chunk of dead
letters commit in one transaction: a replay stopped halfway leaves no event stored without
its mark, and a second replay stores nothing new. A dead letter the rules still reject
whose `messageid` is stored meanwhile (fixed by hand and sent back) is marked `duplicate`.

**Export** writes the payloads as NDJSON, one a line, for `clickstream produce`. A payload
is written as it is when it is UTF-8 without a line break; a JSON payload with line breaks
can only have them between tokens, so they are written as spaces (the same JSON on one
line); anything else (not UTF-8, or line breaks in what is not JSON) cannot come back
intact through a line-based file and is left out, its id reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psycopg

from clickstream.config import Settings
from clickstream.errors import RejectedByDatabase
from clickstream.ingest.cleaning import CleanBatch, Reason
from clickstream.ingest.event_time import to_epoch_ms
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.store import dead_letters as store
from clickstream.store.batches import clean
from clickstream.store.erased import use_key
from clickstream.store.faults import database_errors
from clickstream.store.writer import write_batch

__all__ = ["ExportSummary", "ReplaySummary", "export", "ndjson_line", "replay"]

CHUNK = 2000


@dataclass
class ReplaySummary:
    stored: int = 0
    duplicate: int = 0
    still_rejected: dict[str, int] = field(default_factory=dict)  # by reason code
    unknown_topic: int = 0

    @property
    def total(self) -> int:
        rejected = sum(self.still_rejected.values())
        return self.stored + self.duplicate + rejected + self.unknown_topic


def _clean_one(
    settings: Settings, letter: store.Stored, kind: Kind
) -> tuple[CleanBatch, str | None]:
    stamp = letter.kafka_timestamp
    raw = RawEvent(
        kind,
        letter.topic,
        letter.partition,
        letter.offset,
        letter.payload,
        to_epoch_ms(stamp) if stamp else None,
    )
    # The event-time rule as the consumer applied it when the record arrived.
    cleaned = clean(settings, [raw], now=letter.received_at)
    return cleaned, (cleaned.rejects[0].reason if cleaned.rejects else None)


# Each kind's key table: one row per stored messageid, its primary key the index a replay
# asks (the event tables have none by messageid, and are partitioned by day).
_KEYS = {Kind.VIEW: "view_messageids", Kind.ORDER: "order_messageids"}


def _stored(conn: psycopg.Connection, kind: Kind, messageids: list[str]) -> set[str]:
    """Which of these messageids are stored (or were, and their day is pruned)."""
    if not messageids:
        return set()
    rows = conn.execute(
        f"SELECT messageid FROM {_KEYS[kind]} WHERE messageid = ANY(%s)", (messageids,)
    )
    return {row[0] for row in rows}


def _messageid(payload: bytes) -> str | None:
    """The messageid of a payload the rules still reject, when it has one to read."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    messageid = event.get("messageid") if type(event) is dict else None
    return messageid if type(messageid) is str and messageid else None


def _write(conn: psycopg.Connection, batch: CleanBatch, owners: dict[str, int]) -> dict[int, str]:
    """Store the batch; when the database refuses its content, write each event alone to
    find which (a fault of the database propagates: nothing of the chunk is committed).

    What the key tables hold before the write is what it skips as stored already; the
    dead letters chosen are locked, so no other replay stores them meanwhile."""
    before = _stored(conn, Kind.VIEW, [v.messageid for v in batch.views])
    before |= _stored(conn, Kind.ORDER, list({o.messageid for o in batch.order_lines}))
    try:
        with database_errors(writing_events=True):
            write_batch(conn, batch)
    except RejectedByDatabase as refused:
        if len(owners) == 1:
            (id_,) = owners.values()
            return {id_: f"still-rejected: {Reason.REJECTED_BY_DATABASE}: {refused.detail}"}
        outcomes: dict[int, str] = {}
        for messageid, id_ in owners.items():
            one = CleanBatch(
                views=[v for v in batch.views if v.messageid == messageid],
                order_lines=[o for o in batch.order_lines if o.messageid == messageid],
            )
            outcomes |= _write(conn, one, {messageid: id_})
        return outcomes
    return {id_: "duplicate" if m in before else "stored" for m, id_ in owners.items()}


def _replay_chunk(
    conn: psycopg.Connection, letters: list[store.Stored], settings: Settings
) -> dict[int, str]:
    kinds = settings.kinds
    outcomes: dict[int, str] = {}
    batch = CleanBatch()
    owners: dict[str, int] = {}  # messageid -> the dead letter that stores it
    fixed: dict[Kind, dict[str, list[int]]] = {Kind.VIEW: {}, Kind.ORDER: {}}
    for letter in letters:
        kind = kinds.get(letter.topic)
        if kind is None:
            continue  # a topic this configuration does not consume: left as it was
        cleaned, rejected = _clean_one(settings, letter, kind)
        if rejected is not None:
            outcomes[letter.id] = f"still-rejected: {rejected}"
            messageid = _messageid(letter.payload)
            if messageid is not None:
                fixed[kind].setdefault(messageid, []).append(letter.id)
            continue
        messageid = (cleaned.views or cleaned.order_lines)[0].messageid
        if messageid in owners:  # the same event dead-lettered twice
            outcomes[letter.id] = "duplicate"
            continue
        owners[messageid] = letter.id
        batch.views += cleaned.views
        batch.order_lines += cleaned.order_lines
        batch.orders += cleaned.orders
    if owners:
        outcomes |= _write(conn, batch, owners)
    # Still rejected, but fixed by hand and sent back: the event is stored under its id.
    for kind, candidates in fixed.items():
        for messageid in _stored(conn, kind, list(candidates)):
            outcomes.update(dict.fromkeys(candidates[messageid], "duplicate"))
    store.mark(conn, outcomes)
    return outcomes


def replay(
    conn: psycopg.Connection,
    settings: Settings,
    selection: store.Selection,
    on_progress: Callable[[int], None] = lambda n: None,
) -> ReplaySummary:
    """Replay the pending dead letters of `selection`, a chunk per transaction (`conn` in
    autocommit mode, so that each chunk commits on its own)."""
    summary = ReplaySummary()
    use_key(conn, settings.privacy_hash_key, settings.kinds)
    after = 0
    while True:
        with conn.transaction():
            letters = store.pending_batch(conn, selection, after, CHUNK)
            if not letters:
                return summary
            outcomes = _replay_chunk(conn, letters, settings)
        after = letters[-1].id
        summary.unknown_topic += len(letters) - len(outcomes)
        for outcome in outcomes.values():
            if outcome == "stored":
                summary.stored += 1
            elif outcome == "duplicate":
                summary.duplicate += 1
            else:
                code = outcome.removeprefix("still-rejected: ").split(":", 1)[0]
                summary.still_rejected[code] = summary.still_rejected.get(code, 0) + 1
        on_progress(len(letters))


def ndjson_line(payload: bytes) -> bytes | None:
    """The payload as one NDJSON line (without its newline), or None when it cannot be one."""
    if not payload.strip():
        return None  # `produce` skips blank lines
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if b"\n" not in payload and b"\r" not in payload:
        return payload
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return payload.replace(b"\r", b" ").replace(b"\n", b" ")


@dataclass
class ExportSummary:
    written: int = 0
    reshaped: int = 0  # JSON whose line breaks became spaces
    left_out: list[int] = field(default_factory=list)


def export(conn: psycopg.Connection, selection: store.Selection, out: Path) -> ExportSummary:
    """Write the payloads into `out` (replaced atomically), one per line."""
    summary = ExportSummary()
    partial = out.with_name(f".{out.name}.partial")
    with open(partial, "wb") as handle:
        for id_, payload in store.payloads(conn, selection):
            line = ndjson_line(payload)
            if line is None:
                summary.left_out.append(id_)
                continue
            summary.reshaped += line is not payload
            handle.write(line + b"\n")
            summary.written += 1
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, out)
    return summary
