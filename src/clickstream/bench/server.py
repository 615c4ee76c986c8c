"""`clickstream serve` in a process of its own, as in production, for the benchmarks.

A server in the benchmark's own process would share its interpreter lock with the load
generator or the poller, and measure their cost as the server's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from clickstream.config import SETTINGS, Settings
from clickstream.errors import ClickstreamError

__all__ = ["free_port", "start_server"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(settings: Settings, port: int, core: int | None = None) -> subprocess.Popen:
    """Start `clickstream serve` with exactly `settings` (no API key), pinned to `core` if
    given; return once it accepts connections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    for setting in SETTINGS:
        value = getattr(settings, setting.attr)
        if value is not None:
            env[setting.env] = str(value).lower() if isinstance(value, bool) else str(value)
    env["CLICKSTREAM_API_KEY"] = ""
    if settings.source != "defaults":
        env["CLICKSTREAM_CONFIG"] = settings.source
    command = [sys.executable, "-m", "clickstream", "serve", "--port", str(port)]
    command += ["--workers", "1", "--no-access-log"]
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                error = process.stderr.read().decode(errors="replace").strip().splitlines()
                raise ClickstreamError(
                    "the server did not start: " + (error[-1] if error else "no output")
                ) from None
            time.sleep(0.1)
