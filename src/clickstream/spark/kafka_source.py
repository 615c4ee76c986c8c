"""Kafka as a Spark streaming source, written with Spark's Python data source API.

Spark's own `kafka` source needs its connector jar on the classpath (`--packages`); this one
needs only confluent-kafka, which the project depends on anyway. Offsets are
`{topic: {partition: next_offset}}` and Spark keeps them in its checkpoint: the source itself
remembers nothing. Each Kafka partition's range of a micro-batch is one input partition, so
one task reads it in order (a user's events stay in order).

Where a partition ends is taken from the high watermark of a fetch response, not from
ListOffsets: Tansu answers ListOffsets(latest) with the base offset of the last record batch
plus one, which would leave the tail of a multi-record batch unread until more data arrives.
A small consumer in the driver keeps fetching at the end of each partition for that purpose.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows

from clickstream.ingest.raw import Kind, RawEvent
from clickstream.kafka.records import is_partition_eof, raw_event
from clickstream.kafka.security import Brokers
from clickstream.spark import resume

__all__ = ["PROPERTY_PREFIX", "KafkaSource", "SCHEMA"]

NAME = "clickstream_kafka"
PROPERTY_PREFIX = "kafka."  # options carrying a librdkafka property (security, kafka.options)
SCHEMA = "topic string, partition int, offset long, value binary, timestamp_ms long"
_ARROW_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("value", pa.binary()),
        ("timestamp_ms", pa.int64()),
    ]
)
_CHUNK = 20_000  # records per Arrow batch a task hands to Spark
_READ_TIMEOUT = 120.0  # seconds a task may wait for records the broker said it has

Offsets = dict[str, dict[str, int]]  # JSON keys are strings: {topic: {"0": next_offset}}


@dataclass(frozen=True)
class KafkaRange(InputPartition):
    """The records [start, end) of one Kafka partition: one Spark task."""

    topic: str
    partition: int
    start: int
    end: int


class KafkaSource(DataSource):
    """`spark.readStream.format("clickstream_kafka")`; options are set by the engine."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema) -> DataSourceStreamReader:
        return KafkaStreamReader(dict(self.options))


class KafkaStreamReader(DataSourceStreamReader):
    """Plans micro-batches on the driver; `read` runs in the tasks.

    Options: `bootstrap.servers`, `kafka.<property>` for each librdkafka property of
    `Brokers.properties`, `topics` (JSON: each topic's event kind), `group.id` (its
    committed offsets are where a brand-new query starts), `max_events` (the default read
    limit of a micro-batch) and `stop_file`: once that file exists no new data is admitted
    and the file `<stop_file>.ack` says so, which lets the engine stop the query between
    micro-batches. `rewind_file` holds the database's offsets, which win where they are
    behind (spark/resume.py).
    """

    def __init__(self, options: dict[str, str]) -> None:
        self.brokers = Brokers(
            options["bootstrap.servers"],
            {
                name.removeprefix(PROPERTY_PREFIX): value
                for name, value in options.items()
                if name.startswith(PROPERTY_PREFIX)
            },
        )
        self.kinds = {topic: Kind(kind) for topic, kind in json.loads(options["topics"]).items()}
        self.topics = list(self.kinds)
        self.group = options["group.id"]
        self.max_events = int(options.get("max_events", "0"))
        self.stop_file = options.get("stop_file")
        self.rewind_file = options.get("rewind_file")
        self._gone: set[tuple[str, str, int]] = set()  # see resume.rewound
        self._ends: _EndWatcher | None = None  # driver only; created on first use

    # -- driver side --------------------------------------------------------------------------

    def _watcher(self) -> _EndWatcher:
        if self._ends is None:
            self._ends = _EndWatcher(self.brokers, self.topics)
        return self._ends

    def initialOffset(self) -> Offsets:
        """The group's committed offsets where it has them, else each partition's first
        (the first micro-batch then moves back to the database's where they are behind)."""
        return self._watcher().starts(self.group)

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_events) if self.max_events > 0 else ReadAllAvailable()

    def latestOffset(self, start: Offsets, limit: ReadLimit) -> Offsets:
        if self.stop_file and os.path.exists(self.stop_file):
            Path(self.stop_file + ".ack").touch()
            return start
        ends = self._watcher().ends()
        if isinstance(limit, ReadMaxRows):
            return admit(start, ends, limit.max_rows)
        return ends

    def reportLatestOffset(self) -> Offsets | None:
        return self._ends.last if self._ends is not None else None

    def partitions(self, start: Offsets, end: Offsets) -> list[KafkaRange]:
        start = resume.rewound(self.rewind_file, start, self._watcher().first, self._gone)
        ranges = []
        for topic, partitions in end.items():
            for partition, stop in partitions.items():
                first = start.get(topic, {}).get(partition, 0)
                if stop > first:
                    ranges.append(KafkaRange(topic, int(partition), first, stop))
        return ranges

    def commit(self, end: Offsets) -> None:
        """Nothing to do: Spark's checkpoint is the source of truth for offsets."""

    def stop(self) -> None:
        if self._ends is not None:
            self._ends.close()
            self._ends = None

    # -- task side ----------------------------------------------------------------------------

    def read(self, partition: KafkaRange) -> Iterator[pa.RecordBatch]:
        return read_range(self.brokers, self.group, self.kinds, partition)


