"""A batch the database refuses for its content: find the events it refuses, keep the rest.

Cleaning lets through everything the schema accepts, so a refusal (SQLSTATE class 22 or 23)
comes from something cleaning cannot know, such as a constraint an administrator added.
The batch is split in halves down to the single events the database refuses; those are
dead-lettered as `rejected-by-database: <what PostgreSQL said>`, the rest is stored.

All of it happens in one transaction, each part a savepoint, so a search that finds more
refusals than `ingest.max_rejected_share` of the batch allows leaves nothing behind, not
even the dead letters found on the way: it raises `SystematicRefusal`, a fault, and the
batch is retried whole. Bad events are a few; a database refusing many valid ones is not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from clickstream.errors import RejectedByDatabase, SystematicRefusal
from clickstream.ingest.cleaning import CleanBatch, Reason, Reject
from clickstream.ingest.raw import RawEvent
from clickstream.store.faults import database_errors
from clickstream.store.offsets import Marks
from clickstream.store.writer import NOTHING_WRITTEN, WriteResult, write_batch

__all__ = ["store_around_refusals"]

log = logging.getLogger("clickstream.consume")


@dataclass
class _Search:
    """The refused events found so far, and how many the batch may have."""

    conn: psycopg.Connection
    clean: Callable[[list[RawEvent]], CleanBatch]
    budget: int
    found: list[tuple[RawEvent, RejectedByDatabase]] = field(default_factory=list)

    def refused(self, event: RawEvent, refused: RejectedByDatabase) -> None:
        self.found.append((event, refused))
        if len(self.found) > self.budget:
            raise SystematicRefusal(
                f"the database refused more than {self.budget} events of one batch, the last"
                f" one with: {refused.detail}",
                "more than ingest.max_rejected_share are not bad events but a fault: look for"
                " a recent constraint, trigger or column change; the batch is retried whole",
                refused.sqlstate,
            )

    def store(self, raw: list[RawEvent]) -> WriteResult:
        """Store part of the batch; recurse into halves while the database refuses."""
        if not raw:
            return NOTHING_WRITTEN
        try:
            with database_errors(writing_events=True):
                return write_batch(self.conn, self.clean(raw))
        except RejectedByDatabase as refused:
            if len(raw) == 1:
                self.refused(raw[0], refused)
                return NOTHING_WRITTEN
        half = len(raw) // 2
        return self.store(raw[:half]).plus(self.store(raw[half:]))


def store_around_refusals(
    conn: psycopg.Connection,
    raw: list[RawEvent],
    clean: Callable[[list[RawEvent]], CleanBatch],
    max_share: float,
    marks: Marks | None = None,
) -> WriteResult:
    """Store `raw`, which the database refused as a whole, dead-lettering what it refuses;
    `marks`, the batch's offsets, are recorded in the same transaction.

    Raises `SystematicRefusal` when the refused events are more than `max_share` of the
    batch (and more than one; none at all when `max_share` is 0).
    """
    search = _Search(conn, clean, budget=max(int(max_share * len(raw)), 1 if max_share else 0))
    with conn.transaction():
        half = len(raw) // 2
        written = search.store(raw[:half]).plus(search.store(raw[half:]))
        if search.found:
            written = written.plus(write_batch(conn, CleanBatch(rejects=_rejects(search.found))))
        if marks is not None:
            with conn.cursor() as cur:
                marks.record(cur)
    if search.found:
        log.warning(
            "the database refused %d of %d events of a batch (at most %d allowed by"
            " ingest.max_rejected_share): dead-lettered them",
            len(search.found),
            len(raw),
            search.budget,
        )
    return written


def _rejects(found: list[tuple[RawEvent, RejectedByDatabase]]) -> list[Reject]:
    rejects = []
    for event, refused in found:
        reason = f"{Reason.REJECTED_BY_DATABASE}: {refused.detail}"
        log.error("offset %s of %s[%s]: %s", event.offset, event.topic, event.partition, reason)
        rejects.append(
            Reject(
                event.topic,
                event.partition,
                event.offset,
                event.value or b"",
                reason,
                event.kafka_timestamp_ms,
            )
        )
    return rejects
