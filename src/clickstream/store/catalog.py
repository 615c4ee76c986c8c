"""Upsert of the product catalog with COPY."""

from __future__ import annotations

import psycopg

__all__ = ["upsert_products"]


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
        return cur.rowcount
