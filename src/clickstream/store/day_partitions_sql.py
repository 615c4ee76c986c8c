"""The statements of the migrations that partition the event tables by day (0008) and fix
the day function (0009), as they shipped: `store/migrations.py` lists them by name.

Never edit them: a database that applied a migration keeps what it applied, and these texts
are what a new database applies.
"""

from __future__ import annotations

__all__ = [
    "ADD_DAY_0008",
    "ADD_DAY_0009",
    "ADD_DAY_PATH_0009",
    "PARTITIONED_0008",
    "partition_table_0008",
]

PARTITIONED_0008 = {
    "product_views": "viewed_at",
    "order_lines": "ordered_at",
    "user_product_hours": "hour",
    "report_buyers": "hour",
}
_DAYS_AHEAD_0008 = 2

# A day's partition, made by whoever meets a day without one (the ingest, a prune): a plain
# table with a CHECK of its range, then attached, which takes SHARE UPDATE EXCLUSIVE on the
# parent and so never blocks the ingest (store/partitions.py). It runs as its owner (SECURITY
# DEFINER): the ingest's role needs no DDL rights. Names and bounds come from the function's
# own constants and a date, never from the caller's text.
ADD_DAY_0008 = """
    CREATE FUNCTION clickstream_add_day(parent text, day date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE
        part text := parent || '_p' || to_char(day, 'YYYYMMDD');
        col text := CASE parent
            WHEN 'product_views' THEN 'viewed_at'
            WHEN 'order_lines' THEN 'ordered_at'
            WHEN 'user_product_hours' THEN 'hour'
            WHEN 'report_buyers' THEN 'hour'
        END;
        lower_bound timestamptz := day::timestamp AT TIME ZONE 'UTC';
        upper_bound timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
        attached boolean;
    BEGIN
        IF col IS NULL THEN
            RAISE EXCEPTION 'not a table partitioned by day: %', parent;
        END IF;
        PERFORM pg_advisory_xact_lock(1668049776);  -- "clkp"
        SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid) INTO attached
        FROM pg_class c WHERE c.oid = to_regclass(part);
        IF attached THEN
            RETURN false;
        END IF;
        IF attached IS NOT NULL THEN  -- detached by a prune that stopped before dropping it
            EXECUTE format('DROP TABLE %I', part);
        END IF;
        EXECUTE format(
            'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
            ' INCLUDING GENERATED)', part, parent);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I >= %L AND %I < %L)',
            part, part || '_range', col, lower_bound, col, upper_bound);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            parent, part, lower_bound, upper_bound);
        RETURN true;
    END $$
"""


# 0009: the same function with an explicit search_path, the schema then pg_temp last (a
# SECURITY DEFINER function must not let a caller's temporary objects shadow its own, as
# PostgreSQL's documentation of CREATE FUNCTION requires), and it drops a detached day table
# only when clickstream itself detached it (recorded in `clickstream_detached`): a table an
# operator detached to archive is refused, never dropped.
ADD_DAY_0009 = """
    CREATE OR REPLACE FUNCTION clickstream_add_day(parent text, day date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER AS $$
    DECLARE
        part text := parent || '_p' || to_char(day, 'YYYYMMDD');
        col text := CASE parent
            WHEN 'product_views' THEN 'viewed_at'
            WHEN 'order_lines' THEN 'ordered_at'
            WHEN 'user_product_hours' THEN 'hour'
            WHEN 'report_buyers' THEN 'hour'
        END;
        lower_bound timestamptz := day::timestamp AT TIME ZONE 'UTC';
        upper_bound timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
        attached boolean;
    BEGIN
        IF col IS NULL THEN
            RAISE EXCEPTION 'not a table partitioned by day: %', parent;
        END IF;
        PERFORM pg_advisory_xact_lock(1668049776);  -- "clkp"
        SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid) INTO attached
        FROM pg_class c WHERE c.oid = to_regclass(part);
        IF attached THEN
            RETURN false;
        END IF;
        IF attached IS NOT NULL THEN
            IF NOT EXISTS (SELECT 1 FROM clickstream_detached d WHERE d.name = part) THEN
                RAISE EXCEPTION USING ERRCODE = 'duplicate_table', MESSAGE = format(
                    'table %s exists and is not a partition of %s: clickstream did not detach'
                    ' it, so it keeps it; rename it to store events of %s again', part, parent,
                    day);
            END IF;
            EXECUTE format('DROP TABLE %I', part);  -- detached by a prune that stopped
            DELETE FROM clickstream_detached d WHERE d.name = part;
        END IF;
        EXECUTE format(
            'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
            ' INCLUDING GENERATED)', part, parent);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I >= %L AND %I < %L)',
            part, part || '_range', col, lower_bound, col, upper_bound);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            parent, part, lower_bound, upper_bound);
        RETURN true;
    END $$
"""
# The schema the migration runs in, named, then pg_temp.
ADD_DAY_PATH_0009 = """
    DO $$ BEGIN
        EXECUTE format(
            'ALTER FUNCTION clickstream_add_day(text, date) SET search_path = %I, pg_temp',
            current_schema());
    END $$
"""


def partition_table_0008(table: str, column: str) -> tuple[str, ...]:
    """Replace `table` by one partitioned by UTC day of `column`, its rows copied over.

    LIKE keeps every column, default and CHECK the table has, whichever migration added them.
    """
    day = f"({column} AT TIME ZONE 'UTC')::date"
    return (
        f"ALTER TABLE {table} RENAME TO {table}_unpartitioned",
        f"CREATE TABLE {table} (LIKE {table}_unpartitioned"
        f" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED)"
        f" PARTITION BY RANGE ({column})",
        f"""
        DO $$
        DECLARE d date;
        BEGIN
            FOR d IN
                SELECT DISTINCT {day} FROM {table}_unpartitioned
                UNION
                SELECT (now() AT TIME ZONE 'UTC')::date + i
                FROM generate_series(0, {_DAYS_AHEAD_0008}) AS i
            LOOP
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    '{table}_p' || to_char(d, 'YYYYMMDD'), '{table}',
                    d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            END LOOP;
        END $$
        """,
        f"INSERT INTO {table} SELECT * FROM {table}_unpartitioned",
        # Indexes other migrations gave the table come back on the partitioned one (a unique
        # one could not: it would lack the partition key).
        f"""
        DO $$
        DECLARE
            definitions text[];
            definition text;
        BEGIN
            SELECT coalesce(array_agg(pg_get_indexdef(indexrelid)), '{{}}') INTO definitions
            FROM pg_index WHERE indrelid = '{table}_unpartitioned'::regclass AND NOT indisunique;
            DROP TABLE {table}_unpartitioned;
            FOREACH definition IN ARRAY definitions LOOP
                EXECUTE replace(definition, '{table}_unpartitioned', '{table}');
            END LOOP;
        END $$
        """,
    )
