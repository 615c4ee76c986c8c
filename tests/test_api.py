"""The recommendation API over real HTTP (uvicorn on loopback) and a real PostgreSQL.

Views are stored through the consumer's own cleaning and writer, so `user_product_hours` is
kept exactly as in production; the freshness test goes through Kafka end to end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import orjson
import psycopg
import pytest
import schemathesis
from conftest import fresh_database, settings_env
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from psycopg import conninfo

from clickstream.api.app import create_app
from clickstream.api.coalesce import Coalescer
from clickstream.api.server import BackgroundServer, run_in_background
from clickstream.bench.api import SCRATCH_DATABASE
from clickstream.config import Settings, load_settings
from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.consumer import Ingestor
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.services import embedded
from clickstream.store.db import connect
from clickstream.store.schema import migrate
from clickstream.store.writer import write_batch

# -- helpers ------------------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    status: int
    content_type: str
    text: str

    @property
    def json(self):
        return json.loads(self.text)


class Address(NamedTuple):
    host: str
    port: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(server: BackgroundServer | Address, path: str, headers: dict | None = None) -> Reply:
    """GET the path exactly as written (no client-side normalisation of `..` or `%2F`)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return Reply(
            response.status,
            response.getheader("content-type", ""),
            response.read().decode(),
        )
    finally:
        conn.close()


def store_views(settings: Settings, views: list[tuple[str, str, str]], first_offset=0) -> None:
    """Store (user, product, event time) views as the consumer does: clean, then write."""
    raws = [
        RawEvent(
            Kind.VIEW,
            settings.kafka_views_topic,
            0,
            first_offset + i,
            orjson.dumps(
                {
                    "event": "ProductView",
                    "messageid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{user}|{product}|{at}")),
                    "userid": user,
                    "properties": {"productid": product},
                    "context": {"source": "desktop"},
                    "timestamp": at,
                }
            ),
            None,
        )
        for i, (user, product, at) in enumerate(views)
    ]
    batch = clean_batch(raws)
    assert not batch.rejects
    with connect(settings) as conn:
        write_batch(conn, batch)


def at(second: int) -> str:
    return f"2026-11-24T13:00:{second:02d}.000Z"


@pytest.fixture(scope="module")
def empty_database(services) -> Iterator[str]:
    """A database with the schema and no rows."""
    for url in fresh_database(embedded.database_url(services)):
        with psycopg.connect(url) as conn:
            migrate(conn)
        yield url


@pytest.fixture(scope="module")
def api(services, empty_database) -> Iterator[BackgroundServer]:
    """One server, no API key, over a database with no views."""
    settings = dataclasses.replace(services, database_url=empty_database, api_key=None)
    server = run_in_background(settings, "127.0.0.1", 0)
    yield server
    server.stop()


@pytest.fixture
def serve():
    """Start servers for a test; stop them all afterwards."""
    started: list[BackgroundServer] = []

    def start(settings: Settings) -> BackgroundServer:
        started.append(run_in_background(settings, "127.0.0.1", 0))
        return started[-1]

    yield start
    for server in started:
        server.stop()


# -- the contract -------------------------------------------------------------------------


