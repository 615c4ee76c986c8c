"""`clickstream up`, `down` and `status`: the embedded broker and database."""

from __future__ import annotations

import argparse

from clickstream.cli._common import command
from clickstream.config import Settings


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.services import embedded
    from clickstream.services.prepare import prepare
    from clickstream.store.schema import describe

    embedded.up(settings)
    applied = prepare(settings)
    _print_status(embedded.status(settings))
    print(f"database schema: {describe(applied)}")
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from clickstream.errors import ClickstreamError
    from clickstream.store.db import connect
    from clickstream.store.schema import describe, migrate

    with connect(settings, check_schema=False) as conn:
        try:
            applied = migrate(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            why = str(exc).strip().splitlines()[0]
            raise ClickstreamError(
                f"this role may not change the schema ({why}): run `clickstream migrate`"
                " as the role that owns it; nothing was changed"
            ) from None
    print(describe(applied))
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.services import embedded

    stopped = embedded.down(settings)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.services import embedded

    services = embedded.status(settings)
    _print_status(services)
    return 0 if all(s.running for s in services) else 3


def _print_status(services) -> None:
    for service in services:
        state = "running" if service.running else "stopped"
        print(f"{service.name:<9} {state:<8} {service.address}")
        print(f"{'':<9} {service.detail}")


def register(sub) -> None:
    command(
        sub,
        "up",
        cmd_up,
        "start the embedded broker and database",
        "Start the embedded Kafka-compatible broker (Tansu) and PostgreSQL (pgserver) in the "
        "background under the data directory, create the topics and the schema. Idempotent: "
        "what already runs is left alone. Tansu keeps topics in memory only.",
    )
    command(sub, "down", cmd_down, "stop the embedded broker and database")
    command(
        sub,
        "migrate",
        cmd_migrate,
        "create or upgrade the database schema",
        "Apply the schema migrations this version needs, in one transaction under an "
        "advisory lock, and print them (`applied 0005_x, 0006_y`), or `schema is current` "
        "when there is nothing to do; running it again changes nothing. The only command "
        "that changes the schema besides `up`, the demo and a consumer's first start "
        "(database.auto_migrate). Run it as the role that owns the tables; some migrations "
        "lock the event tables while they run (see the docs' upgrade guide). `serve` and "
        "`report` never change the schema: on an older one they stop with exit code 2 and "
        "say to run this.",
    )
    command(
        sub,
        "status",
        cmd_status,
        "show what runs where",
        "Show the broker and the database, embedded or external, and their addresses. "
        "Exit code 3 when an embedded service is stopped.",
    )
