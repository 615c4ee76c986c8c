"""The metrics endpoints on their own: several server workers add up into one /metrics,
`api.metrics` off removes it, a consumer whose metrics port is taken says so, and a write
reports what the consumer's outcome counters need."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from conftest import Pipeline, run_cli, settings_env
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from clickstream.api.server import run_in_background
from clickstream.ingest.cleaning import clean_batch
from clickstream.ingest.raw import Kind, RawEvent
from clickstream.store.db import connect
from clickstream.store.writer import write_batch

RECENT = "/api/users/{user_id}/recently-viewed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_workers_of_one_server_add_up_in_metrics(pipeline: Pipeline):
    port = free_port()
    settings = dataclasses.replace(pipeline.settings, realtime_readers=1)
    command = [sys.executable, "-m", "clickstream", "serve", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--workers", "2", "--no-access-log"],
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for both workers: each answers once it has started
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        files = settings.data_dir / "prometheus" / str(port)
        sent = 0
        # A new connection each, until both workers have answered some (the kernel picks).
        while len(served := _requests_per_worker(files)) < 2 or sent < 30:
            for _ in range(10):
                response = httpx.get(f"{url}/api/users/user-{sent}/recently-viewed")
                assert response.status_code == 200
                sent += 1
            assert time.monotonic() < deadline + 60, f"one worker answered all: {served}"
        assert httpx.get(f"{url}/api/users/user-1/recently-viewed?limit=0").status_code == 422
        text = httpx.get(f"{url}/metrics").text
    finally:
        server.terminate()
        server.wait(30)
    found = samples(text)
    requests = "clickstream_http_requests_total"
    assert all(count > 0 for count in served.values()) and len(served) == 2
    assert found[(requests, (("route", RECENT), ("status", "200")))] == sent
    assert found[(requests, (("route", RECENT), ("status", "422")))] == 1
    count = "clickstream_http_request_duration_seconds_count"
    assert found[(count, (("route", RECENT),))] == sent + 1
    # The files of the workers live under the data directory, one folder per server port.
    assert list((settings.data_dir / "prometheus" / str(port)).glob("*.db"))
    # The live view's gauges come once, from the worker that answered, not once per worker.
    assert [name for name, _ in found if name == "clickstream_realtime_window_events"] == [
        "clickstream_realtime_window_events"
    ]


def _requests_per_worker(files) -> dict[str, float]:
    """Requests of the recently-viewed route each worker process counted, from the files of
    prometheus_client's multiprocess mode (one per metric kind and process id)."""
    served: dict[str, float] = {}
    for path in files.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            name, _, labels, _ = json.loads(key)
            if name == "clickstream_http_requests" and labels.get("route") == RECENT:
                served[pid] = served.get(pid, 0.0) + value
    return {pid: n for pid, n in served.items() if n}


def test_metrics_off_serves_no_metrics_and_counts_nothing(pipeline: Pipeline):
    settings = dataclasses.replace(pipeline.settings, api_metrics=False, realtime_readers=1)
    server = run_in_background(settings, "127.0.0.1", 0)
    try:
        assert httpx.get(f"{server.url}/metrics").status_code == 404
        assert httpx.get(f"{server.url}/api/users/user-1/recently-viewed").status_code == 200
    finally:
        server.stop()
    assert "/metrics" not in server.server.config.app.openapi()["paths"]


def test_a_consumer_whose_metrics_port_is_taken_says_so(pipeline: Pipeline):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(pipeline.settings, "consume", "--metrics-port", str(port), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"clickstream: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ], result.stderr


@pytest.mark.parametrize("value", ["-1", "65536", "many"])
def test_a_bad_metrics_port_is_refused_in_one_line(pipeline: Pipeline, value):
    result = run_cli(pipeline.settings, "consume", "--metrics-port", value, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--metrics-port" in result.stderr


def test_a_write_says_which_orders_and_dead_letters_were_new(pipeline: Pipeline):
    """What the consumer's outcome counters rest on: new orders (not lines) and each new dead
    letter's reason code, across direct and merged writes and a redelivered batch."""
    topic = pipeline.settings.kafka_orders_topic
    m1, m2, m3 = (order(f"m-{i}", i) for i in range(1, 4))  # 1, 2 and 3 line items
    bad = b"{broken"
    missing = orjson.dumps({"event": "OrderEvent", "messageid": "x", "userid": "u"})
    with connect(pipeline.settings, autocommit=True) as conn:
        first = write_batch(conn, cleaned(topic, {0: m1, 1: m2, 2: bad, 3: missing}))
        # Redelivered: m-2 and both bad records; m-1 again twice at new offsets; m-3 new.
        second = write_batch(conn, cleaned(topic, {1: m2, 4: m3, 5: m1, 6: m1, 2: bad, 3: missing}))
    assert (first.orders, first.order_lines, first.duplicates) == (2, 3, 0)
    assert sorted(first.dead_letter_reasons) == [(topic, "bad-json"), (topic, "missing-field")]
    assert first.dead_letters == 2
    assert (second.orders, second.order_lines, second.duplicates) == (1, 3, 4)
    assert (second.dead_letters, second.dead_letter_reasons) == (0, ())


def order(messageid: str, items: int) -> bytes:
    lineitems = [{"productid": f"product-{n}", "quantity": 1} for n in range(items)]
    event = {"event": "OrderEvent", "messageid": messageid, "userid": "user-1", "orderid": 7}
    return orjson.dumps(event | {"lineitems": lineitems})


def cleaned(topic: str, records: dict[int, bytes]):
    """The batch the consumer would write for these records (offset: value) of partition 0."""
    raw = [RawEvent(Kind.ORDER, topic, 0, offset, v, None) for offset, v in records.items()]
    return clean_batch(raw)


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    try:
        return samples(httpx.get(url, timeout=5).text)
    except httpx.HTTPError:
        return {}


def test_the_consumer_lag_has_a_sample_at_the_first_scrape(pipeline: Pipeline):
    """Read after each batch, not only with the progress line (here once in ten minutes): a
    scrape right after the events are stored sees the lag of each partition they came from."""
    settings = dataclasses.replace(pipeline.settings, ingest_log_every_seconds=600.0)
    Pipeline(settings, pipeline.bootstrap).produce_views(
        [orjson.dumps(_view(i)) for i in range(40)]
    )
    port = free_port()
    consumer = subprocess.Popen(
        [sys.executable, "-m", "clickstream", "consume", "--metrics-port", str(port)],
        env=settings_env(settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    topic = settings.kafka_views_topic
    stored = ("clickstream_ingest_events_total", (("outcome", "stored"), ("topic", topic)))
    try:
        deadline = time.monotonic() + 60
        while True:  # the lag follows each batch's commit: at most a moment after the count
            found = _scrape(url)
            lags = {
                labels: value
                for (name, labels), value in found.items()
                if name == "clickstream_consumer_lag" and dict(labels)["topic"] == topic
            }
            if found.get(stored) == 40 and lags:
                break
            assert time.monotonic() < deadline, f"no lag sample after storing: {lags}"
            time.sleep(0.2)
    finally:
        consumer.terminate()
        consumer.wait(30)
    assert lags and set(lags.values()) == {0}


def _view(i: int) -> dict:
    return {
        "event": "ProductView",
        "messageid": f"lag-{i}",
        "userid": f"user-{i % 3}",
        "properties": {"productid": "product-1"},
        "context": {"source": "web"},
    }
