"""The one command, `clickstream`: parses, calls, prints.

Each command group lives in a module of its own (`services`, `data`, `pipeline`,
`dead_letters`, `privacy`, `lifecycle`, `bench`), which registers its subcommands. Every
failure a user can cause ends in one line on stderr and a non-zero exit code (2 for bad
arguments or settings, and for a database schema older than this version needs), never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from clickstream import __version__
from clickstream.cli import bench, data, dead_letters, lifecycle, pipeline, privacy, services
from clickstream.cli._common import Parser
from clickstream.config import load_settings, remember_secrets
from clickstream.errors import ClickstreamError, SchemaOutOfDate, UsageError
from clickstream.util.process import tune_garbage_collector
from clickstream.util.redact import redact, redact_logs

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="clickstream",
        description=(
            "Product views and orders from Kafka into PostgreSQL, hourly category reports, "
            "a live 5-minute view and a recently-viewed API. With no broker or database "
            "configured, commands use the embedded ones started by `clickstream up`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"clickstream {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (default: $CLICKSTREAM_CONFIG or ./config.yml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    for module in (services, data, pipeline, dead_letters, privacy, lifecycle, bench):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # pgserver narrates every pg_ctl call at INFO and platformdirs warns about a missing
    # XDG_RUNTIME_DIR; neither tells a user anything.
    redact_logs()
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    tune_garbage_collector()
    try:
        settings = load_settings(args.config)
        remember_secrets(settings)
        return args.func(settings, args)
    except (UsageError, SchemaOutOfDate) as exc:
        print(f"clickstream: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except ClickstreamError as exc:
        print(f"clickstream: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clickstream: interrupted", file=sys.stderr)
        return 130
