"""The migrations, in name order: each a tuple of statements applied in one transaction.

Add new migrations with a new name; never edit one that has shipped. `store/schema.py`
applies them and records each in `schema_migrations`.
"""

from __future__ import annotations

from clickstream.store.day_partitions_sql import (
    ADD_DAY_0008,
    ADD_DAY_0009,
    ADD_DAY_PATH_0009,
    PARTITIONED_0008,
    partition_table_0008,
)

__all__ = ["MIGRATIONS"]

MIGRATIONS: dict[str, tuple[str, ...]] = {
    "0001_core": (
        """
        CREATE TABLE products (
            productid  text PRIMARY KEY,
            categoryid text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE product_views (
            messageid   text PRIMARY KEY,
            userid      text NOT NULL,
            productid   text NOT NULL,
            source      text NOT NULL,
            viewed_at   timestamptz NOT NULL,
            ingested_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE order_lines (
            messageid   text NOT NULL,
            line        integer NOT NULL,
            orderid     text NOT NULL,
            userid      text NOT NULL,
            productid   text NOT NULL,
            quantity    integer NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
            ordered_at  timestamptz NOT NULL,
            ingested_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (messageid, line)
        )
        """,
        # A redelivered bad record is the same topic, partition, offset and bytes; an embedded
        # broker restarted from empty reuses offsets, so the payload's digest is part of the key.
        """
        CREATE TABLE dead_letters (
            id          bigserial PRIMARY KEY,
            topic       text NOT NULL,
            partition   integer NOT NULL,
            "offset"    bigint NOT NULL,
            payload     bytea NOT NULL,
            reason      text NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            payload_md5 text GENERATED ALWAYS AS (md5(payload)) STORED,
            UNIQUE (topic, partition, "offset", payload_md5)
        )
        """,
    ),
    # Per hour and product: view events, order lines and distinct viewers and buyers, so an
    # hourly report reads thousands of counters instead of millions of events. Distinct users
    # stay exact: each (hour, product, user) is stored once, and the triples a batch really
    # inserted are added to the counters (store/derived.py). Products are joined to the
    # catalog only when a report is written. `report_runs` is what the scheduler wrote.
    "0002_report_aggregates": (
        """
        CREATE TABLE report_view_hours (
            hour      timestamptz NOT NULL,
            productid text NOT NULL,
            views     bigint NOT NULL DEFAULT 0,
            viewers   bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, productid)
        )
        """,
        """
        CREATE TABLE report_order_hours (
            hour        timestamptz NOT NULL,
            productid   text NOT NULL,
            order_lines bigint NOT NULL DEFAULT 0,
            buyers      bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, productid)
        )
        """,
        """
        CREATE TABLE report_viewers (
            hour      timestamptz NOT NULL,
            productid text NOT NULL,
            userid    text NOT NULL,
            PRIMARY KEY (hour, productid, userid)
        )
        """,
        """
        CREATE TABLE report_buyers (
            hour      timestamptz NOT NULL,
            productid text NOT NULL,
            userid    text NOT NULL,
            PRIMARY KEY (hour, productid, userid)
        )
        """,
        """
        CREATE TABLE report_runs (
            hour        timestamptz PRIMARY KEY,
            views       bigint NOT NULL,
            order_lines bigint NOT NULL,
            reported_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        INSERT INTO report_view_hours (hour, productid, views, viewers)
        SELECT date_trunc('hour', viewed_at, 'UTC'), productid, count(*), count(DISTINCT userid)
        FROM product_views GROUP BY 1, 2
        """,
        """
        INSERT INTO report_viewers (hour, productid, userid)
        SELECT DISTINCT date_trunc('hour', viewed_at, 'UTC'), productid, userid
        FROM product_views
        """,
        """
        INSERT INTO report_order_hours (hour, productid, order_lines, buyers)
        SELECT date_trunc('hour', ordered_at, 'UTC'), productid, count(*), count(DISTINCT userid)
        FROM order_lines GROUP BY 1, 2
        """,
        """
        INSERT INTO report_buyers (hour, productid, userid)
        SELECT DISTINCT date_trunc('hour', ordered_at, 'UTC'), productid, userid
        FROM order_lines
        """,
    ),
    # A user's distinct products with their latest view: the recently-viewed API reads the
    # first `limit` entries of one user from the index and stops, however long the history.
    "0003_recently_viewed": (
        """
        CREATE TABLE recent_views (
            userid    text NOT NULL,
            productid text NOT NULL,
            viewed_at timestamptz NOT NULL,
            PRIMARY KEY (userid, productid)
        )
        """,
        "CREATE INDEX recent_views_latest ON recent_views (userid, viewed_at DESC, productid)",
        """
        INSERT INTO recent_views (userid, productid, viewed_at)
        SELECT userid, productid, max(viewed_at) FROM product_views GROUP BY userid, productid
        """,
    ),
    # Ids are opaque: compared byte by byte (collation "C") they sort and index faster than
    # under a language's rules, for which PostgreSQL also gives up abbreviated sort keys.
    # Reports order ids naturally in Python (clickstream/util/natural.py), not in SQL.
    #
    # `user_product_hours` replaces both `recent_views` and `report_viewers`: one row per
    # (user, product, UTC hour) with the latest view in that hour. Its newly inserted rows are
    # the hourly reports' new distinct viewers, and a user's rows newest first answer the
    # recently-viewed API. One upsert per batch instead of two (README, Benchmarks).
    "0004_user_product_hours": (
        *(
            f"ALTER TABLE {table} "
            + ", ".join(f'ALTER COLUMN {column} TYPE text COLLATE "C"' for column in columns)
            for table, columns in (
                ("products", ("productid", "categoryid")),
                ("product_views", ("messageid", "userid", "productid", "source")),
                ("order_lines", ("messageid", "orderid", "userid", "productid")),
                ("report_view_hours", ("productid",)),
                ("report_order_hours", ("productid",)),
                ("report_buyers", ("productid", "userid")),
            )
        ),
        """
        CREATE TABLE user_product_hours (
            userid    text COLLATE "C" NOT NULL,
            productid text COLLATE "C" NOT NULL,
            hour      timestamptz NOT NULL,
            viewed_at timestamptz NOT NULL,
            PRIMARY KEY (userid, productid, hour)
        )
        """,
        "CREATE INDEX user_product_hours_latest"
        " ON user_product_hours (userid, viewed_at DESC, productid)",
        """
        INSERT INTO user_product_hours (userid, productid, hour, viewed_at)
        SELECT userid, productid, date_bin('1 hour', viewed_at, '2000-01-01 00:00+00'),
               max(viewed_at)
        FROM product_views GROUP BY 1, 2, 3
        """,
        "DROP TABLE recent_views",
        "DROP TABLE report_viewers",
    ),
    # Dead letters can be replayed (clickstream/lifecycle/replay.py): each keeps the Kafka
    # record's time, which the cleaning rules fall back on for an event without a usable
    # `timestamp`, and the last replay's time and outcome (`stored`, `duplicate` or
    # `still-rejected: reason`). Nullable columns without a default: no table rewrite.
    "0006_dead_letter_replay": (
        "ALTER TABLE dead_letters ADD COLUMN kafka_timestamp timestamptz,"
        " ADD COLUMN replayed_at timestamptz, ADD COLUMN replay_outcome text",
    ),
    # What `clickstream forget-user` erased (clickstream/store/erasure.py): when, the rows
    # removed per table, and a keyed hash of the id (never the id), by which the live view
    # recognises the user it must stop showing.
    "0007_erasure_audit": (
        """
        CREATE TABLE erasures (
            id           bigserial PRIMARY KEY,
            erased_at    timestamptz NOT NULL DEFAULT now(),
            user_hash    text NOT NULL,
            rows_removed jsonb NOT NULL
        )
        """,
        "CREATE INDEX erasures_user_hash ON erasures (user_hash)",
    ),
    # Retention (store/partitions.py, store/retention.py): the raw events and the per-user
    # derived tables become partitioned by UTC day, so old days are dropped whole. Existing
    # rows are copied once into their days' partitions; today and the next two days are
    # created ahead. A partitioned table's unique keys must hold its partition key, and the
    # same messageid may come back with another event time (re-produced, re-stamped), so
    # "a messageid is stored once" moves to one key table per kind: each messageid with the
    # day of the row it stored, pruned with that day (README, Retention).
    "0008_time_partitions": (
        "DROP INDEX user_product_hours_latest",  # made again below, led by the hour
        *(
            statement
            for table, column in PARTITIONED_0008.items()
            for statement in partition_table_0008(table, column)
        ),
        "ALTER TABLE user_product_hours ADD PRIMARY KEY (userid, productid, hour)",
        # Set by the ingest's upsert when it updates a row (store/derived.py): a partitioned
        # table cannot RETURN xmax, which told an inserted row from an updated one before.
        "ALTER TABLE user_product_hours ADD COLUMN revised boolean NOT NULL DEFAULT false",
        # Ordered by hour first, which sorts like viewed_at (the hour is its bin): the
        # recently-viewed lookup reads the newest day's partition first and stops there.
        "CREATE INDEX user_product_hours_latest"
        " ON user_product_hours (userid, hour DESC, viewed_at DESC, productid)",
        "ALTER TABLE report_buyers ADD PRIMARY KEY (hour, productid, userid)",
        *(
            statement
            for table, rows, where in (
                ("view_messageids", "product_views", "viewed_at"),
                ("order_messageids", "order_lines", "ordered_at"),
            )
            for statement in (
                f"""
                CREATE TABLE {table} (
                    messageid text COLLATE "C" PRIMARY KEY,
                    day       date NOT NULL
                )
                """,
                f"INSERT INTO {table} (messageid, day)"
                f" SELECT messageid, min(({where} AT TIME ZONE 'UTC')::date) FROM {rows}"
                " GROUP BY messageid",
                # Without deduplication: a day's keys all share one value, and merging each
                # new one into a posting list tripled the cost of inserting a key (measured).
                f"CREATE INDEX {table}_day ON {table} (day) WITH (deduplicate_items = off)",
            )
        ),
        "CREATE INDEX dead_letters_received_at ON dead_letters (received_at)",
        ADD_DAY_0008,
        # What each prune removed: reconcile reports hours before these as pruned.
        """
        CREATE TABLE retention_cutoffs (
            name          text PRIMARY KEY,
            pruned_before timestamptz NOT NULL,
            pruned_at     timestamptz NOT NULL DEFAULT now()
        )
        """,
    ),
    "0009_reliability": (
        # The day tables clickstream's prune is detaching or has detached and not dropped yet:
        # the only detached tables a prune or the writer may drop (store/partitions.py).
        """
        CREATE TABLE clickstream_detached (
            name        text PRIMARY KEY,
            detached_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        ADD_DAY_0009,
        ADD_DAY_PATH_0009,
    ),
    # What each Spark task's transaction stored, written in that transaction: a retried task
    # whose first attempt committed and then died reports that attempt's counts, not its own
    # duplicates (spark/sink.py). Rows live until the driver has the micro-batch's counts.
    "0010_spark_task_shares": (
        """
        CREATE TABLE spark_task_shares (
            run          text NOT NULL,
            batch        bigint NOT NULL,
            topic        text NOT NULL,
            "partition"  integer NOT NULL,
            first_offset bigint NOT NULL,
            report       text NOT NULL,
            written_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (run, batch, topic, "partition", first_offset)
        )
        """,
    ),
    # What each consumer group has stored of each partition, written in the same transaction
    # as the rows (store/offsets.py): the database, not Kafka, says where to resume, so a
    # failover to a standby that lacked the last transactions reads those events again.
    "0011_ingest_offsets": (
        """
        CREATE TABLE ingest_offsets (
            consumer_group text NOT NULL,
            topic          text NOT NULL,
            partition      integer NOT NULL,
            next_offset    bigint NOT NULL,
            stored_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer_group, topic, partition)
        )
        """,
    ),
    # One index on user_product_hours instead of two, led by (userid, hour) as the
    # recently-viewed lookup reads it: it sorts the few rows of a user's newest hours by
    # viewed_at, which is INCLUDEd so that the lookup reads the index alone
    # (store/recent.py). The upsert's ON CONFLICT names the same three columns, in any
    # order. Each new (user, product, hour) costs one index insert fewer
    # (docs/performance.md).
    "0012_user_product_hours_one_index": (
        "DROP INDEX user_product_hours_latest",
        "ALTER TABLE user_product_hours DROP CONSTRAINT user_product_hours_pkey",
        "ALTER TABLE user_product_hours ADD PRIMARY KEY (userid, hour, productid)"
        " INCLUDE (viewed_at)",
    ),
    # No `day` index on the key tables: it cost every stored event an index insert, to let a
    # prune find a day's keys, which it now does in one pass over the table's blocks
    # (store/retention.py).
    "0013_key_tables_no_day_index": (
        "DROP INDEX view_messageids_day",
        "DROP INDEX order_messageids_day",
    ),
}
