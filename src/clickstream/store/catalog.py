"""Upsert of the product catalog with COPY; the live view is told when it changed."""

from __future__ import annotations

import psycopg

__all__ = ["CHANNEL", "upsert_products"]

CHANNEL = "clickstream_catalog"  # notified when a load changed the catalog


def upsert_products(conn: psycopg.Connection, rows: list[tuple[str, str]]) -> int:
    """Insert new products and move changed ones; return how many rows changed."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage_products (productid text, categoryid text)"
            " ON COMMIT DELETE ROWS"
        )
        with cur.copy("COPY stage_products (productid, categoryid) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(
            "INSERT INTO products (productid, categoryid)"
            " SELECT productid, categoryid FROM stage_products"
            " ON CONFLICT (productid) DO UPDATE SET categoryid = EXCLUDED.categoryid,"
            " updated_at = now() WHERE products.categoryid IS DISTINCT FROM EXCLUDED.categoryid"
        )
        changed = cur.rowcount
        if changed:
            cur.execute(f"NOTIFY {CHANNEL}")
        return changed
