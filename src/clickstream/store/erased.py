"""The ingest's side of an erasure: a gate the writers share and an erasure closes, and the
events of erased users that are still on the topics, skipped.

**The gate.** Each batch transaction takes a shared advisory lock (`skip_erased`); an erasure
or a `reconcile --fix` takes it exclusively (`close_gate`) for its transaction. So the batch
transactions in flight commit before the erasure starts (it sees their rows and deletes
them), and the next ones wait until it commits (they see its record). Nothing of the user
slips between the erasure's snapshot and its commit. The cost to the ingest is one lock per
batch, never a wait, except while an erasure or a repair runs.

**The skip.** An erasure keeps the keyed hash of the id and when it happened (`erasures`);
an event of that user with an event time before then is an event the user asked to have
erased, however late it is consumed (a lagging consumer, a redelivery): it is skipped, and
counted as `erased`. A bad record naming the user (by `privacy.named_ids`) with a Kafka
time before then is skipped likewise. Later events are the user's new activity and are
stored. The writer knows the erased hashes from a small cache per connection, read again
only when a new erasure is recorded (one indexed `max(id)` per batch tells): a batch costs
a hash per distinct user only when someone was ever erased.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from clickstream.ingest.cleaning import CleanBatch
from clickstream.ingest.event_time import format_timestamp
from clickstream.ingest.raw import Kind
from clickstream.lifecycle.privacy import named_ids, user_hash

__all__ = ["Skipped", "close_gate", "skip_erased", "use_key"]

log = logging.getLogger("clickstream.consume")

_GATE = 0x636C6B65  # "clke"


@dataclass(frozen=True)
class Skipped:
    """Events of erased users a batch did not store, per kind."""

    views: int = 0
    orders: int = 0

    @property
    def counts(self) -> tuple[int, int]:
        return self.views, self.orders


@dataclass
class _Known:
    last_id: int
    erased: dict[str, str]  # keyed hash -> the latest erasure's time, as events write it


# Per connection: the hash key and topics to recognise erased users with, and what is known.
_settings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_warned = False


def use_key(conn: psycopg.Connection, key: str | None, kinds: Mapping[str, Kind]) -> None:
    """Recognise erased users on this connection's writes with `privacy.hash_key`."""
    _settings[conn] = (key, kinds)


def close_gate(cur: psycopg.Cursor) -> None:
    """Close the gate for this transaction: in-flight batches first commit, new ones wait."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_GATE,))


@functools.lru_cache(maxsize=65_536)
def _hash(key: str, userid: str) -> str:
    return user_hash(key, userid)


# Enter the gate, then (a statement of its own, so a snapshot taken once the gate is open:
# an erasure that held it is seen) ask for the newest erasure; one round trip.
_ENTER = f"SELECT pg_advisory_xact_lock_shared({_GATE}); SELECT coalesce(max(id), 0) FROM erasures"


def _erased(cur: psycopg.Cursor) -> dict[str, str]:
    """Enter the gate; the erased hashes, read again only when an erasure was recorded since."""
    conn = cur.connection
    cur.execute(_ENTER)
    cur.nextset()
    (last,) = cur.fetchone()
    known = _known.get(conn)
    if known is None or known.last_id != last:
        rows = cur.execute("SELECT user_hash, max(erased_at) FROM erasures GROUP BY 1")
        known = _Known(last, {hashed: format_timestamp(at) for hashed, at in rows})
        _known[conn] = known
    return known.erased


def skip_erased(cur: psycopg.Cursor, batch: CleanBatch) -> tuple[CleanBatch, Skipped]:
    """Enter the gate, and take out of the batch the events erased users had before their
    erasure. Called first in the batch's transaction."""
    global _warned
    erased = _erased(cur)
    if not erased:
        return batch, Skipped()
    key, kinds = _settings.get(cur.connection, (None, {}))
    if key is None:
        if not _warned:
            log.warning(
                "privacy.hash_key is not set: %d erased users cannot be recognised, their"
                " events still on the topics are stored again",
                len(erased),
            )
            _warned = True
        return batch, Skipped()
    users = {row.userid for row in batch.views} | {row.userid for row in batch.order_lines}
    until = {u: at for u in users if (at := erased.get(_hash(key, u))) is not None}
    if not until and not batch.rejects:
        return batch, Skipped()
    views = [v for v in batch.views if v.viewed_at >= until.get(v.userid, "")]
    lines = [o for o in batch.order_lines if o.ordered_at >= until.get(o.userid, "")]
    orders = sum(1 for o in batch.order_lines if o.line == 1)
    kept_orders = sum(1 for o in lines if o.line == 1)
    rejects, skipped_views, skipped_orders = [], 0, 0
    for reject in batch.rejects:
        if _names_erased(reject.payload, reject.kafka_timestamp_ms, key, erased):
            if kinds.get(reject.topic) is Kind.ORDER:
                skipped_orders += 1
            else:
                skipped_views += 1
        else:
            rejects.append(reject)
    skipped = Skipped(
        skipped_views + len(batch.views) - len(views), skipped_orders + orders - kept_orders
    )
    if skipped == Skipped():
        return batch, skipped
    kept = dataclasses.replace(
        batch,
        views=views,
        order_lines=lines,
        rejects=rejects,
        orders=batch.orders - (orders - kept_orders),
    )
    return kept, skipped


def _names_erased(payload: bytes, kafka_ms: int | None, key: str, erased: dict[str, str]) -> bool:
    """A bad record naming an erased user, received before the erasure (no record time:
    received now, after it)."""
    if kafka_ms is None:
        return False
    received = format_timestamp(datetime.fromtimestamp(kafka_ms / 1000, UTC))
    return any(
        (at := erased.get(_hash(key, userid))) is not None and received < at
        for userid in named_ids(payload)
    )
