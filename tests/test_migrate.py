"""`clickstream migrate` is the one path of DDL; readers work with SELECT alone.

`serve`, `report` and the scheduler never change the schema: on an older or missing one they
say which migration they need and stop with exit code 2 (the API answers 503). The roles of
a production deployment are created here with the docs' own GRANT statements.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from conftest import Pipeline, fresh_database, run_cli, settings_env
from psycopg import conninfo

from clickstream.api.server import run_in_background
from clickstream.services import embedded
from clickstream.store.migrations import MIGRATIONS

GUIDE = (Path(__file__).parent.parent / "docs" / "how-to" / "secure.md").read_text()
NEWEST = max(MIGRATIONS)
BEFORE_NEWEST = sorted(MIGRATIONS)[-2]

# The statements of the docs' guide (how-to/secure.md, Database roles), for roles named
# clickstream_writer and clickstream_reader on a database named clickstream; the tests put
# their own names in.
WRITER_GRANTS = [
    "GRANT CONNECT, TEMPORARY ON DATABASE clickstream TO clickstream_writer;",
    "GRANT USAGE ON SCHEMA public TO clickstream_writer;",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO clickstream_writer;",
    "GRANT INSERT, UPDATE ON products, product_views, order_lines, dead_letters,"
    " user_product_hours, report_view_hours, report_order_hours, report_buyers,"
    " view_messageids, order_messageids, ingest_offsets TO clickstream_writer;",
    "GRANT USAGE ON SEQUENCE dead_letters_id_seq TO clickstream_writer;",
    "GRANT INSERT, DELETE ON spark_task_shares TO clickstream_writer;",
]
READER_GRANTS = [
    "GRANT CONNECT ON DATABASE clickstream TO clickstream_reader;",
    "GRANT USAGE ON SCHEMA public TO clickstream_reader;",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO clickstream_reader;",
]
LOCK_DOWN = [
    "REVOKE ALL ON DATABASE clickstream FROM PUBLIC;",
    "REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
]


def out_of_date(at: str) -> str:
    return (
        f"clickstream: error: the database schema is at {at}, this version needs {NEWEST}:"
        " run `clickstream migrate`"
    )


def migrations(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT name, applied_at FROM schema_migrations ORDER BY name").fetchall()


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]


@pytest.fixture
def empty(pipeline: Pipeline) -> Iterator[Pipeline]:
    """The pipeline's topics and settings on a database without the schema."""
    for url in fresh_database(embedded.database_url(pipeline.settings)):
        yield Pipeline(dataclasses.replace(pipeline.settings, database_url=url), pipeline.bootstrap)


@pytest.fixture
def one_behind(empty: Pipeline) -> Pipeline:
    """A database at the migration before the newest, as an older version left it."""
    with psycopg.connect(empty.settings.database_url) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for name in sorted(MIGRATIONS)[:-1]:
            for statement in MIGRATIONS[name]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
    return empty


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, key: str | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-API-Key": key} if key else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# -- migrate ----------------------------------------------------------------------------------