def test_distinct_products_most_recent_first(pipeline, serve):
    #   user-1:  p1 ... p2 ... p1 ... p3  p4  p5  p6  p2      (seconds 1..8)
    #   later batch: an old view of p6 (second 0) arrives late, and a redelivered p3
    store_views(
        pipeline.settings,
        [
            ("user-1", "p1", at(1)),
            ("user-1", "p2", at(2)),
            ("user-1", "p1", at(3)),
            ("user-1", "p3", at(4)),
            ("user-1", "p4", at(5)),
            ("user-1", "p5", at(6)),
            ("user-1", "p6", at(7)),
            ("user-1", "p2", at(8)),
            ("user-2", "p9", at(9)),
        ],
    )
    store_views(
        pipeline.settings,
        [("user-1", "p6", at(0)), ("user-1", "p3", at(4))],
        first_offset=100,
    )
    server = serve(pipeline.settings)

    reply = get(server, "/api/users/user-1/recently-viewed")
    assert reply.status == 200
    assert reply.content_type == "application/json"
    assert reply.json == {"user_id": "user-1", "products": ["p2", "p6", "p5", "p4", "p3"]}
    assert get(server, "/api/users/user-1/recently-viewed?limit=2").json["products"] == [
        "p2",
        "p6",
    ]
    assert get(server, "/api/users/user-1/recently-viewed?limit=1").json["products"] == ["p2"]
    everything = get(server, "/api/users/user-1/recently-viewed?limit=100").json["products"]
    assert everything == ["p2", "p6", "p5", "p4", "p3", "p1"]
    assert get(server, "/api/users/user-2/recently-viewed").json["products"] == ["p9"]


def test_a_product_viewed_every_hour_is_listed_once_then_older_ones(pipeline, serve):
    # user-3 viewed a, b, c one morning, then "hot" once an hour for twelve hours, so the
    # newest rows (one per product and hour) repeat "hot" more than a first window holds;
    # "hot" was also viewed late, in an hour long past, which changes nothing.
    def hour(h: int, minute: int = 0) -> str:
        return f"2026-11-{10 + h // 24:02d}T{h % 24:02d}:{minute:02d}:00.000Z"

    store_views(
        pipeline.settings,
        [("user-3", p, hour(0, m)) for m, p in enumerate(["a", "b", "c"])]
        + [("user-3", "hot", hour(20 + h, 30)) for h in range(12)],
    )
    store_views(pipeline.settings, [("user-3", "hot", hour(1))], first_offset=100)
    server = serve(pipeline.settings)

    path = "/api/users/user-3/recently-viewed"
    assert get(server, f"{path}?limit=3").json["products"] == ["hot", "c", "b"]
    assert get(server, f"{path}?limit=1").json["products"] == ["hot"]
    assert get(server, f"{path}?limit=100").json["products"] == ["hot", "c", "b", "a"]


def test_unknown_user_gets_an_empty_list(api):
    reply = get(api, "/api/users/nobody-here/recently-viewed")
    assert (reply.status, reply.json) == (200, {"user_id": "nobody-here", "products": []})


def test_ids_are_opaque_strings(pipeline, serve):
    odd = ["kullanıcı 7", "100%", "user-1?x", "...", ".hidden", "x" * 128]
    store_views(pipeline.settings, [(user, f"product-{i}", at(i)) for i, user in enumerate(odd)])
    server = serve(pipeline.settings)
    for i, user in enumerate(odd):
        path = "/api/users/" + quote(user, safe="") + "/recently-viewed"
        reply = get(server, path)
        assert (reply.status, reply.json) == (200, {"user_id": user, "products": [f"product-{i}"]})


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/users//recently-viewed", "user_id"),
        ("/api/users/" + "x" * 129 + "/recently-viewed", "user_id"),
        ("/api/users/" + "x" * 5000 + "/recently-viewed", "user_id"),
        ("/api/users/user%001/recently-viewed", "user_id"),
        ("/api/users/user%0A1/recently-viewed", "user_id"),
        ("/api/users/user%7F/recently-viewed", "user_id"),
        ("/api/users/user%C2%85/recently-viewed", "user_id"),
        ("/api/users/..%2F..%2Fetc%2Fpasswd/recently-viewed", "user_id"),
        ("/api/users/user%2F1/recently-viewed", "user_id"),
        ("/api/users/a/b/recently-viewed", "user_id"),
        ("/api/users/..%5Cwindows/recently-viewed", "user_id"),
        ("/api/users/../recently-viewed", "user_id"),
        ("/api/users/%2E%2E/recently-viewed", "user_id"),
        ("/api/users/./recently-viewed", "user_id"),
        ("/api/users/u/recently-viewed?limit=0", "limit"),
        ("/api/users/u/recently-viewed?limit=101", "limit"),
        ("/api/users/u/recently-viewed?limit=-1", "limit"),
        ("/api/users/u/recently-viewed?limit=abc", "limit"),
        ("/api/users/u/recently-viewed?limit=2.5", "limit"),
        ("/api/users/u/recently-viewed?limit=", "limit"),
        ("/api/users/u/recently-viewed?limit=" + "9" * 5000, "limit"),
        ("/api/users/u/recently-viewed?limit=%D9%A3", "limit"),
    ],
)
def test_malformed_requests_get_a_422_json_error(api, path, parameter):
    reply = get(api, path)
    assert reply.status == 422, reply.text
    assert reply.content_type == "application/json"
    body = reply.json
    assert body["error"].startswith(parameter)
    assert [p["parameter"] for p in body["problems"]] == [parameter]
    assert "Traceback" not in reply.text


