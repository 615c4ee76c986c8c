"""`clickstream down` signals only the processes it started, never a pid reused since; `up`
starts the embedded PostgreSQL with the settings the ingest needs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest
from conftest import settings_env

from clickstream.config import load_settings
from clickstream.services import embedded

EMPTY_CONFIG = Path(__file__).parent / "empty-config.yml"


@pytest.fixture
def stranger():
    """An unrelated process whose pid the state file will claim."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def test_down_leaves_a_reused_pid_alone_and_says_so(tmp_path, stranger):
    settings = load_settings(EMPTY_CONFIG, env={"CLICKSTREAM_DATA_DIR": str(tmp_path / "data")})
    settings.data_dir.mkdir(parents=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pgdata = settings.data_dir / "postgres"
    pgdata.mkdir()
    # a postmaster.pid left by a server that crashed long ago, naming the stranger's pid
    (pgdata / "postmaster.pid").write_text(
        f"{stranger.pid}\n{pgdata}\n{int(time.time()) - 86_400}\n5432\n{pgdata}\n\n0 0\nready\n"
    )
    (settings.data_dir / "services.json").write_text(
        json.dumps(
            {
                "kafka": {
                    "pid": stranger.pid,
                    "started": time.time() - 86_400,
                    "cmdline": [
                        "/opt/tansu",
                        "broker",
                        "--listener-url",
                        f"tcp://127.0.0.1:{port}",
                    ],
                    "port": port,
                    "bootstrap": f"127.0.0.1:{port}",
                },
                "postgres": {"pid": stranger.pid, "pgdata": str(pgdata), "url": "postgresql://"},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "clickstream", "down"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "nothing was running"
    for name in ("broker", "database"):
        assert (
            f"pid {stranger.pid}, recorded for the embedded {name}, is now another process"
            f" (sleep 300): left it alone"
        ) in result.stderr
    assert stranger.poll() is None, "the unrelated process must not be signalled"
    assert json.loads((settings.data_dir / "services.json").read_text()) == {}

    status = subprocess.run(
        [sys.executable, "-m", "clickstream", "status"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 3


def test_up_starts_postgres_with_its_settings_and_records_the_restarted_server(tmp_path):
    """initdb's 128 MB of buffers and checkpoints every 1 GB of WAL cost the ingest CPU; the
    restart that applies them must leave `services.json` naming the server now running."""
    settings = load_settings(
        EMPTY_CONFIG,
        env={
            "CLICKSTREAM_DATA_DIR": str(tmp_path / "data"),
            "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        },
    )
    embedded.up(settings)
    try:
        with psycopg.connect(embedded.database_url(settings)) as conn:
            shown = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                    [
                        [
                            "shared_buffers",
                            "max_wal_size",
                            "checkpoint_timeout",
                            "fsync",
                            "synchronous_commit",
                        ]
                    ],
                ).fetchall()
            )
            postmaster = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        ram_mb = psutil.virtual_memory().total // 2**20
        assert shown == {
            "shared_buffers": str(min(max(ram_mb // 8, 128), 2048) * 128),  # in 8 kB pages
            "max_wal_size": "8192",
            "checkpoint_timeout": "900",
            "fsync": "on",
            "synchronous_commit": "on",
        }
        assert [s.running for s in embedded.status(settings)] == [True, True]
        embedded.up(settings)  # already configured: left running as it is
        with psycopg.connect(embedded.database_url(settings)) as conn:
            again = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        assert again == postmaster
    finally:
        assert embedded.down(settings) == ["database"]
