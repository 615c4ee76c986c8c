"""The event-time rule end to end: a view stamped 2099 is stored at its Kafka record's time.

Unit cases of the rule are in test_events.py; here the real broker stamps the record and
the consumer, the derived tables and the recently-viewed lookup all see the same time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from clickstream.ingest.event_time import format_timestamp


def _view(messageid: str, user: str, product: str, stamp: str) -> bytes:
    return orjson.dumps(
        {
            "event": "ProductView",
            "messageid": messageid,
            "userid": user,
            "properties": {"productid": product},
            "context": {"source": "ios"},
            "timestamp": stamp,
        }
    )


def _send(bootstrap: str, topic: str, *values: bytes) -> None:
    """Produce the values as they are: `clickstream produce` would stamp the send time."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value, key=b"user-1")
    assert producer.flush(30) == 0


def _record_times(bootstrap: str, topic: str, partitions: int) -> dict[bytes, int]:
    """Every record's value -> its Kafka timestamp (ms), read back from the topic."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "read-back", "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    found: dict[bytes, int] = {}
    ended: set[int] = set()
    try:
        while len(ended) < partitions:
            for message in consumer.consume(100, timeout=1):
                if message.error() is not None:
                    ended.add(message.partition())
                else:
                    found[message.value()] = message.timestamp()[1]
    finally:
        consumer.close()
    return found


def test_a_view_stamped_2099_is_stored_at_its_record_time_and_counted(pipeline):
    settings = pipeline.settings
    hour_now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    future = _view("m-2099", "user-1", "product-z", "2099-06-01T12:00:00.000Z")
    order = orjson.dumps(
        {
            "event": "OrderEvent",
            "messageid": "o-2099",
            "userid": "user-1",
            "orderid": 1,
            "lineitems": [{"productid": "product-z", "quantity": 1}],
            "timestamp": "2099-06-01T12:00:00.000Z",
        }
    )
    _send(pipeline.bootstrap, settings.kafka_views_topic, future)
    _send(pipeline.bootstrap, settings.kafka_orders_topic, order)
    # Stamped after the 2099 view's record was written, so it is the newer of the two.
    later = _view("m-later", "user-1", "product-a", format_timestamp(datetime.now(UTC)))
    _send(pipeline.bootstrap, settings.kafka_views_topic, later)

    result = pipeline.cli("consume", "--until-idle", "2")
    assert result.returncode == 0, result.stderr
    assert "stored 2 views and 1 order lines of 1 orders" in result.stdout
    assert "2 event times replaced (ahead 2)" in result.stdout

    record_ms = _record_times(
        pipeline.bootstrap, settings.kafka_views_topic, settings.kafka_partitions
    )[future]
    record_time = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=record_ms)
    assert pipeline.query("SELECT viewed_at FROM product_views WHERE messageid = 'm-2099'") == [
        (record_time,)
    ]
    (ordered_at,) = pipeline.query("SELECT DISTINCT ordered_at FROM order_lines")[0]
    assert ordered_at < hour_now + timedelta(hours=2)
    # No counter or recently-viewed row for a future hour, and the later view is on top.
    for table in ("user_product_hours", "report_view_hours", "report_order_hours"):
        (newest,) = pipeline.query(f"SELECT max(hour) FROM {table}")[0]
        assert hour_now <= newest <= hour_now + timedelta(hours=1), table
    assert pipeline.query(
        "SELECT productid FROM user_product_hours WHERE userid = 'user-1'"
        " ORDER BY viewed_at DESC, productid"
    ) == [("product-a",), ("product-z",)]
