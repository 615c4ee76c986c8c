"""Schema and migrations, applied by the project itself, idempotently, never by hand.

Each migration (store/migrations.py) is a name and a list of statements, applied in name
order in one transaction and recorded in `schema_migrations`; an advisory lock keeps two
processes from migrating at once.

Only `migrate` runs DDL: `clickstream migrate`, `up`, the demo, and `consume` on start
when `database.auto_migrate` allows it and its role may. Everything else reads the
recorded names (`schema_state`) and refuses an older schema with `SchemaOutOfDate`, so a
reader's role needs no rights beyond SELECT, and the locks some migrations take (0004 took
an ACCESS EXCLUSIVE lock on the event tables) are taken by the one process meant to.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import psycopg

from clickstream.errors import SchemaOutOfDate
from clickstream.store.migrations import MIGRATIONS

__all__ = [
    "SchemaState",
    "describe",
    "migrate",
    "migrate_on_start",
    "require_current",
    "schema_state",
]

log = logging.getLogger("clickstream.schema")

_LOCK_ID = 0x636C6B73  # "clks"


NEEDED = max(MIGRATIONS)


class SchemaState(NamedTuple):
    """The migrations a database has recorded, and those of this version it lacks."""

    applied: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def at(self) -> str:
        """The newest recorded migration, or `none` for a database without the schema."""
        return max(self.applied) if self.applied else "none (no clickstream tables)"

    def out_of_date(self) -> str:
        return (
            f"the database schema is at {self.at}, this version needs {NEEDED}:"
            " run `clickstream migrate`"
        )


def schema_state(conn: psycopg.Connection) -> SchemaState:
    """Read which migrations are applied, without DDL (SELECT on schema_migrations only)."""
    with conn.transaction():
        found = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
        names = (
            [row[0] for row in conn.execute("SELECT name FROM schema_migrations")]
            if found is not None
            else []
        )
    applied = tuple(sorted(names))
    return SchemaState(applied, tuple(name for name in sorted(MIGRATIONS) if name not in names))


def require_current(conn: psycopg.Connection) -> SchemaState:
    """Raise SchemaOutOfDate unless every migration of this version is applied."""
    state = schema_state(conn)
    if state.missing:
        raise SchemaOutOfDate(state.out_of_date())
    return state


def migrate(conn: psycopg.Connection) -> list[str]:
    """Bring the schema up to date; return the names of the migrations applied.

    A current schema is only read, so running it again is harmless for any role.
    """
    if not schema_state(conn).missing:
        return []
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        for name in sorted(MIGRATIONS):
            if name in done:
                continue
            log.info("applying migration %s", name)
            for statement in MIGRATIONS[name]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied


def describe(applied: list[str]) -> str:
    """What a migration did, in one line: `applied 0005_x, 0006_y` or `schema is current`."""
    if applied:
        return "applied " + ", ".join(applied)
    return f"schema is current ({NEEDED})"


def migrate_on_start(conn: psycopg.Connection, *, allowed: bool) -> list[str]:
    """A writer's first connection: migrate when `allowed` and the role may, else refuse.

    Whether the role may is found by trying: PostgreSQL refuses the DDL and rolls it back.
    """
    state = schema_state(conn)
    if not state.missing:
        return []
    if not allowed:
        raise SchemaOutOfDate(
            f"{state.out_of_date()} (database.auto_migrate is off, so consume does not)"
        )
    try:
        return migrate(conn)
    except psycopg.errors.InsufficientPrivilege as exc:
        why = str(exc).strip().splitlines()[0]
        raise SchemaOutOfDate(
            f"{state.out_of_date()} as the schema's owner; this role may not ({why})"
        ) from None
