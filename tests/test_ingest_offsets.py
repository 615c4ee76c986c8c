"""The database, not Kafka, says how far each partition is stored (store/offsets.py).

Each batch records its partitions' next offset in its own transaction, through every path
that commits a batch (the plain write, a batch the database partly refuses); a consumer
resumes from there, so what a restore (or a failover) took from the database is read again
even though the group's commits in Kafka are past it.
"""

from __future__ import annotations

import orjson
from test_ingest import fast, make_stream

from clickstream.ingest.cleaning import CleanBatch
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.store.db import connect
from clickstream.store.offsets import Marks, read
from clickstream.store.writer import write_batch

GROUP = "ingest-test"


def _raw(partition: int, first: int, after: int) -> list[RawEvent]:
    return [RawEvent(Kind.VIEW, "views", partition, n, b"{}", 0) for n in range(first, after)]


def test_a_batch_marks_each_partition_from_its_lowest_offset_to_past_its_highest():
    # Partitions interleaved in runs, and a run out of order (a rewind within the batch).
    raw = _raw(0, 10, 13) + _raw(1, 4, 6) + _raw(0, 7, 9) + _raw(0, 13, 14)[::-1]
    raw += [RawEvent(Kind.ORDER, "orders", 0, 3, b"{}", 0)]
    assert Marks.of(GROUP, raw).ranges == {
        ("views", 0): (7, 14),
        ("views", 1): (4, 6),
        ("orders", 0): (3, 4),
    }
    # Where the consumer read a partition from counts, offsets without a record included;
    # a partition the batch has no record of is not marked.
    starts = {("views", 1): 2, ("views", 0): 9, ("views", 2): 0}
    assert Marks.of(GROUP, raw, starts).ranges == {
        ("views", 0): (7, 14),
        ("views", 1): (2, 6),
        ("orders", 0): (3, 4),
    }


def test_an_offset_moves_forward_only_over_what_is_stored(pipeline):
    with connect(pipeline.settings) as conn:

        def write(partition: int, first: int, after: int) -> dict[tuple[str, int], int]:
            write_batch(conn, CleanBatch(), Marks.of(GROUP, _raw(partition, first, after)))
            return read(conn, GROUP)

        assert write(0, 0, 10) == {("views", 0): 10}
        assert write(1, 5, 7) == {("views", 0): 10, ("views", 1): 7}
        # Past a gap (the database lost 10..19): the rows are stored, the offset stays.
        assert write(0, 20, 30)[("views", 0)] == 10
        # Read again from the gap, it moves; a batch behind it (a redelivery) moves nothing.
        assert write(0, 10, 25)[("views", 0)] == 25
        assert write(0, 0, 5)[("views", 0)] == 25
        # Another consumer group has offsets of its own.
        write_batch(conn, CleanBatch(), Marks.of("other", _raw(0, 0, 3)))
        assert read(conn, "other") == {("views", 0): 3}
        assert read(conn, GROUP)[("views", 0)] == 25


def _stored_offsets(pipeline) -> dict[tuple[str, int], int]:
    rows = pipeline.query(
        "SELECT topic, partition, next_offset FROM ingest_offsets WHERE consumer_group = %s",
        (pipeline.settings.kafka_consumer_group,),
    )
    return {(topic, partition): offset for topic, partition, offset in rows}


def test_every_batch_records_its_offsets_with_its_rows_refused_ones_included(pipeline):
    pipeline = fast(pipeline)
    with connect(pipeline.settings) as conn:
        conn.execute(
            "ALTER TABLE product_views ADD CONSTRAINT no_recalled"
            " CHECK (productid <> 'product-recalled')"
        )
    stream = make_stream(views=400, orders=40, seed=27, bad_every=50)
    refused = orjson.loads(stream.views[100])
    refused["properties"]["productid"] = "product-recalled"
    stream.views[100] = orjson.dumps(refused)
    pipeline.produce_views(stream.views)
    pipeline.produce_orders(stream.orders)
    stats = pipeline.consume()
    assert stats.dead_letters == len(stream.bad) + 1

    # Exactly where the group's commits are: every record, dead letters included.
    assert _stored_offsets(pipeline) == {
        key: offset for key, offset in pipeline.committed().items() if offset
    }


def test_a_consumer_resumes_from_the_database_not_from_kafka(pipeline):
    """As after restoring a backup, or a failover to a standby that lacked the last
    transactions: the database lost events whose offsets Kafka's group has committed."""
    pipeline = fast(pipeline)
    stream = make_stream(views=600, orders=0, seed=28, bad_every=None)
    pipeline.produce_views(stream.views[:300])
    pipeline.consume()
    before = _stored_offsets(pipeline)
    assert len(before) == pipeline.settings.kafka_partitions  # each has views of both halves
    pipeline.produce_views(stream.views[300:])
    pipeline.consume()
    assert pipeline.query("SELECT count(*) FROM product_views") == [(600,)]

    # The restore: the second half of the rows and the offsets they moved are gone.
    first_half = [orjson.loads(line)["messageid"] for line in stream.views[:300]]
    with connect(pipeline.settings) as conn:
        conn.execute("DELETE FROM product_views WHERE messageid <> ALL(%s)", (first_half,))
        conn.execute("DELETE FROM view_messageids WHERE messageid <> ALL(%s)", (first_half,))
        for (topic, partition), offset in before.items():
            conn.execute(
                "UPDATE ingest_offsets SET next_offset = %s WHERE topic = %s AND partition = %s",
                (offset, topic, partition),
            )

    again = pipeline.consume()
    assert again.consumed == 300
    assert again.views == 300
    assert pipeline.query("SELECT count(*), count(DISTINCT messageid) FROM product_views") == [
        (600, 600)
    ]
