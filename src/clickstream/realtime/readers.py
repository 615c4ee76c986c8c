"""The live view's reader processes: each reads and cleans a share of the views topic.

A reader assigns its partitions itself (no consumer group, nothing committed), seeks to
"now minus the window" by record timestamp, cleans what it reads with the consumer's own
rules (`clean_batch`) and sends the server process only what the window needs, as plain
tuples `(messageid, userid, productid, source, at_ms)`, marshalled. Records read before a
partition first reaches its end are sent apart, as history. See `RealtimeSource` for why the
seek is only a shortcut on Tansu.
"""

from __future__ import annotations

import contextlib
import marshal
import multiprocessing
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection

from confluent_kafka import Consumer, KafkaException, TopicPartition

from clickstream.errors import ClickstreamError
from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.event_time import EventTimeRule, epoch_ms
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.kafka.records import is_partition_eof, raw_event
from clickstream.kafka.security import Brokers
from clickstream.util.process import tune_garbage_collector

__all__ = ["Share", "partitions", "read_share"]

BATCH_SIZE = 10_000
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Share:
    """What one reader process reads: its partitions, from `since_ms` on."""

    brokers: Brokers
    topic: str
    partitions: tuple[int, ...]
    since_ms: int
    max_event_bytes: int
    rule: EventTimeRule


def partitions(brokers: Brokers, topic: str) -> list[int]:
    consumer = _consumer(brokers)
    try:
        found = consumer.list_topics(topic, timeout=10).topics.get(topic)
    finally:
        consumer.close()
    if found is None or found.error is not None or not found.partitions:
        raise ClickstreamError(f"topic {topic} has no partitions yet")
    return sorted(found.partitions)


def _consumer(brokers: Brokers) -> Consumer:
    return Consumer(
        brokers.config(
            **{
                # librdkafka wants a group id even for assigned partitions; nothing is
                # committed.
                "group.id": f"clickstream-realtime-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                # "reached the end" events: how we know the backlog was read (Tansu's high
                # watermarks lag behind, so comparing offsets with them would stop short).
                "enable.partition.eof": True,
            }
        )
    )


def read_share(share: Share, sender: Connection, stop) -> None:
    """A reader process: seek, then send ("views", live, history, received, caught up) per
    batch read; ("failed", why) ends it. It also ends when its parent is gone."""
    tune_garbage_collector()
    parent = multiprocessing.parent_process()
    try:
        consumer = _consumer(share.brokers)
        try:
            offsets, reread = _seek(consumer, share)
            sender.send_bytes(marshal.dumps(("assigned", offsets, reread)))
            behind = set(offsets)  # partitions that have not reached their end yet
            kinds = {share.topic: Kind.VIEW}
            while not stop.is_set() and (parent is None or parent.is_alive()):
                messages = _next_batch(consumer)
                if not messages:
                    continue
                live: list[RawEvent] = []
                history: list[RawEvent] = []
                for message in messages:
                    event = raw_event(message, kinds)
                    if event is None:
                        if is_partition_eof(message):
                            behind.discard(message.partition())
                        continue
                    (history if event.partition in behind else live).append(event)
                batch = (
                    "views",
                    _rows(live, share),
                    _rows(history, share),
                    len(live) + len(history),
                    not behind,
                )
                sender.send_bytes(marshal.dumps(batch))
        finally:
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the parent is gone or stopping: nobody to tell
    except Exception as exc:  # sent to the parent, which logs it and restarts the readers
        with contextlib.suppress(OSError):
            sender.send_bytes(marshal.dumps(("failed", f"{type(exc).__name__}: {exc}")))


def _next_batch(consumer: Consumer) -> list:
    """What has arrived, or else the first message within `POLL_SECONDS` and what came with
    it. `consume(n, timeout)` waits for n messages or the timeout: below a full batch, every
    event waited for the timeout before the window saw it."""
    messages = consumer.consume(BATCH_SIZE, timeout=0)
    if messages:
        return messages
    first = consumer.poll(POLL_SECONDS)
    if first is None:
        return []
    return [first, *consumer.consume(BATCH_SIZE - 1, timeout=0)]


def _rows(raw: list[RawEvent], share: Share) -> list[tuple]:
    """The window's rows of what cleaning keeps, event times by the one rule."""
    if not raw:
        return []
    rows = clean_batch(raw, max_event_bytes=share.max_event_bytes, rule=share.rule).views
    return [(m, u, p, s, epoch_ms(at)) for m, u, p, s, at in rows]


def _seek(consumer: Consumer, share: Share) -> tuple[dict[int, int], list[int]]:
    """Assign the share's partitions at `since_ms`; return the offsets, and the partitions
    read from their first offset because the broker's answer could not be confirmed."""
    wanted = [TopicPartition(share.topic, p, share.since_ms) for p in share.partitions]
    found = consumer.offsets_for_times(wanted, timeout=10)
    marks = {
        tp.partition: consumer.get_watermark_offsets(tp, timeout=10, cached=False) for tp in found
    }
    # -1: no record that recent, start at the end; clamp whatever else into the log.
    offsets = {
        tp.partition: min(
            max(tp.offset if tp.offset >= 0 else marks[tp.partition][1], marks[tp.partition][0]),
            marks[tp.partition][1],
        )
        for tp in found
    }
    reread = sorted(_unconfirmed(consumer, share, offsets, marks))
    for partition in reread:
        offsets[partition] = marks[partition][0]
    consumer.assign([TopicPartition(share.topic, p, o) for p, o in sorted(offsets.items())])
    return offsets, reread


def _unconfirmed(
    consumer: Consumer, share: Share, offsets: dict[int, int], marks: dict
) -> set[int]:
    """Partitions whose answer is not confirmed by the record just before it.

    A real Kafka answers exactly; Tansu answers an offset that can skip recent records.
    The answer holds when the record before it is older than `since_ms`; otherwise (or
    when that record cannot be read) the partition is read from its first offset.
    """
    check = {p: o - 1 for p, o in offsets.items() if o > marks[p][0]}
    if not check:
        return set()
    consumer.assign([TopicPartition(share.topic, p, o) for p, o in check.items()])
    wrong: set[int] = set()
    deadline = time.monotonic() + 10
    try:
        while check and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.2):
                partition = message.partition()
                if message.error() is not None or check.get(partition) != message.offset():
                    continue
                del check[partition]
                if message.timestamp()[1] >= share.since_ms:
                    wrong.add(partition)
    finally:
        consumer.unassign()
    return wrong | set(check)
