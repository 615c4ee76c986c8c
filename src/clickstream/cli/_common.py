"""What every command module shares: the parser class, argument types, signal handling."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("clickstream")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number of at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def nonneg_int(text: str) -> int:
    return _whole_number(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {text}")
    return value


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def stop_on_signals() -> threading.Event:
    """Turn SIGINT and SIGTERM into a stop request the long-running loops check."""
    stop = threading.Event()

    def handler(signum, _frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info(
            "%s received: finishing the current batch, then stopping", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {value}")
    return value


def hour_arg(text: str):
    from clickstream.reports.hours import parse_hour

    try:
        return parse_hour(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def command(parent, name: str, func: Callable, help: str, description: str | None = None):
    """Add a subcommand that runs `func(settings, args)`."""
    p = parent.add_parser(name, help=help, description=description or help)
    p.set_defaults(func=func)
    return p


def group(parent, name: str, help: str, description: str, metavar: str, what: str):
    """Add a command with subcommands of its own; run without one, it says what to choose."""
    p = parent.add_parser(name, help=help, description=description)
    sub = p.add_subparsers(
        dest=f"{name.replace('-', '_')}_command", metavar=metavar, parser_class=Parser
    )
    p.set_defaults(func=lambda settings, args: _missing(p, what))
    return sub


def _missing(parser: argparse.ArgumentParser, what: str) -> int:
    parser.error(f"choose {what}")
    return 2
