"""Consumer lag: the rule, and what a consumer of the ingest group reports on a real broker.

The broker-side cases are the two that were wrong: a consumer that has consumed nothing since
its partitions were assigned (its position is unset, so the work done is the committed
offset), and a backlog on the embedded Tansu, whose ListOffsets(latest) answers short of
the partition's end.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from conftest import Pipeline

from clickstream.generate import generate
from clickstream.ingest.consumer import Ingestor
from clickstream.kafka.client import consumer_config
from clickstream.kafka.lag import PartitionLag, consumer_lag, describe, partition_lag

UNSET = -1001


# -- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("high", "position", "committed", "low", "lag"),
    [
        (100, 60, 40, 0, 40),  # consumed up to 60: the position counts, not the commit
        (100, UNSET, 40, 0, 60),  # nothing consumed since assignment: the committed offset
        (100, UNSET, 100, 0, 0),  # restarted on fully committed partitions
        (100, UNSET, UNSET, 30, 70),  # nothing committed: from the first offset kept
        (100, UNSET, UNSET, UNSET, 100),  # ... which is 0 when unknown
        (0, UNSET, UNSET, UNSET, 0),  # an empty partition
        (UNSET, 60, 40, 0, None),  # no fetch response yet: the end is unknown
        (100, 120, UNSET, 0, 0),  # a watermark older than the position: never negative
    ],
)
def test_partition_lag(high, position, committed, low, lag):
    assert partition_lag(high, position, committed, low) == lag


def test_describe_sums_per_topic_and_says_unknown():
    lags = [
        PartitionLag("views", 0, 1200),
        PartitionLag("views", 1, 3),
        PartitionLag("orders", 0, 0),
        PartitionLag("clicks", 0, 5),
        PartitionLag("clicks", 1, None),
    ]
    assert describe(lags) == "clicks unknown, orders 0, views 1,203"
    assert describe([]) == "none (no partitions assigned)"


# -- on a real broker --------------------------------------------------------------------------


def restarted_lag(p: Pipeline) -> dict[str, int]:
    """Lag per topic as a member of the ingest group sees it right after a (re)start.

    It is given every partition at the group's committed offsets and consumes nothing, as a
    restarted consumer before its first record: its position is unset. The watermarks are
    the ones its fetch responses bring.
    """
    settings = p.settings
    consumer = Consumer(
        consumer_config(p.bootstrap, settings.kafka_consumer_group, 6000, **{"client.id": "lag"})
    )
    try:
        consumer.assign(
            [
                TopicPartition(topic, n)
                for topic in settings.topics
                for n in range(settings.kafka_partitions)
            ]
        )
        deadline = time.monotonic() + 30
        lags = consumer_lag(consumer)
        while any(lag is None for *_, lag in lags):
            assert time.monotonic() < deadline, f"no fetch response in 30 s: {lags}"
            time.sleep(0.1)
            lags = consumer_lag(consumer)
        assert all(tp.offset == UNSET for tp in consumer.position(consumer.assignment()))
    finally:
        consumer.close()
    assert len(lags) == len(settings.topics) * settings.kafka_partitions
    totals = dict.fromkeys(settings.topics, 0)
    for topic, _, lag in lags:
        totals[topic] += lag
    return totals


@pytest.mark.parametrize("target", ["pipeline", "external_pipeline"])
def test_lag_is_zero_when_committed_and_exactly_the_backlog_otherwise(request, target):
    p: Pipeline = request.getfixturevalue(target)
    views_topic, orders_topic = p.settings.kafka_views_topic, p.settings.kafka_orders_topic
    data = generate(users=100, products=50, categories=5, views=6000, orders=600, seed=31)
    assert restarted_lag(p) == {views_topic: 0, orders_topic: 0}, "empty partitions"

    p.produce_views(data.views[:2000])
    p.produce_orders(data.orders[:200])
    assert restarted_lag(p) == {views_topic: 2000, orders_topic: 200}, "nothing committed"
    first = p.consume()
    assert first.consumed == 2200
    assert restarted_lag(p) == {views_topic: 0, orders_topic: 0}, "fully committed"

    # A backlog produced in many record batches: Tansu's ListOffsets answers short of it.
    p.produce_views(data.views[2000:])
    p.produce_orders(data.orders[200:])
    assert restarted_lag(p) == {views_topic: 4000, orders_topic: 400}, "the backlog"

    # The consumer drains exactly that backlog, judging "drained" by the same lag.
    second = p.consume()
    assert second.consumed == 4400
    assert second.duplicates == 0
    assert restarted_lag(p) == {views_topic: 0, orders_topic: 0}


def test_a_consumer_restarted_on_committed_partitions_drains_on_lag_zero(pipeline, caplog):
    data = generate(users=50, products=20, categories=3, views=500, orders=50, seed=32)
    pipeline.produce_views(data.views)
    pipeline.produce_orders(data.orders)
    pipeline.consume()

    ingestor = Ingestor(pipeline.settings, pipeline.bootstrap)
    stats = []
    thread = threading.Thread(target=lambda: stats.append(ingestor.run(until_idle=0.5)))
    with caplog.at_level("INFO", logger="clickstream.consume"):
        thread.start()
        thread.join(60)
        ingestor.stop.set()
        thread.join(30)
    assert "lag 0: drained, stopping" in caplog.text, caplog.text
    assert stats[0].consumed == 0


def test_a_member_the_group_gives_no_partition_stops_after_waiting_for_a_share(
    pipeline, caplog, monkeypatch
):
    """Three members, two partitions in all: one is spare, and still drains and stops."""
    import dataclasses

    from clickstream.ingest import consumer as ingest
    from clickstream.kafka.client import ensure_topics

    monkeypatch.setattr(ingest, "SPARE_MEMBER_SECONDS", 3.0)
    settings = dataclasses.replace(
        pipeline.settings,
        kafka_views_topic=pipeline.settings.kafka_views_topic + "-one",
        kafka_orders_topic=pipeline.settings.kafka_orders_topic + "-one",
        kafka_partitions=1,
    )
    ensure_topics(pipeline.bootstrap, list(settings.topics), 1)
    ingestors = [Ingestor(settings, pipeline.bootstrap) for _ in range(3)]
    stats: list = []
    threads = [
        threading.Thread(target=lambda i=i: stats.append(i.run(until_idle=0.5))) for i in ingestors
    ]
    with caplog.at_level("INFO", logger="clickstream.consume"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for ingestor in ingestors:
            ingestor.stop.set()
    assert not any(thread.is_alive() for thread in threads)
    assert caplog.text.count("drained, stopping") == 3, caplog.text
