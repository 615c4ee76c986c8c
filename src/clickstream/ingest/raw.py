"""A Kafka record as the consumers hand it to the cleaning rules, and what its topic carries."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

__all__ = ["Kind", "RawEvent"]


class Kind(StrEnum):
    """What a topic carries; the consumer knows it from the topic name."""

    VIEW = "ProductView"
    ORDER = "OrderEvent"


class RawEvent(NamedTuple):
    kind: Kind
    topic: str
    partition: int
    offset: int
    value: bytes | None
    kafka_timestamp_ms: int | None