def test_both_parameters_wrong_names_both(api):
    body = get(api, "/api/users/a%00/recently-viewed?limit=0").json
    assert [p["parameter"] for p in body["problems"]] == ["user_id", "limit"]


def test_unknown_routes_are_json_too(api):
    reply = get(api, "/api/nothing-here")
    assert (reply.status, reply.content_type) == (404, "application/json")
    assert reply.json["error"]


# -- API key ------------------------------------------------------------------------------


def test_api_key_when_set_guards_every_api_route(services, empty_database, serve):
    settings = dataclasses.replace(services, database_url=empty_database, api_key="s3cret-key")
    server = serve(settings)
    path = "/api/users/u/recently-viewed"

    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret-ke"}):
        reply = get(server, path, headers)
        assert reply.status == 401
        assert "X-API-Key" in reply.json["error"]
    assert get(server, "/api/ping").status == 401
    assert get(server, path, {"X-API-Key": "s3cret-key"}).status == 200
    assert get(server, "/api/ping", {"x-api-key": "s3cret-key"}).status == 200
    # The form a Prometheus scrape job sends, and /metrics guarded like /api/.
    assert get(server, path, {"Authorization": "Bearer s3cret-key"}).status == 200
    assert get(server, path, {"Authorization": "Bearer s3cret-ke"}).status == 401
    assert get(server, path, {"Authorization": "Basic s3cret-key"}).status == 401
    assert get(server, "/metrics").status == 401
    assert get(server, "/metrics", {"Authorization": "Bearer s3cret-key"}).status == 200
    assert get(server, "/healthz").status == 200
    assert get(server, "/docs").status == 200


def test_no_api_key_by_default(api):
    assert get(api, "/api/ping").status == 200


# -- health and outages -------------------------------------------------------------------


def test_healthz_reports_database_and_broker(api):
    reply = get(api, "/healthz")
    assert reply.status == 200
    assert reply.json == {
        "status": "ok",
        "database": {"status": "ok"},
        "broker": {"status": "ok"},
    }


def test_healthz_is_503_while_the_database_is_down_and_the_rest_still_answers(
    services, tmp_path, serve
):
    own = load_settings(
        Path(__file__).parent / "empty-config.yml",
        env={
            "CLICKSTREAM_DATA_DIR": str(tmp_path),
            "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": embedded.bootstrap_servers(services),
        },
    )
    embedded.up(own)  # a PostgreSQL of this test's own, which it may stop
    try:
        with connect(own, check_schema=False) as conn:
            migrate(conn)
        server = serve(own)
        assert get(server, "/healthz").status == 200
        assert get(server, "/api/users/u/recently-viewed").status == 200
    finally:
        embedded.down(own)

    health = get(server, "/healthz")
    assert health.status == 503
    assert health.json == {
        "status": "unavailable",
        "database": {"status": "unavailable"},
        "broker": {"status": "ok"},
    }
    lookup = get(server, "/api/users/u/recently-viewed")
    assert (lookup.status, lookup.content_type) == (503, "application/json")
    assert "Traceback" not in lookup.text
    assert get(server, "/api/ping").status == 200
    assert get(server, "/api/users/a%00/recently-viewed").status == 422