def test_migrate_creates_the_schema_then_finds_it_current(empty):
    first = empty.cli("migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"applied {', '.join(sorted(MIGRATIONS))}\n"
    url = empty.settings.database_url
    created = tables(url)
    with psycopg.connect(url) as conn:
        recorded = migrations(conn)
    assert [name for name, _ in recorded] == sorted(MIGRATIONS)

    again = empty.cli("migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"schema is current ({NEWEST})\n"
    assert tables(url) == created
    with psycopg.connect(url) as conn:
        assert migrations(conn) == recorded  # nothing applied again, not even re-stamped


def test_migrate_applies_only_what_is_missing(one_behind):
    result = one_behind.cli("migrate")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"applied {NEWEST}\n"
    assert "user_product_hours" in tables(one_behind.settings.database_url)


# -- readers never run DDL --------------------------------------------------------------------


def test_report_and_serve_refuse_an_older_schema_and_change_nothing(one_behind, tmp_path):
    url = one_behind.settings.database_url
    before = tables(url)
    for args in (
        ["report", "--hour", "2026-11-24T13", "--out", str(tmp_path)],
        ["report", "--every-hour", "--out", str(tmp_path)],
        ["serve", "--port", str(free_port())],
        ["catalog", "load", str(_catalog(tmp_path))],
    ):
        result = one_behind.cli(*args, timeout=60)
        assert (result.returncode, result.stderr.splitlines()[-1]) == (
            2,
            out_of_date(BEFORE_NEWEST),
        ), args
        assert "Traceback" not in result.stderr
    assert tables(url) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.csv"]


def test_report_on_a_database_without_the_schema_says_so(empty, tmp_path):
    result = empty.cli("report", "--all-time", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [out_of_date("none (no clickstream tables)")]
    assert tables(empty.settings.database_url) == []


def test_the_api_answers_503_with_the_reason_until_migrate_runs(one_behind):
    before = tables(one_behind.settings.database_url)
    key = "k3y"
    settings = dataclasses.replace(one_behind.settings, api_key=key)
    server = run_in_background(settings, "127.0.0.1", 0)
    try:
        assert get(server.port, "/healthz") == (
            503,
            {
                "status": "unavailable",
                "database": {"status": "unavailable"},
                "broker": {"status": "ok"},
            },
        )
        status, health = get(server.port, "/healthz", key)  # with the key: the reason too
        assert status == 503
        assert health["database"]["detail"] == out_of_date(BEFORE_NEWEST).removeprefix(
            "clickstream: error: "
        )
        status, body = get(server.port, "/api/users/user-1/recently-viewed", key)
        assert status == 503 and "run `clickstream migrate`" in body["error"]
        assert tables(one_behind.settings.database_url) == before

        assert one_behind.cli("migrate").returncode == 0
        assert get(server.port, "/api/users/user-1/recently-viewed", key) == (
            200,
            {"user_id": "user-1", "products": []},
        )
        assert get(server.port, "/healthz")[0] == 200
    finally:
        server.stop()


# -- consume ----------------------------------------------------------------------------------


def test_consume_migrates_on_first_start_unless_forbidden(empty):
    forbidden = dataclasses.replace(empty.settings, database_auto_migrate=False)
    result = run_cli(forbidden, "consume", "--until-idle", "1")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        out_of_date("none (no clickstream tables)")
        + " (database.auto_migrate is off, so consume does not)"
    )
    assert tables(empty.settings.database_url) == []

    empty.produce_views([_view("user-1", "product-1")])
    stats = empty.consume()
    assert stats.views == 1
    assert empty.query("SELECT name FROM schema_migrations ORDER BY 1") == [
        (name,) for name in sorted(MIGRATIONS)
    ]


# -- production roles -------------------------------------------------------------------------


@pytest.fixture
def roles(empty: Pipeline) -> Iterator[dict[str, str]]:
    """A writer and a reader made by the guide's statements on a database the test owner
    (a superuser here, as the owner/migrator role would be) migrated: name -> its URL."""
    url = empty.settings.database_url
    assert empty.cli("migrate").returncode == 0
    suffix = uuid.uuid4().hex[:8]
    names = {"writer": f"cs_writer_{suffix}", "reader": f"cs_reader_{suffix}"}
    database = conninfo.conninfo_to_dict(url)["dbname"]

    def ours(statement: str) -> str:
        return (
            statement.replace("clickstream_writer", names["writer"])
            .replace("clickstream_reader", names["reader"])
            .replace("DATABASE clickstream ", f"DATABASE {database} ")
        )

    with psycopg.connect(url, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f"CREATE ROLE {name} LOGIN")
        for statement in LOCK_DOWN + WRITER_GRANTS + READER_GRANTS:
            admin.execute(ours(statement))
    try:
        yield {role: conninfo.make_conninfo(url, user=name) for role, name in names.items()}
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            for name in names.values():
                admin.execute(f"DROP OWNED BY {name}")
                admin.execute(f"DROP ROLE {name}")


def test_the_guide_gives_these_grants():
    for statement in LOCK_DOWN + WRITER_GRANTS + READER_GRANTS:
        assert statement in " ".join(GUIDE.split()), statement


def test_consume_report_and_serve_work_with_the_documented_roles(empty, roles, tmp_path):
    writer = dataclasses.replace(empty.settings, database_url=roles["writer"])
    reader = dataclasses.replace(empty.settings, database_url=roles["reader"])
    # The reader really can do nothing but read.
    with psycopg.connect(roles["reader"], autocommit=True) as conn:
        for statement in (
            "CREATE TEMP TABLE t (x int)",
            "CREATE TABLE t (x int)",
            "INSERT INTO products VALUES ('p', 'c')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)

    catalog = run_cli(writer, "catalog", "load", str(_catalog(tmp_path)))
    assert catalog.returncode == 0, catalog.stderr
    views = [_view(f"user-{i % 3}", f"product-{i % 2}", f"m-{i}") for i in range(6)]
    empty.produce_views(views + views[:2] + [b"not json"])  # a redelivery and a dead letter
    consumed = run_cli(writer, "consume", "--until-idle", "2")
    assert consumed.returncode == 0, consumed.stderr
    assert "stored 6 views" in consumed.stdout and "1 dead letters" in consumed.stdout
    assert empty.query("SELECT count(*) FROM product_views") == [(6,)]

    as_owner, as_reader = tmp_path / "owner", tmp_path / "reader"
    assert empty.cli("report", "--all-time", "--out", str(as_owner)).returncode == 0
    result = run_cli(reader, "report", "--all-time", "--out", str(as_reader))
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in as_reader.iterdir())
    assert written == sorted(p.name for p in as_owner.iterdir()) and len(written) == 3
    for name in written:
        assert (as_reader / name).read_bytes() == (as_owner / name).read_bytes()
    assert (as_reader / "conversion_rates_all.csv").read_text() == (
        "category,views,purchases,conversion_rate\ncategory-1,6,0,0.0000\n"
    )

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "clickstream", "serve", "--port", str(port)],
        env=settings_env(reader),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(port, server)
        status, body = get(port, "/api/users/user-0/recently-viewed")
        assert (status, sorted(body["products"])) == (200, ["product-0", "product-1"])
        assert get(port, "/healthz") == (
            200,
            {"status": "ok", "database": {"status": "ok"}, "broker": {"status": "ok"}},
        )
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert "permission denied" not in stderr


def _wait_for(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1]
        try:
            get(port, "/api/ping")
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("clickstream serve did not start within 60 s")


def _catalog(folder: Path) -> Path:
    path = folder / "catalog.csv"
    path.write_text("productid,categoryid\nproduct-0,category-1\nproduct-1,category-1\n")
    return path


def _view(user: str, product: str, messageid: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "event": "ProductView",
            "messageid": messageid or f"{user}-{product}",
            "userid": user,
            "properties": {"productid": product},
            "context": {"source": "ios"},
        }
    )
