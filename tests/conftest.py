"""Shared fixtures: one embedded broker and database per test session, isolated per test.

Every test that touches the pipeline gets its own topics, consumer group and a fresh
PostgreSQL database on the session's server, so tests cannot see each other's rows.

`CLICKSTREAM_DATABASE_URL`, when set for the test run, names an external PostgreSQL server:
the tests marked `external_pg` run against it (in a fresh database each), everything else
keeps using the embedded one.

A test that needs something outside the project (a browser, Airflow, an external
PostgreSQL) skips, saying what is missing, on a developer's machine; in CI (`CI=true`) the
same absence fails it, so a missing dependency cannot pass as a quiet skip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import conninfo

from clickstream.config import SETTINGS, Settings, load_settings
from clickstream.ingest.consumer import Ingestor
from clickstream.ingest.raw import Kind
from clickstream.kafka.client import ensure_topics
from clickstream.kafka.producer import produce_lines
from clickstream.services import embedded
from clickstream.store.schema import migrate

EXTERNAL_PG_URL = os.environ.pop("CLICKSTREAM_DATABASE_URL", None)
# Where the browser and terminal tests save the docs' screenshots; unset, they save none.
SCREENSHOTS = os.environ.pop("CLICKSTREAM_SCREENSHOTS", None)
IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1"}
for _name in [n for n in os.environ if n.startswith("CLICKSTREAM_")]:
    del os.environ[_name]


def missing_dependency(what: str) -> NoReturn:
    """Skip the test because `what` is missing here; in CI (CI=true), fail it instead."""
    if IN_CI:
        pytest.fail(f"{what}, and CI=true: CI must provide it", pytrace=False)
    pytest.skip(what)


def screenshot_path(name: str) -> Path | None:
    """Where to save the screenshot `name` for the docs (CLICKSTREAM_SCREENSHOTS=folder), or
    None when no screenshots were asked for."""
    if not SCREENSHOTS:
        return None
    folder = Path(SCREENSHOTS).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def settings_env(settings: Settings) -> dict[str, str]:
    """The CLICKSTREAM_* variables that make a CLI subprocess use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    for setting in SETTINGS:
        value = getattr(settings, setting.attr)
        if isinstance(value, dict):
            env[setting.env] = json.dumps(value)
        elif value is not None:
            env[setting.env] = str(value).lower() if isinstance(value, bool) else str(value)
    env["CLICKSTREAM_CONFIG"] = str(Path(__file__).parent / "empty-config.yml")
    return env


def run_cli(
    settings: Settings, *args: str, timeout: float = 120, **kwargs
) -> subprocess.CompletedProcess:
    """Run `clickstream ARGS` as a user would, in a subprocess, with these settings."""
    return subprocess.run(
        [sys.executable, "-m", "clickstream", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> Iterator[Settings]:
    """The embedded Tansu and pgserver, up for the whole session."""
    data_dir = tmp_path_factory.mktemp("services")
    settings = load_settings(
        Path(__file__).parent / "empty-config.yml", env={"CLICKSTREAM_DATA_DIR": str(data_dir)}
    )
    embedded.up(settings)
    try:
        yield settings
    finally:
        embedded.down(settings)


def fresh_database(server_url: str) -> Iterator[str]:
    """A new empty database on the server for the caller's lifetime, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield conninfo.make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Pipeline:
    """Settings isolated for one test, plus the few moves every pipeline test makes."""

    settings: Settings
    bootstrap: str

    def produce(self, topic: str, lines: list[bytes], **kwargs) -> None:
        result = produce_lines(self.bootstrap, topic, lines, **kwargs)
        assert result.failed == 0, result.first_error
        assert result.delivered == len([line for line in lines if line.strip()])

    def produce_views(self, lines: list[bytes], **kwargs) -> None:
        self.produce(self.settings.kafka_views_topic, lines, **kwargs)

    def produce_orders(self, lines: list[bytes], **kwargs) -> None:
        self.produce(self.settings.kafka_orders_topic, lines, **kwargs)

    def consume(self, until_idle: float = 1.5):
        return Ingestor(self.settings, self.bootstrap).run(until_idle=until_idle)

    def committed(self) -> dict[tuple[str, int], int]:
        """The ingest group's committed offset of every partition (0 when none)."""
        probe = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": self.settings.kafka_consumer_group}
        )
        try:
            partitions = [
                TopicPartition(topic, n)
                for topic in self.settings.topics
                for n in range(self.settings.kafka_partitions)
            ]
            return {
                (tp.topic, tp.partition): max(tp.offset, 0)
                for tp in probe.committed(partitions, timeout=10)
            }
        finally:
            probe.close()

    def query(self, sql: str, params=()) -> list[tuple]:
        with psycopg.connect(self.settings.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def env(self) -> dict[str, str]:
        return settings_env(self.settings)

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run_cli(self.settings, *args, **kwargs)


def _pipeline(services: Settings, database_url: str) -> Pipeline:
    with psycopg.connect(database_url) as conn:
        migrate(conn)  # as `clickstream up` does
    suffix = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        services,
        database_url=database_url,
        kafka_views_topic=f"views-{suffix}",
        kafka_orders_topic=f"orders-{suffix}",
        kafka_consumer_group=f"ingest-{suffix}",
        reports_dir=services.data_dir / f"reports-{suffix}",
    )
    bootstrap = embedded.bootstrap_servers(services)
    ensure_topics(bootstrap, list(settings.topics), settings.kafka_partitions)
    settings = dataclasses.replace(settings, kafka_bootstrap_servers=bootstrap)
    return Pipeline(settings, bootstrap)


@pytest.fixture
def pipeline(services) -> Iterator[Pipeline]:
    """Fresh topics, consumer group and database on the embedded services."""
    for url in fresh_database(embedded.database_url(services)):
        yield _pipeline(services, url)


@pytest.fixture
def external_pipeline(services) -> Iterator[Pipeline]:
    """The same on the external PostgreSQL server named by CLICKSTREAM_DATABASE_URL."""
    if not EXTERNAL_PG_URL:
        missing_dependency("CLICKSTREAM_DATABASE_URL is not set: no external PostgreSQL server")
    for url in fresh_database(EXTERNAL_PG_URL):
        yield _pipeline(services, url)


__all__ = [
    "EXTERNAL_PG_URL",
    "IN_CI",
    "Kind",
    "Pipeline",
    "missing_dependency",
    "run_cli",
    "screenshot_path",
    "settings_env",
]