def admit(start: Offsets, ends: Offsets, max_events: int) -> Offsets:
    """At most `max_events` records past `start`, shared by the partitions in proportion."""
    waiting = {
        (topic, partition): max(end - start.get(topic, {}).get(partition, 0), 0)
        for topic, partitions in ends.items()
        for partition, end in partitions.items()
    }
    total = sum(waiting.values())
    if total <= max_events:
        return ends
    admitted: Offsets = {}
    for (topic, partition), count in waiting.items():
        first = start.get(topic, {}).get(partition, 0)
        share = min(count, max(count * max_events // total, 1 if count else 0))
        admitted.setdefault(topic, {})[partition] = first + share
    return admitted


class _EndWatcher:
    """A consumer parked at the end of every partition, for the fetch responses' watermarks."""

    def __init__(self, brokers: Brokers, topics: list[str]) -> None:
        self._brokers = brokers
        self._consumer = Consumer(
            brokers.config(
                **{
                    "group.id": "clickstream-spark-offsets",  # never joins or commits
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 100,
                    "max.partition.fetch.bytes": 65536,
                    "fetch.max.bytes": 1 << 20,
                    "queued.max.messages.kbytes": 1024,
                }
            )
        )
        metadata = self._consumer.list_topics(timeout=15)
        self._partitions = []
        for topic in topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                raise KafkaException(f"topic {topic} does not exist")
            self._partitions += [TopicPartition(topic, p) for p in sorted(found.partitions)]
        self._consumer.assign(
            [TopicPartition(t.topic, t.partition, OFFSET_END) for t in self._partitions]
        )
        self.last: Offsets | None = None

    def starts(self, group: str) -> Offsets:
        probe = Consumer(self._brokers.config(**{"group.id": group}))
        try:
            committed = probe.committed(self._partitions, timeout=15)
        finally:
            probe.close()
        offsets: Offsets = {}
        for tp in committed:
            start = tp.offset
            if start < 0:
                start, _ = self._consumer.get_watermark_offsets(tp, timeout=15, cached=False)
            offsets.setdefault(tp.topic, {})[str(tp.partition)] = max(start, 0)
        return offsets

    def first(self, topic: str, partition: int) -> int:
        """The partition's first record still on the broker."""
        tp = TopicPartition(topic, partition)
        return self._consumer.get_watermark_offsets(tp, timeout=15, cached=False)[0]

    def ends(self) -> Offsets:
        """Every partition's next offset as the latest fetch response gave it."""
        deadline = time.monotonic() + 15
        while True:
            self._consumer.consume(100_000, timeout=0)  # drop what was fetched
            highs = [
                self._consumer.get_watermark_offsets(tp, cached=True)[1] for tp in self._partitions
            ]
            if all(high >= 0 for high in highs):
                break
            if time.monotonic() > deadline:
                raise KafkaException("no fetch response from the broker within 15s")
            self._consumer.consume(100_000, timeout=0.05)
        ends: Offsets = {}
        for tp, high in zip(self._partitions, highs, strict=True):
            ends.setdefault(tp.topic, {})[str(tp.partition)] = high
        # Park at the end again, so the next fetches bring watermarks rather than records.
        self._consumer.assign(
            [
                TopicPartition(tp.topic, tp.partition, high)
                for tp, high in zip(self._partitions, highs, strict=True)
            ]
        )
        self.last = ends
        return ends

    def close(self) -> None:
        self._consumer.close()


def read_range(
    brokers: Brokers, group: str, kinds: Mapping[str, Kind], part: KafkaRange
) -> Iterator[pa.RecordBatch]:
    """The records of one range as Arrow batches, read in offset order."""
    consumer = Consumer(
        brokers.config(
            **{
                "group.id": group,  # assigned, never joins; offsets are Spark's
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 100,
            }
        )
    )
    try:
        consumer.assign([TopicPartition(part.topic, part.partition, part.start)])
        last = part.end - 1
        position = part.start
        deadline = time.monotonic() + _READ_TIMEOUT
        events: list[RawEvent] = []
        while position <= last:
            messages = consumer.consume(min(_CHUNK, part.end - position), timeout=0.5)
            if messages:
                deadline = time.monotonic() + _READ_TIMEOUT
            for message in messages:
                if is_partition_eof(message):
                    if message.offset() >= part.end:
                        position = part.end  # what is left of the range holds no records
                    continue
                event = raw_event(message, kinds)
                if event is None or event.offset > last:
                    continue
                position = event.offset + 1
                events.append(event)
            if len(events) >= _CHUNK or (position > last and events):
                yield _batch(part, events)
                events = []
            if time.monotonic() > deadline:
                raise KafkaException(
                    f"{part.topic}[{part.partition}]: records {position}..{last} did not arrive"
                )
    finally:
        consumer.close()


def _batch(part: KafkaRange, events: list[RawEvent]) -> pa.RecordBatch:
    count = len(events)
    return pa.RecordBatch.from_arrays(
        [
            pa.array([part.topic] * count, pa.string()),
            pa.array([part.partition] * count, pa.int32()),
            pa.array([e.offset for e in events], pa.int64()),
            pa.array([e.value for e in events], pa.binary()),
            pa.array([e.kafka_timestamp_ms for e in events], pa.int64()),
        ],
        schema=_ARROW_SCHEMA,
    )
