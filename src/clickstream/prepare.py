"""Make a broker and a database ready for the pipeline: topics exist, schema is current."""

from __future__ import annotations

from clickstream.config import Settings
from clickstream.kafka.client import ensure_topics
from clickstream.services.embedded import bootstrap_servers
from clickstream.store.db import connect

__all__ = ["prepare"]


def prepare(settings: Settings) -> None:
    ensure_topics(bootstrap_servers(settings), list(settings.topics), settings.kafka_partitions)
    with connect(settings):
        pass
