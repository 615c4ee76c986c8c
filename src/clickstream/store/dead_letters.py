"""Queries of the dead-letter store: counts, the newest entries, what a replay takes and marks.

A dead letter is *pending* until a replay stored its event or found it stored already
(`replay_outcome` `stored` or `duplicate`); a replay that still rejects it records when and
why, and it stays pending. The reason code is the part of `reason` before the colon.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

__all__ = [
    "Entry",
    "Selection",
    "Stored",
    "counts",
    "mark",
    "newest",
    "payloads",
    "pending_batch",
    "pending_count",
    "topics",
]

PREVIEW_BYTES = 64
_CODE = sql.SQL("split_part(reason, ':', 1)")
_PENDING = sql.SQL("(replay_outcome IS NULL OR replay_outcome NOT IN ('stored', 'duplicate'))")


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command works on; None means any."""

    reason: str | None = None
    topic: str | None = None
    since: datetime | None = None
    ids: tuple[int, ...] | None = None
    pending_only: bool = False

    def where(self) -> tuple[sql.Composable, dict]:
        parts: list[sql.Composable] = [sql.SQL("true")]
        params: dict = {}
        if self.reason is not None:
            parts.append(sql.SQL("{} = %(reason)s").format(_CODE))
            params["reason"] = self.reason
        if self.topic is not None:
            parts.append(sql.SQL("topic = %(topic)s"))
            params["topic"] = self.topic
        if self.since is not None:
            parts.append(sql.SQL("received_at >= %(since)s"))
            params["since"] = self.since
        if self.ids is not None:
            parts.append(sql.SQL("id = ANY(%(ids)s)"))
            params["ids"] = list(self.ids)
        if self.pending_only:
            parts.append(_PENDING)
        return sql.SQL(" AND ").join(parts), params


@dataclass(frozen=True)
class Entry:
    id: int
    topic: str
    partition: int
    offset: int
    reason: str
    received_at: datetime
    replayed_at: datetime | None
    replay_outcome: str | None
    size: int
    head: bytes  # the first PREVIEW_BYTES + 1 bytes: enough to tell that more follows


@dataclass(frozen=True)
class Stored:
    """A dead letter as a replay needs it."""

    id: int
    topic: str
    partition: int
    offset: int
    payload: bytes
    kafka_timestamp: datetime | None
    received_at: datetime


def counts(conn: psycopg.Connection, selection: Selection) -> list[tuple[str, int, int]]:
    """(reason code, pending, replayed) per code, most pending first."""
    where, params = selection.where()
    query = sql.SQL(
        "SELECT {code}, count(*) FILTER (WHERE {pending}), count(*) FILTER (WHERE NOT {pending})"
        " FROM dead_letters WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 3 DESC, 1"
    ).format(code=_CODE, pending=_PENDING, where=where)
    return [tuple(row) for row in conn.execute(query, params)]


def newest(conn: psycopg.Connection, selection: Selection, limit: int) -> list[Entry]:
    where, params = selection.where()
    query = sql.SQL(
        'SELECT id, topic, partition, "offset", reason, received_at, replayed_at,'
        " replay_outcome, length(payload), substring(payload FROM 1 FOR {head})"
        " FROM dead_letters WHERE {where} ORDER BY id DESC LIMIT %(limit)s"
    ).format(head=sql.Literal(PREVIEW_BYTES + 1), where=where)
    rows = conn.execute(query, params | {"limit": limit})
    return [Entry(*row[:-1], bytes(row[-1])) for row in rows]


def pending_count(conn: psycopg.Connection, selection: Selection) -> int:
    where, params = selection.where()
    query = sql.SQL("SELECT count(*) FROM dead_letters WHERE {} AND {}").format(where, _PENDING)
    return conn.execute(query, params).fetchone()[0]


def pending_batch(
    conn: psycopg.Connection, selection: Selection, after: int, limit: int
) -> list[Stored]:
    """The next pending dead letters after id `after`, locked for this transaction; those a
    concurrent replay holds are skipped, so two replays never take the same one."""
    where, params = selection.where()
    query = sql.SQL(
        'SELECT id, topic, partition, "offset", payload, kafka_timestamp, received_at'
        " FROM dead_letters WHERE {} AND {} AND id > %(after)s ORDER BY id LIMIT %(limit)s"
        " FOR UPDATE SKIP LOCKED"
    ).format(where, _PENDING)
    rows = conn.execute(query, params | {"after": after, "limit": limit})
    return [Stored(*row[:4], bytes(row[4]), *row[5:]) for row in rows]


def mark(conn: psycopg.Connection, outcomes: dict[int, str]) -> None:
    """Record each dead letter's replay: now, with its outcome."""
    if outcomes:
        conn.execute(
            "UPDATE dead_letters d SET replayed_at = now(), replay_outcome = u.outcome"
            " FROM unnest(%s::bigint[], %s::text[]) AS u(id, outcome) WHERE d.id = u.id",
            (list(outcomes), list(outcomes.values())),
        )


def topics(conn: psycopg.Connection, selection: Selection) -> list[str]:
    where, params = selection.where()
    query = sql.SQL("SELECT DISTINCT topic FROM dead_letters WHERE {} ORDER BY 1").format(where)
    return [row[0] for row in conn.execute(query, params)]


def payloads(conn: psycopg.Connection, selection: Selection) -> Iterator[tuple[int, bytes]]:
    """(id, payload) in id order, streamed through a server-side cursor."""
    where, params = selection.where()
    query = sql.SQL("SELECT id, payload FROM dead_letters WHERE {} ORDER BY id").format(where)
    with conn.transaction(), conn.cursor(name="dead_letter_payloads") as cur:
        cur.itersize = 1000
        cur.execute(query, params)
        for id_, payload in cur:
            yield id_, bytes(payload)