def test_healthz_is_503_while_the_broker_is_down(services, empty_database, serve):
    settings = dataclasses.replace(
        services, database_url=empty_database, kafka_bootstrap_servers="127.0.0.1:9"
    )
    server = serve(settings)
    health = get(server, "/healthz")
    assert health.status == 503
    assert health.json == {
        "status": "unavailable",
        "database": {"status": "ok"},
        "broker": {"status": "unavailable"},
    }
    assert get(server, "/api/users/u/recently-viewed").status == 200


def test_healthz_gives_reasons_only_to_a_request_with_the_api_key(services, empty_database, serve):
    password_url = conninfo.make_conninfo(empty_database, password="s3cret-pw")
    settings = dataclasses.replace(
        services,
        database_url=password_url,
        kafka_bootstrap_servers="127.0.0.1:9",
        api_key="the-key",
    )
    server = serve(settings)
    for headers in ({}, {"X-API-Key": "wrong"}):
        health = get(server, "/healthz", headers)
        assert health.status == 503
        assert "detail" not in health.json["broker"], headers
        assert "127.0.0.1:9" not in health.text and "Kafka" not in health.text
    health = get(server, "/healthz", {"X-API-Key": "the-key"})
    assert health.status == 503
    assert health.json["database"] == {"status": "ok", "detail": "reachable"}
    assert health.json["broker"]["status"] == "unavailable"
    assert health.json["broker"]["detail"].startswith("cannot reach the broker at 127.0.0.1:9: ")
    assert "s3cret-pw" not in health.text


# -- property-based: the app against its own OpenAPI document -----------------------------


# The document is built without a database; the test checks the server serves this very one.
_OPENAPI = create_app(load_settings(Path(__file__).parent / "empty-config.yml", env={})).openapi()
# The live view's push stream never ends a response, so it is no case for a request fuzzer.
schema = schemathesis.openapi.from_dict(_OPENAPI).exclude(path="/api/realtime/stream")


def test_the_served_openapi_document_is_the_fuzzed_one(api):
    assert get(api, "/openapi.json").json == _OPENAPI


@schema.parametrize()
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
def test_fuzz_no_server_error_and_responses_match_the_schema(case, api):
    case.call_and_validate(base_url=api.url)


# -- freshness, end to end ----------------------------------------------------------------


def test_a_view_is_visible_within_two_seconds_of_being_produced(pipeline, serve):
    server = serve(pipeline.settings)
    stop = threading.Event()
    ingestor = Ingestor(pipeline.settings, pipeline.bootstrap, stop=stop)
    consumer = threading.Thread(target=ingestor.run, daemon=True)
    consumer.start()
    try:

        def view(user: str, product: str) -> bytes:
            return orjson.dumps(
                {
                    "event": "ProductView",
                    "messageid": str(uuid.uuid4()),
                    "userid": user,
                    "properties": {"productid": product},
                    "context": {"source": "ios"},
                }
            )

        def wait_for(user: str, product: str, seconds: float) -> float:
            started = time.monotonic()
            pipeline.produce_views([view(user, product)])
            while time.monotonic() - started < seconds:
                if get(server, f"/api/users/{user}/recently-viewed").json["products"] == [product]:
                    return time.monotonic() - started
                time.sleep(0.02)
            return float("inf")

        # The first view also waits for the consumer to join its group.
        assert wait_for("warm-up", "product-0", 60) < 60
        took = wait_for("fresh-user", "product-1", 2.0)
        assert took < 2.0, f"the view was not visible within 2 s ({took})"
    finally:
        stop.set()
        consumer.join(30)


# -- coalescing (pure) --------------------------------------------------------------------


