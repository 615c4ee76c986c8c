"""The Spark engine reads again what the database lost, whatever its checkpoint says.

Spark's checkpoint records a micro-batch as done once its sink returned; a failover to a
standby that lacked the last transactions, or a restored backup, then holds less than the
checkpoint says. The sink records each micro-batch's offsets in the same transaction as its
rows (store/offsets.py), and after each micro-batch (and once at start) the driver writes
the database's offsets to a small file; the Python Kafka source reads it when it plans the
next micro-batch and starts each partition at the database's offset where that is behind
the checkpoint's (never before the partition's first record still on the broker). The
lost records are then in that micro-batch, and the rest of it changes nothing (`messageid`).

A partition the checkpoint has moved on but the database has no row for is read from its
beginning: the database lost every write of it (or the checkpoint predates this table).

The file lives on the driver's machine, where Spark plans micro-batches; Spark's own
`kafka` source cannot be rewound this way (docs/how-to/postgres-failover.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from clickstream.store.batches import BatchStore

__all__ = ["rewound", "save_stored"]

Offsets = dict[str, dict[str, int]]  # as the source's: {topic: {"0": next_offset}}


def save_stored(store: BatchStore, path: str) -> None:
    """Write the database's offsets of this consumer group where the source finds them."""
    found: Offsets = {}
    for (topic, partition), offset in store.stored_offsets().items():
        found.setdefault(topic, {})[str(partition)] = offset
    scratch = Path(f"{path}.tmp")
    scratch.write_text(json.dumps(found))
    os.replace(scratch, path)  # the source never reads half a file


def stored(path: str | None) -> Offsets | None:
    """The database's offsets as last saved, or None when there is no file."""
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def rewound(
    path: str | None,
    start: Offsets,
    first: Callable[[str, int], int],
    gone: set[tuple[str, str, int]],
) -> Offsets:
    """`start` with each partition moved back to the database's offset where that is behind
    (no row: to the beginning). The file is used once: the next micro-batch starts where
    this one ends.

    Never before `first(topic, partition)`, the first record on the broker: below it,
    Kafka's retention deleted what the database lost, and the database's offset cannot move
    over records that are not there (store/offsets.py). Such a partition is read again from
    its first record once per offset the database is stuck at (`gone`, the caller's memory),
    not in every micro-batch; `consume` with the default engine moves the offset on.
    """
    database = stored(path)
    if database is None:
        return start
    Path(path).unlink(missing_ok=True)
    moved: Offsets = {}
    for topic, partitions in start.items():
        for partition, at in partitions.items():
            there = database.get(topic, {}).get(partition, 0)
            if there < at and (topic, partition, there) not in gone:
                oldest = first(topic, int(partition))
                if there < oldest:
                    gone.add((topic, partition, there))
                at = min(at, max(there, oldest))
            moved.setdefault(topic, {})[partition] = at
    return moved
