"""Running the app under uvicorn: `clickstream serve`, or in a thread of another command.

uvicorn handles SIGTERM and Ctrl-C itself: it stops accepting, lets requests in flight
finish (up to `GRACE_SECONDS`), then runs the app's shutdown, which closes the pool. With
several workers uvicorn starts each from an import string, so the settings travel to them
as `CLICKSTREAM_*` variables and each worker builds its own app and pool from those; their
metrics meet in files under the data directory (prometheus_client's multiprocess mode).

Once the app is built, everything alive (modules, the app, its routes and models) is moved
out of the garbage collector's sight with `gc.freeze()`: otherwise each full collection walks
all of it again, and under load those pauses reach tens of milliseconds, most of the p99.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass

import uvicorn
from uvicorn.supervisors import Multiprocess

from clickstream.config import SETTINGS, Settings, load_settings, remember_secrets
from clickstream.errors import ClickstreamError
from clickstream.util.process import tune_garbage_collector
from clickstream.util.redact import redact_logs

__all__ = ["BackgroundServer", "app_from_environment", "run_in_background", "serve"]

log = logging.getLogger("clickstream.api")

GRACE_SECONDS = 10


def _config(app, host: str, port: int, access_log: bool, **kw):
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=access_log,
        log_config=None,  # keep the CLI's log format; uvicorn's loggers propagate to it
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=GRACE_SECONDS,
        **kw,
    )


def _export(settings: Settings) -> None:
    """Put the resolved settings into the environment the worker processes inherit."""
    if settings.source != "defaults":
        os.environ["CLICKSTREAM_CONFIG"] = settings.source
    for setting in SETTINGS:
        value = getattr(settings, setting.attr)
        os.environ.pop(setting.file_env, None)  # read already: the value follows
        if value is None:
            os.environ[setting.env] = ""
        elif isinstance(value, bool):
            os.environ[setting.env] = "true" if value else "false"
        elif isinstance(value, dict):
            os.environ[setting.env] = json.dumps(value)
        else:
            os.environ[setting.env] = str(value)


def app_from_environment():
    """The app factory uvicorn's worker processes call (see `serve`).

    A worker is a fresh interpreter: it sets up the CLI's log format again, or the access
    log would go nowhere.
    """
    from clickstream.api.app import create_app

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    redact_logs()
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    settings = load_settings()
    remember_secrets(settings)
    app = create_app(settings)
    tune_garbage_collector()
    gc.freeze()
    return app


def serve(settings: Settings, *, host: str, port: int, workers: int, access_log: bool) -> None:
    """Serve until SIGTERM or Ctrl-C; return after a graceful shutdown."""
    if workers > 1:
        _export(settings)
        if settings.api_metrics:
            # Before any worker starts: each one picks prometheus_client's multiprocess mode
            # from this variable when it imports the library.
            from clickstream.metrics import MULTIPROC_ENV, multiprocess_dir

            os.environ[MULTIPROC_ENV] = str(multiprocess_dir(settings.data_dir, port))
        target = "clickstream.api.server:app_from_environment"
        config = _config(target, host, port, access_log, factory=True, workers=workers)
        try:
            sock = config.bind_socket()
        except SystemExit:
            raise ClickstreamError(f"cannot listen on {host}:{port}") from None
        Multiprocess(config, sockets=[sock]).run()
        return
    from clickstream.api.app import create_app

    server = uvicorn.Server(_config(create_app(settings), host, port, access_log))
    gc.freeze()
    _run_quietly(server)
    if not server.started:
        raise ClickstreamError(f"cannot listen on {host}:{port}; see the log above")


def _run_quietly(server: uvicorn.Server) -> None:
    # uvicorn exits the process when it cannot bind; in a thread that ends the thread only.
    with contextlib.suppress(SystemExit):
        server.run()


@dataclass
class BackgroundServer:
    """A server running in a thread of this process; `stop()` shuts it down gracefully."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = GRACE_SECONDS + 5) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def run_in_background(
    settings: Settings, host: str | None = None, port: int | None = None, access_log: bool = False
) -> BackgroundServer:
    """Start the app in a daemon thread and return once it accepts connections.

    `port=0` picks a free port; the handle's `.port` and `.url` tell which.
    """
    from clickstream.api.app import create_app

    host = host or settings.api_host
    port = settings.api_port if port is None else port
    server = uvicorn.Server(_config(create_app(settings), host, port, access_log))
    thread = threading.Thread(
        target=_run_quietly, args=(server,), name="clickstream-api", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ClickstreamError(f"the API server could not listen on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return BackgroundServer(server, thread, host, bound)
