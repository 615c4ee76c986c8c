"""`clickstream bench ingest`: where the CPU goes while a leg is timed.

Each part's processes are read from /proc (user plus system CPU seconds, all threads) when
the timed leg starts and when it ends: the producer, the embedded broker, the consumers and
the PostgreSQL backends serving the consumers. The backends are only readable when the
server runs on this machine (the embedded one, or a local external one); otherwise that part
says so. Where `pg_stat_statements` is loaded, its execution time per statement shows which
statements the backends' time goes to.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import psycopg

from clickstream.config import Settings
from clickstream.services.embedded import broker_pid
from clickstream.store.db import connect

__all__ = [
    "CpuMeter",
    "LegCost",
    "backend_pids",
    "cpu_seconds",
    "format_cost",
    "leg_meter",
    "print_cost",
    "reset_statements",
    "statement_costs",
    "statements_of",
    "wal_bytes_since",
    "wal_position",
]


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of a process (all its threads), None once it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return times.user + times.system


def backend_pids(conn: psycopg.Connection) -> list[int] | None:
    """The other client backends of this connection's database, when they are processes of
    this machine (None when the server is elsewhere)."""
    pids = [
        pid
        for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    ]
    own = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    if not _is_local_backend(own):
        return None
    return pids


def _is_local_backend(pid: int) -> bool:
    try:
        return "postgres" in psutil.Process(pid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class CpuMeter:
    """CPU seconds each named part's processes spent between `start` and `stop`.

    A part given None is not measurable here and reads None.
    """

    def __init__(self, parts: dict[str, list[int] | None]) -> None:
        self._parts = parts
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def _read(self) -> dict[int, float]:
        read = {}
        for pids in self._parts.values():
            for pid in pids or ():
                seconds = cpu_seconds(pid)
                if seconds is not None:
                    read[pid] = seconds
        return read

    def start(self) -> None:
        self._first = self._read()

    def stop(self) -> dict[str, float | None]:
        self._last = self._read()
        spent: dict[str, float | None] = {}
        for part, pids in self._parts.items():
            if pids is None:
                spent[part] = None
                continue
            spent[part] = sum(
                self._last.get(pid, self._first.get(pid, 0.0)) - self._first.get(pid, 0.0)
                for pid in pids
            )
        return spent


def reset_statements(conn: psycopg.Connection) -> bool:
    """Zero `pg_stat_statements`; False when the extension is not loaded here."""
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error:
        return False
    return True


@dataclass(frozen=True)
class StatementCost:
    query: str
    calls: int
    milliseconds: float


def statement_costs(conn: psycopg.Connection, limit: int = 8) -> list[StatementCost]:
    """The statements run in this database since `reset_statements`, costliest first.

    Entries of the same text are added up: a statement on a temporary table has an entry per
    session (the table's id is part of the statement's identity), one per consumer here.
    """
    rows = conn.execute(
        "SELECT query, sum(calls)::bigint, sum(total_exec_time) FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT LIKE '%%pg_stat_statements%%'"
        " GROUP BY query ORDER BY 3 DESC LIMIT %s",
        (limit,),
    ).fetchall()
    return [StatementCost(" ".join(query.split()), calls, ms) for query, calls, ms in rows]


@dataclass(frozen=True)
class LegCost:
    """What a timed leg cost: CPU seconds per part, the costliest statements, and the WAL
    the server wrote meanwhile (all of it: on a server shared with other work, theirs too)."""

    seconds: dict[str, float | None]
    statements: list[StatementCost] | None  # None: no pg_stat_statements here
    wal_bytes: int | None = None  # None: the server could not say


def wal_position(settings: Settings) -> str | None:
    """The server's WAL insert position, None where it has none to give (a standby)."""
    try:
        with connect(settings) as conn:
            return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    except psycopg.Error:
        return None


def wal_bytes_since(settings: Settings, start: str | None) -> int | None:
    """Bytes of WAL written since `wal_position` gave `start`."""
    if start is None:
        return None
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (start,)
        ).fetchone()
    return int(row[0])


def format_cost(seconds: float | None, events: int) -> str:
    """CPU seconds as µs per event (= CPU seconds per million events)."""
    if seconds is None:
        return "n/a"
    return f"{seconds / events * 1e6:.1f}"


def leg_meter(settings: Settings, producer: int, consumers: list[int]) -> tuple[CpuMeter, bool]:
    """A meter of the leg's parts, and whether pg_stat_statements was reset for it."""
    with connect(settings) as conn:
        backends = backend_pids(conn)
        conn.commit()
        statements = reset_statements(conn)
    parts = {
        "producer": [producer],
        "broker": [pid] if (pid := broker_pid(settings)) is not None else None,
        "consumers": consumers,
        "PostgreSQL": backends,
    }
    return CpuMeter(parts), statements


def statements_of(settings: Settings) -> list[StatementCost]:
    """What pg_stat_statements counted since `leg_meter` reset it."""
    with connect(settings) as conn:
        return statement_costs(conn)


def print_cost(cost: LegCost, events: int, copy_cpu: float | None) -> None:
    """(b)'s CPU per part, and where PostgreSQL's statements spent their time."""
    parts = ", ".join(
        f"{part} {format_cost(seconds, events)}" for part, seconds in cost.seconds.items()
    )
    wal = "n/a" if cost.wal_bytes is None else f"{cost.wal_bytes / events / 1000:.2f} kB"
    print(
        f"    CPU µs an event (CPU seconds per million events): {parts};"
        f" raw COPY's backend {format_cost(copy_cpu, events)}; WAL {wal} an event"
    )
    if cost.statements is None:
        print("    (pg_stat_statements is not loaded: no figures per statement)")
        return
    print("    execution time of the costliest statements (waits included), µs an event:")
    for statement in cost.statements:
        print(
            f"    {statement.milliseconds * 1000 / events:7.2f} µs an event"
            f" {statement.calls:6,} calls  {statement.query[:90]}"
        )
