"""The metrics as a real Prometheus sees them: it scrapes a running `clickstream consume
--metrics-port` and a running `clickstream serve` (behind an API key) while a known set of
events is ingested and a known number of requests made; its HTTP API must then give the
counts the database holds, by outcome and by reason, and exactly the requests made.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import Pipeline, missing_dependency, settings_env

from clickstream.store.db import connect

PROMETHEUS = shutil.which("prometheus")
API_KEY = "test-key-of-the-metrics"
WAIT_SECONDS = 60  # how long to wait for something that must happen; not a speed check


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], object]):
    """Poll `check` until it returns something truthy; fail naming `what` after a minute."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            result = check()
        except (httpx.HTTPError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.25)


def view(i: int, messageid: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "event": "ProductView",
            "messageid": messageid or f"view-{i}",
            "userid": f"user-{i % 5}",
            "properties": {"productid": f"product-{i % 7}"},
            "context": {"source": "desktop" if i % 2 else "ios"},
        }
    )


def order(i: int) -> bytes:
    items = [{"productid": f"product-{i + n}", "quantity": n + 1} for n in range(1 + i % 3)]
    return orjson.dumps(
        {
            "event": "OrderEvent",
            "messageid": f"order-{i}",
            "userid": f"user-{i % 5}",
            "orderid": 1000 + i,
            "lineitems": items,
        }
    )


BAD_VIEWS = {
    b"{not json": "bad-json",
    b"[1, 2]": "not-an-object",
    b"\xff\xfe": "bad-utf8",
    orjson.dumps({"event": "ProductView", "messageid": "m", "userid": "u", "context": {}}): (
        "missing-field"
    ),
    orjson.dumps({"event": "ProductClick", "messageid": "m", "userid": "u"}): "wrong-event",
}
BAD_ORDERS = {
    orjson.dumps(
        {"event": "OrderEvent", "messageid": "o", "userid": "u", "orderid": 1, "lineitems": []}
    ): "bad-lineitems",
    b"{not json either": "bad-json",
}


@pytest.fixture
def running(pipeline: Pipeline, tmp_path: Path) -> Iterator[dict]:
    """A consumer, a server and a Prometheus scraping both every second; stopped after."""
    if PROMETHEUS is None:
        missing_dependency("Debian's prometheus is not installed (.ci/run installs it)")
    settings = dataclasses.replace(
        pipeline.settings,
        kafka_session_timeout_ms=2000,
        ingest_batch_size=7,  # several batches even for this small set
        ingest_batch_wait_ms=100,
        ingest_log_every_seconds=1.0,
        api_key=API_KEY,
        realtime_readers=1,
    )
    with connect(settings):  # the schema, before two processes race to create it
        pass
    ports = {name: free_port() for name in ("consumer", "api", "prometheus")}
    env = settings_env(settings)
    python = [sys.executable, "-m", "clickstream"]
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ports}  # noqa: SIM115
    (tmp_path / "key").write_text(API_KEY)
    (tmp_path / "prometheus.yml").write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: consumer
    static_configs: [{{targets: ["127.0.0.1:{ports["consumer"]}"]}}]
  - job_name: api
    authorization: {{credentials_file: "{tmp_path / "key"}"}}
    static_configs: [{{targets: ["127.0.0.1:{ports["api"]}"]}}]
"""
    )
    commands = {
        "consumer": [*python, "consume", "--metrics-port", str(ports["consumer"])],
        "api": [*python, "serve", "--port", str(ports["api"]), "--no-access-log"],
        "prometheus": [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        ],
    }
    processes = {
        name: subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=logs[name], stderr=logs[name]
        )
        for name, command in commands.items()
    }
    try:
        yield {"pipeline": Pipeline(settings, pipeline.bootstrap), "ports": ports}
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()


def query(port: int, promql: str) -> dict[tuple, float]:
    """An instant query's vector as {label values: value}."""
    response = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql})
    response.raise_for_status()
    return {
        tuple(sorted(item["metric"].items())): float(item["value"][1])
        for item in response.json()["data"]["result"]
    }


def by(labels: tuple[str, ...], vector: dict[tuple, float]) -> dict[tuple, int]:
    return {tuple(dict(k)[name] for name in labels): int(v) for k, v in vector.items()}