def test_concurrent_lookups_share_queries_and_each_gets_its_own_answer():
    batches = []

    async def fetch(keys):
        batches.append(list(keys))
        await asyncio.sleep(0.01)
        return [key * 2 for key in keys]

    async def scenario():
        coalescer = Coalescer(fetch, parallel=1, max_batch=50)
        return await asyncio.gather(*(coalescer.get(i) for i in range(100)))

    assert asyncio.run(scenario()) == [i * 2 for i in range(100)]
    assert sorted(k for batch in batches for k in batch) == list(range(100))
    assert len(batches) < 10


def test_a_failed_query_fails_the_requests_of_its_batch_only():
    calls = 0

    async def fetch(keys):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise RuntimeError("database went away")
        return keys

    async def scenario():
        coalescer = Coalescer(fetch, parallel=1)
        first = await asyncio.gather(coalescer.get("a"), return_exceptions=True)
        second = await coalescer.get("b")
        return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first[0], RuntimeError)
    assert second == "b"


# -- the command --------------------------------------------------------------------------


def test_clickstream_serve_answers_and_stops_cleanly_on_sigterm(pipeline):
    address = Address("127.0.0.1", free_port())
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clickstream",
            "serve",
            "--port",
            str(address.port),
            "--workers",
            "2",
        ],
        env=settings_env(pipeline.settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reply = None
        deadline = time.monotonic() + 60
        while reply is None and time.monotonic() < deadline:
            try:
                reply = get(address, "/api/ping")
            except OSError:
                time.sleep(0.1)
        assert reply is not None and reply.status == 200
        lookup = get(address, "/api/users/u/recently-viewed")
        assert lookup.json == {"user_id": "u", "products": []}
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "GET /api/ping" in err  # the access log is on by default


def test_clickstream_serve_rejects_a_bad_port(pipeline):
    result = pipeline.cli("serve", "--port", "70000")
    assert result.returncode == 2
    assert "--port" in result.stderr and "Traceback" not in result.stderr


def test_bench_api_runs_small_and_ends_with_its_figures(pipeline):
    result = pipeline.cli(
        "bench",
        "api",
        "--views",
        "20000",
        "--users",
        "500",
        "--seconds",
        "1",
        "--concurrency",
        "8",
        "--history-days",
        "2",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.search(r"ours is [\d,]+ times faster", result.stdout)
    # The history's empty days precede the loaded one (2026-11-01), as a server keeping
    # them has: the lookups ran with those partitions in their plans.
    scratch = conninfo.make_conninfo(pipeline.settings.database_url, dbname=SCRATCH_DATABASE)
    with psycopg.connect(scratch) as conn:
        days = conn.execute(
            "SELECT c.relname, (SELECT count(*) > 0 FROM user_product_hours u"
            "  WHERE u.tableoid = c.oid)"
            " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'user_product_hours'::regclass"
            " AND c.relname < 'user_product_hours_p20261102' ORDER BY 1"
        ).fetchall()
    assert days == [
        ("user_product_hours_p20261030", False),
        ("user_product_hours_p20261031", False),
        ("user_product_hours_p20261101", True),
    ]
    # The endpoints take turns, and the server's CPU per request of each is read from /proc.
    turns = [line for line in lines if re.match(r"  turn \d: real [\d,]+ req/s", line)]
    assert [line.split(":")[0] for line in turns] == ["  turn 1", "  turn 2", "  turn 3"]
    assert re.fullmatch(
        r"real: [\d,]+ req/s p50=[\d.]+ms p99=[\d.]+ms \| "
        r"trivial: [\d,]+ req/s p50=[\d.]+ms p99=[\d.]+ms \| "
        r"server CPU a request: real [1-9]\d*µs, trivial [1-9]\d*µs \(\d+\.\d\d\) \| "
        r"ratio=\d+\.\d\d",
        lines[-1],
    ), lines[-1]
