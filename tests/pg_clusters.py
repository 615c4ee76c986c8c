"""Throwaway clusters of Debian's PostgreSQL for the failover and TLS tests.

Each cluster lives in a temporary directory on a free port and runs as `postgres` when the
tests run as root (initdb refuses root). fsync is off: these clusters hold nothing of value.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from conftest import missing_dependency

__all__ = ["Cluster", "cluster_dir", "free_port", "pg_bin", "wait_for"]


def pg_bin() -> Path:
    """Debian's newest PostgreSQL binaries (the `postgresql` package)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        missing_dependency("Debian's PostgreSQL is not installed (apt-get install postgresql)")
    return found[-1].parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args: list[str]) -> None:
    if os.getuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")


def cluster_dir() -> Path:
    """A directory for clusters that the `postgres` user can reach (pytest's tmp_path is
    private to the user running the tests)."""
    base = Path(tempfile.mkdtemp(prefix="clickstream-test-pg-"))
    base.chmod(0o755)
    return base


def _own(path: Path) -> None:
    if os.getuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class Cluster:
    """One server: `initdb` (or a base backup of another), start, stop, promote."""

    def __init__(self, base: Path, name: str) -> None:
        self.dir = base / name
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o755)
        _own(self.dir)
        self.data = self.dir / "data"
        self.port = free_port()
        self.bin = pg_bin()

    def url(self, dbname: str = "postgres", **params: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=str(self.port), user="postgres", dbname=dbname, **params
        )

    def init(self, *extra: str) -> Cluster:
        _as_postgres(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"]
            + ["--no-sync", *extra]
        )
        return self

    def base_backup_of(self, primary: Cluster) -> Cluster:
        """A streaming standby of `primary` (`pg_basebackup -R` writes its primary_conninfo).

        `--checkpoint=fast`: by default the backup waits for a checkpoint spread over most of
        `checkpoint_timeout`, which cost each failover test a minute and a half of waiting.
        """
        _as_postgres(
            [str(self.bin / "pg_basebackup"), "-D", str(self.data), "-R", "-X", "stream"]
            + ["-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "--no-sync"]
            + ["--checkpoint=fast"]
        )
        return self

    def start(self, *settings: str) -> Cluster:
        options = [f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"]
        options += [f"-c {setting}" for setting in settings]
        _as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log")]
            + ["-w", "-t", "60", "-o", " ".join(options), "start"]
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop"])

    def promote(self) -> None:
        _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "promote"])

    def query(self, sql: str, params=(), dbname: str = "postgres") -> list[tuple]:
        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self) -> None:
        """Stop (if running) and delete the cluster."""
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    """Poll `predicate` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