def test_prometheus_reads_the_counts_the_database_has(running):
    p: Pipeline = running["pipeline"]
    ports = running["ports"]
    views_topic, orders_topic = p.settings.kafka_views_topic, p.settings.kafka_orders_topic
    made: Counter = Counter()
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{ports['api']}",
        headers={"X-API-Key": API_KEY},
        event_hooks={"response": [lambda response: _note(made, response)]},
    )
    wait_for("the server", lambda: client.get("/healthz").status_code)
    wait_for("the live view", lambda: client.get("/api/realtime").json()["catching_up"] is False)

    views = [view(i) for i in range(40)]
    orders = [order(i) for i in range(12)]
    p.produce_views(views + list(BAD_VIEWS))
    p.produce_orders(orders + list(BAD_ORDERS))
    # Redelivered events (the same messageid again), once the first copies are stored.
    wait_for("the first copies", lambda: _count(p, "SELECT count(*) FROM product_views") == 40)
    p.produce_views(views[:9] + [view(99, messageid="view-3")])
    p.produce_orders(orders[:4])
    total_records = {views_topic: 40 + 5 + 10, orders_topic: 12 + 2 + 4}
    wait_for("every record consumed", lambda: _consumed(ports["prometheus"]) == total_records)

    stored = {
        views_topic: _count(p, "SELECT count(*) FROM product_views"),
        orders_topic: _count(p, "SELECT count(DISTINCT messageid) FROM order_lines"),
    }
    dead = Counter(
        {
            (topic, code): n
            for topic, code, n in p.query(
                "SELECT topic, split_part(reason, ':', 1), count(*) FROM dead_letters GROUP BY 1, 2"
            )
        }
    )
    assert stored == {views_topic: 40, orders_topic: 12}
    assert dead == Counter({(views_topic, c): 1 for c in BAD_VIEWS.values()}) + Counter(
        {(orders_topic, c): 1 for c in BAD_ORDERS.values()}
    )

    events = by(("topic", "outcome"), query(ports["prometheus"], "clickstream_ingest_events_total"))
    assert events == {
        (views_topic, "stored"): stored[views_topic],
        (views_topic, "duplicate"): 10,
        (views_topic, "dead_letter"): 5,
        (orders_topic, "stored"): stored[orders_topic],
        (orders_topic, "duplicate"): 4,
        (orders_topic, "dead_letter"): 2,
        (views_topic, "erased"): 0,  # no user was erased
        (orders_topic, "erased"): 0,
    }
    reasons = by(("topic", "reason"), query(ports["prometheus"], "clickstream_dead_letters_total"))
    assert reasons == dict(dead)
    (batches,) = query(ports["prometheus"], "clickstream_ingest_batches_total").values()
    (timed,) = query(ports["prometheus"], "clickstream_ingest_batch_seconds_count").values()
    assert timed == batches > 1
    lag = wait_for(
        "the consumer's lag per partition",
        lambda: query(ports["prometheus"], "clickstream_consumer_lag"),
    )
    assert {dict(k)["topic"] for k in lag} == {views_topic, orders_topic}
    assert len(lag) == 2 * p.settings.kafka_partitions
    assert query(ports["prometheus"], "clickstream_event_time_lag_seconds")
    assert query(ports["prometheus"], "clickstream_last_commit_timestamp_seconds")

    _make_requests(client)
    client.close()
    wait_for("the requests in Prometheus", lambda: _requests(ports["prometheus"]) == made)
    assert made[(RECENT, "200")] == 7 and made[(RECENT, "422")] == 3
    window = wait_for(
        "the live window's count",
        lambda: query(ports["prometheus"], "clickstream_realtime_window_events == 40"),
    )
    assert len(window) == 1


def _count(p: Pipeline, sql: str) -> int:
    return p.query(sql)[0][0]


def _consumed(port: int) -> dict[str, int]:
    vector = query(port, "sum by (topic) (clickstream_ingest_events_total)")
    return {dict(k)["topic"]: int(v) for k, v in vector.items()}


def _requests(port: int) -> dict[tuple[str, str], int]:
    vector = query(port, 'clickstream_http_requests_total{route!="/metrics"}')
    return {k: n for k, n in by(("route", "status"), vector).items() if n}


RECENT = "/api/users/{user_id}/recently-viewed"


def _note(made: Counter, response: httpx.Response) -> None:
    """Tally a response the server sent, under the route template it should count it."""
    path = response.request.url.path
    if path == "/metrics":
        return  # Prometheus's own scrapes count there too
    route = RECENT if path.startswith("/api/users/") else path
    if route not in (RECENT, "/healthz", "/api/realtime"):
        route = "unmatched"
    made[(route, str(response.status_code))] += 1


def _make_requests(client: httpx.Client) -> None:
    """A known mix of answered, refused and invalid requests."""
    for i in range(7):
        assert client.get(f"/api/users/user-{i}/recently-viewed").status_code == 200
    for limit in ("0", "many", "101"):
        response = client.get(f"/api/users/user-1/recently-viewed?limit={limit}")
        assert response.status_code == 422
    for _ in range(2):
        unauthorized = client.get("/api/users/user-1/recently-viewed", headers={"X-API-Key": ""})
        assert unauthorized.status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/no/such/page").status_code == 404
