"""Where the default consumer reads each partition from: what the database says it stored.

On every assignment the partitions start at the database's offsets (store/offsets.py);
those it has no row for start where the group's commit (or `auto.offset.reset`) says. After
every reconnect (the server may be a promoted standby that lacks the last transactions),
the database's offsets are read again on the new connection, before the batch in flight is
written on it; a partition the database has stored less of than this consumer had written
is read again from there. The batch in flight is still written (a no-op where its events
come back, thanks to `messageid`), but it cannot move the offset past the gap.

`Resume` is shared by two threads, one at a time: the consumer's loop owns it, and the
writer thread calls `reconnected` while the loop waits for the batch in flight.
"""

from __future__ import annotations

import logging

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from clickstream.ingest.raw import RawEvent
from clickstream.store import offsets
from clickstream.store.offsets import Marks

__all__ = ["Resume"]

log = logging.getLogger("clickstream.consume")

Key = tuple[str, int]


class Resume:
    """The next offset of each partition this member owns: as handed to the writer
    (`_next`), and as of the last batch the database confirmed (`_stored`)."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._next: dict[Key, int] = {}
        self._stored: dict[Key, int] = {}
        self._floors: dict[Key, int] = {}  # where each partition started at its assignment
        self._rewind: dict[Key, int] = {}

    def assign(
        self, consumer: Consumer, partitions: list[TopicPartition], stored: dict[Key, int]
    ) -> None:
        """Start `partitions` at the database's offsets (`stored`), else at the group's."""
        missing = [tp for tp in partitions if (tp.topic, tp.partition) not in stored]
        committed: dict[Key, int] = {}
        if missing:
            try:
                found = consumer.committed(missing, timeout=15)
                committed = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in found}
            except KafkaException as exc:
                log.warning("the group's committed offsets are unknown (%s)", exc.args[0])
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if key in stored:
                tp.offset = stored[key]
            start = stored.get(key, committed.get(key, 0))
            self._next[key] = self._stored[key] = self._floors[key] = start
        self._rewind = {}
        consumer.assign(partitions)
        if stored:
            log.info("reading from the offsets the database stored: %s", _text(stored, partitions))

    def revoke(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            for positions in (self._next, self._stored, self._floors, self._rewind):
                positions.pop((tp.topic, tp.partition), None)

    def marks(self, raw: list[RawEvent]) -> Marks:
        """The batch's offsets, each partition's range claimed from where it was read on."""
        marks = Marks.of(self.group, raw, self._next)
        for key, (_, after) in marks.ranges.items():
            self._next[key] = after
        return marks

    def stored(self, marks: Marks) -> None:
        """The batch of `marks` is written (past a gap, its offsets did not move: see
        `reconnected`, which read them)."""
        for key, (_, after) in marks.ranges.items():
            if key in self._stored:
                self._stored[key] = after

    def reconnected(self, conn: psycopg.Connection) -> None:
        """On a fresh connection: note the partitions the database has stored less of than
        this consumer had written. A partition whose row is gone gets its floor again."""
        floors = dict(self._floors)
        if not floors:
            return
        stored = offsets.record_floors(conn, self.group, floors)
        behind = {key: stored[key] for key, at in self._stored.items() if stored[key] < at}
        if behind:
            log.warning(
                "after reconnecting, the database has stored less than this consumer wrote"
                " (a failover to a standby that lacked the last transactions?): reading again"
                " from %s",
                _text(behind),
            )
            self._rewind.update(behind)

    def rewind(self, consumer: Consumer) -> bool:
        """Seek back where the database is behind; True when the batch just consumed must be
        dropped (every owned partition is sought back to what was handed to the writer)."""
        if not self._rewind:
            return False
        for key in self._rewind:
            if key in self._next:
                self._next[key] = self._stored[key] = min(self._rewind[key], self._next[key])
        try:
            for (topic, partition), offset in self._next.items():
                consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            # Not fetching yet (just assigned): seek again, dropping what comes meanwhile.
            log.warning("seeking back failed, trying again: %s", exc.args[0])
            self._rewind = dict(self._next)
            return True
        self._rewind = {}
        return True


def _text(stored: dict[Key, int], partitions: list[TopicPartition] | None = None) -> str:
    keys = sorted(stored if partitions is None else {(t.topic, t.partition) for t in partitions})
    return ", ".join(f"{t}[{p}] {stored[(t, p)]}" for t, p in keys if (t, p) in stored)
