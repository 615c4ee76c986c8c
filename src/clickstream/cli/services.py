"""`clickstream up`, `down` and `status`: the embedded broker and database."""

from __future__ import annotations

import argparse

from clickstream.cli._common import command
from clickstream.config import Settings


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.prepare import prepare
    from clickstream.services import embedded

    embedded.up(settings)
    prepare(settings)
    _print_status(embedded.status(settings))
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
        "status",
        cmd_status,
        "show what runs where",
        "Show the broker and the database, embedded or external, and their addresses. "
        "Exit code 3 when an embedded service is stopped.",
    )
