"""Kafka client settings and topic management (confluent-kafka), shared by every adapter.

Every client's configuration starts from `Brokers.config()` (`clickstream.kafka.security`):
the address, the security settings and `kafka.options`. A plain `host:port` string stands
for a PLAINTEXT listener (the embedded broker, tests). Every client logs through
`clickstream.kafka.logs.LOG`. Commands meet the broker first in
`ensure_topics`, which says within seconds, in one line, when it cannot be reached:
librdkafka itself would retry a refused connection forever.
"""

from __future__ import annotations

import re
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from clickstream.errors import Unavailable
from clickstream.kafka.logs import PROBE_LOG
from clickstream.kafka.security import Brokers
from clickstream.kafka.tls import explain as explain_tls

__all__ = [
    "Brokers",
    "admin_config",
    "as_brokers",
    "consumer_config",
    "ensure_topics",
    "producer_config",
    "reach",
]

REACH_SECONDS = 10.0
# librdkafka's "127.0.0.1:1/bootstrap: " in front and "(after 0ms in state CONNECT)" behind
_NOISE = re.compile(r"^\S+/(?:bootstrap|\d+): |\s*\(after \d+ms in state \w+\)$")


def as_brokers(brokers: Brokers | str) -> Brokers:
    """Text is the address of a PLAINTEXT listener (the embedded broker, tests)."""
    return brokers if isinstance(brokers, Brokers) else Brokers(brokers)


def admin_config(brokers: Brokers | str, **overrides) -> dict:
    return as_brokers(brokers).config(**overrides)


def producer_config(brokers: Brokers | str, **overrides) -> dict:
    config = {
        "acks": "all",
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "message.timeout.ms": 60_000,
    }
    config.update(overrides)
    return as_brokers(brokers).config(**config)


def consumer_config(
    brokers: Brokers | str, group: str, session_timeout_ms: int, **overrides
) -> dict:
    """Offsets are committed by hand, only after a batch is durable in PostgreSQL."""
    config = {
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
    return as_brokers(brokers).config(**config)


def reach(
    brokers: Brokers | str, timeout: float = REACH_SECONDS
) -> tuple[AdminClient, ClusterMetadata]:
    """An admin client and the cluster's metadata; `Unavailable` in one line when every
    bootstrap address is refused or unknown (at once) or nothing answers within `timeout`."""
    failures: list[KafkaError] = []
    admin = AdminClient(admin_config(brokers, logger=PROBE_LOG, error_cb=failures.append))
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin, admin.list_topics(timeout=min(0.5, timeout))
        except KafkaException:
            pass
        admin.poll(0)  # runs error_cb
        down = any(e.code() == KafkaError._ALL_BROKERS_DOWN for e in failures)
        if down or time.monotonic() >= deadline:
            cause = next((e for e in failures if e.code() != KafkaError._ALL_BROKERS_DOWN), None)
            why = _NOISE.sub("", cause.str()) if cause else f"no answer within {timeout:.0f}s"
            if cause is not None and cause.code() == KafkaError._BAD_MSG:
                why += " (is that a Kafka broker?)"
            if cause is not None and (cause.code() == KafkaError._SSL or "SSL" in why):
                why = explain_tls(as_brokers(brokers)) or why
            if cause is not None and cause.code() == KafkaError._AUTHENTICATION:
                why += _sasl_hint(as_brokers(brokers))
            raise Unavailable(f"cannot reach the Kafka broker at {brokers}: {why}")


def _sasl_hint(brokers: Brokers) -> str:
    """Which mechanism and user were refused: the operator checks these first."""
    properties = brokers.properties
    user = properties.get("sasl.username") or properties.get("sasl.oauthbearer.client.id")
    return f" (kafka.sasl_mechanism={properties.get('sasl.mechanism')}, user {user})"


def ensure_topics(
    brokers: Brokers | str, topics: list[str], partitions: int, timeout: float = 15
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin, metadata = reach(brokers)
    existing = metadata.topics
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
