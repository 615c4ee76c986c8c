"""Make a broker and a database ready for the pipeline: topics exist, schema is current.

What `clickstream up` and the demo do; the one place besides `clickstream migrate` and a
consumer's first start that changes the schema.
"""

from __future__ import annotations

from clickstream.config import Settings
from clickstream.kafka.client import ensure_topics
from clickstream.kafka.security import brokers
from clickstream.store.db import connect
from clickstream.store.schema import migrate

__all__ = ["prepare"]


def prepare(settings: Settings) -> list[str]:
    """Create the topics and migrate the schema; return the migrations applied."""
    ensure_topics(brokers(settings), list(settings.topics), settings.kafka_partitions)
    with connect(settings, check_schema=False) as conn:
        return migrate(conn)
