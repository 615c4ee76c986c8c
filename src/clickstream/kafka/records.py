"""Kafka messages as the cleaning rules' input, with one policy for what the broker reports.

The consumer and the live view both read records this way: a record becomes a `RawEvent`;
the end of a partition is a notice, not a record; any other error is logged and skipped,
unless librdkafka says it is fatal, which raises.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException, Message

from clickstream.ingest.raw import Kind, RawEvent

__all__ = ["is_partition_eof", "raw_event"]

log = logging.getLogger("clickstream.kafka")


def is_partition_eof(message: Message) -> bool:
    error = message.error()
    return error is not None and error.code() == KafkaError._PARTITION_EOF


def raw_event(message: Message, kinds: Mapping[str, Kind]) -> RawEvent | None:
    """The record as a `RawEvent` (its kind from its topic); None when it is no record."""
    error = message.error()
    if error is not None:
        if error.code() != KafkaError._PARTITION_EOF:
            if error.fatal():
                raise KafkaException(error)
            log.warning("broker reported: %s", error)
        return None
    topic = message.topic()
    _, timestamp = message.timestamp()
    # tuple.__new__: the named tuple's own constructor is a Python call, per record
    return tuple.__new__(
        RawEvent,
        (
            kinds[topic],
            topic,
            message.partition(),
            message.offset(),
            message.value(),
            timestamp if timestamp > 0 else None,
        ),
    )
