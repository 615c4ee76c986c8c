"""Kafka client settings and topic management (confluent-kafka), shared by every adapter."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from clickstream.errors import Unavailable

__all__ = ["consumer_config", "ensure_topics", "producer_config"]


def producer_config(bootstrap: str, **overrides) -> dict:
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "message.timeout.ms": 60_000,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group: str, session_timeout_ms: int, **overrides) -> dict:
    """Offsets are committed by hand, only after a batch is durable in PostgreSQL."""
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(100, min(1000, session_timeout_ms // 6)),
        # A database outage blocks the loop while the writer retries; stay in the group.
        "max.poll.interval.ms": 900_000,
        "fetch.wait.max.ms": 100,
    }
    config.update(overrides)
    return config


def ensure_topics(bootstrap: str, topics: list[str], partitions: int, timeout: float = 15) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise Unavailable(f"cannot reach the broker at {bootstrap}: {exc.args[0]}") from exc
    missing = [
        NewTopic(t, num_partitions=partitions, replication_factor=1)
        for t in topics
        if t not in existing
    ]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise Unavailable(f"cannot create topic {topic}: {exc.args[0]}") from exc
