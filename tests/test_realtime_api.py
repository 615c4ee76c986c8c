"""`GET /api/realtime` end to end: events with known timestamps into the embedded broker, the
server's live window read back over HTTP, exact after a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from confluent_kafka import Producer

from clickstream.api.broadcast import Broadcast
from clickstream.api.server import BackgroundServer, run_in_background
from clickstream.ingest.event_time import format_timestamp
from clickstream.realtime.source import NOT_IN_CATALOG
from clickstream.store.catalog import upsert_products
from clickstream.store.db import connect

CATALOG = [("product-1", "category-1"), ("product-2", "category-2"), ("product-3", "category-1")]


def view(user: str, product: str, platform: str, at: datetime, messageid: str | None = None):
    return {
        "event": "ProductView",
        "messageid": messageid or str(uuid.uuid4()),
        "userid": user,
        "properties": {"productid": product},
        "context": {"source": platform},
        "timestamp": format_timestamp(at),
    }


def send(pipeline, events: list[dict], *, key: str | None = None) -> None:
    """Produce events as they are, keeping their own timestamps (the CLI stamps send time)."""
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "linger.ms": 5})
    for event in events:
        producer.produce(
            pipeline.settings.kafka_views_topic,
            value=orjson.dumps(event),
            key=(key or event["userid"]).encode(),
        )
    assert producer.flush(30) == 0


def shown(body: dict) -> dict:
    return {
        "users": body["active_users"]["users"],
        "count": body["active_users"]["count"],
        "categories": [(c["category"], c["views"]) for c in body["categories"]],
        "platforms": [(p["platform"], p["views"]) for p in body["platforms"]],
    }


def counts(body: dict) -> tuple[int, int, int]:
    return body["late_events"], body["future_events"], body["duplicates"]


def wait_for(
    server: BackgroundServer,
    expected: dict,
    timeout: float = 20,
    late_future_duplicates: tuple[int, int, int] | None = None,
) -> dict:
    """Read /api/realtime until it shows exactly `expected`; return the last body.

    Events of one send reach the window through different reader processes, so a body can
    show the expected panels before another reader's late or duplicate event is counted:
    name the counts to wait for them too.
    """
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{server.url}/api/realtime", timeout=5).json()
        if (
            shown(body) == expected
            and not body["catching_up"]
            and late_future_duplicates in (None, counts(body))
        ):
            return body
        time.sleep(0.1)
    raise AssertionError(
        f"/api/realtime still shows {shown(body)} and late, future, duplicates"
        f" {counts(body) if body else None}; expected {expected}, {late_future_duplicates}"
    )


def test_the_live_view_shows_exactly_the_window_and_is_right_again_after_a_restart(pipeline):
    with connect(pipeline.settings) as conn:
        upsert_products(conn, CATALOG)
    now = datetime.now(UTC)
    # already on the broker when the server starts:
    #   -400s  user-9 (history: out of the window, neither shown nor late)
    #   -250s  user-1 product-1 desktop (m-1), read again from another partition later
    #     -5s  user-2 product-2 ios
    #     -1s  user-10 product-77 (not in the catalog) android
    #     -1s  user-2 product-3 ios
    send(pipeline, [view("user-9", "product-1", "web", now - timedelta(seconds=400))])
    send(pipeline, [view("user-1", "product-1", "desktop", now - timedelta(seconds=250), "m-1")])
    send(
        pipeline,
        [
            view("user-2", "product-2", "ios", now - timedelta(seconds=5)),
            view("user-10", "product-77", "android", now - timedelta(seconds=1)),
            view("user-2", "product-3", "ios", now - timedelta(seconds=1)),
        ],
    )
    send(
        pipeline,
        [view("user-1", "product-1", "desktop", now - timedelta(seconds=250), "m-1")],
        key="another-partition",
    )
    expected = {
        "users": ["user-1", "user-2", "user-10"],
        "count": 3,
        "categories": [("category-1", 2), (NOT_IN_CATALOG, 1), ("category-2", 1)],
        "platforms": [("ios", 2), ("android", 1), ("desktop", 1)],
    }
    server = run_in_background(pipeline.settings, port=0)
    try:
        body = wait_for(server, expected)
        assert body["window_seconds"] == 300
        assert body["late_events"] == 0
        assert body["duplicates"] == 1
        as_of = datetime.fromisoformat(body["as_of"])
        assert abs((as_of - datetime.now(UTC)).total_seconds()) < 5

        # while it runs: a late event, a broken clock (stamped an hour ahead of its record:
        # shown at the record's time, as the consumer stores it), a new user, the duplicate
        now = datetime.now(UTC)
        send(
            pipeline,
            [
                view("user-7", "product-2", "web", now - timedelta(seconds=301)),
                view("user-8", "product-2", "web", now + timedelta(hours=1)),
                view("user-3", "product-2", "web", now),
                view("user-1", "product-1", "desktop", now - timedelta(seconds=250), "m-1"),
            ],
        )
        expected = {
            "users": ["user-1", "user-2", "user-3", "user-8", "user-10"],
            "count": 5,
            "categories": [("category-2", 3), ("category-1", 2), (NOT_IN_CATALOG, 1)],
            "platforms": [("ios", 2), ("web", 2), ("android", 1), ("desktop", 1)],
        }
        wait_for(server, expected, late_future_duplicates=(1, 0, 2))
    finally:
        server.stop()

    # a restart reads back "now minus the window" and is exact as soon as it caught up
    started = time.monotonic()
    server = run_in_background(pipeline.settings, port=0)
    try:
        body = wait_for(server, expected, timeout=15)
        assert time.monotonic() - started < 15
        # history is not late: the new process counts what arrives late from now on
        assert (body["late_events"], body["duplicates"]) == (0, 2)
    finally:
        server.stop()


def test_the_window_empties_when_traffic_stops(pipeline):
    settings = dataclasses.replace(pipeline.settings, realtime_window_seconds=3)
    pipeline = dataclasses.replace(pipeline, settings=settings)
    server = run_in_background(settings, port=0)
    try:
        wait_for(server, {"users": [], "count": 0, "categories": [], "platforms": []})
        send(pipeline, [view("user-5", "product-1", "web", datetime.now(UTC))])
        body = wait_for(
            server,
            {
                "users": ["user-5"],
                "count": 1,
                "categories": [(NOT_IN_CATALOG, 1)],
                "platforms": [("web", 1)],
            },
        )
        assert body["window_seconds"] == 3
        # no more traffic: three seconds after its event time the view is gone
        wait_for(server, {"users": [], "count": 0, "categories": [], "platforms": []}, timeout=6)
    finally:
        server.stop()


def test_the_push_stream_sends_a_snapshot_every_second(pipeline):
    server = run_in_background(pipeline.settings, port=0)
    try:
        snapshots = []
        with httpx.stream("GET", f"{server.url}/api/realtime/stream", timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    snapshots.append(orjson.loads(line[6:]))
                if len(snapshots) == 3:
                    break
        stamps = [datetime.fromisoformat(s["as_of"]) for s in snapshots]
        gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
        assert all(0.5 < gap < 2.5 for gap in gaps), gaps
        assert set(snapshots[0]) >= {"window_seconds", "as_of", "active_users", "categories"}
    finally:
        server.stop()


def test_one_rendering_serves_every_open_stream():
    """Ten streams, three frames each: all ten send frames 1, 2 and 3 of the one renderer
    (rendered per stream, they would see thirty different numbers)."""

    async def scenario():
        rendered: list[int] = []

        def render() -> bytes:
            rendered.append(len(rendered) + 1)
            return str(rendered[-1]).encode()

        streams = Broadcast(render, limit=10, period=0.01)
        assert all(streams.join() for _ in range(10))
        assert not streams.join(), "an eleventh stream is over the limit"

        async def take(count: int) -> list[bytes]:
            frames = []
            async for frame in streams.frames():
                frames.append(frame)
                if len(frames) == count:
                    return frames
            return frames

        sent = await asyncio.gather(*(take(3) for _ in range(10)))
        for _ in range(10):
            streams.leave()
        assert streams.join(), "a place given back can be taken again"
        await streams.close()
        return sent

    assert asyncio.run(scenario()) == [[b"1", b"2", b"3"]] * 10


def next_snapshot(lines) -> dict:
    """The next snapshot of a stream's lines. (Leaving httpx's line iterator early would
    close the stream: callers keep one iterator per stream.)"""
    for line in lines:
        if line.startswith("data: "):
            return orjson.loads(line[6:])
    raise AssertionError("the stream ended without a snapshot")


def test_streams_beyond_realtime_max_streams_get_503_until_one_closes(pipeline):
    settings = dataclasses.replace(pipeline.settings, realtime_max_streams=2)
    server = run_in_background(settings, port=0)
    url = f"{server.url}/api/realtime/stream"
    try:
        with httpx.Client(timeout=10) as one, httpx.Client(timeout=10) as two:
            with one.stream("GET", url) as first, two.stream("GET", url) as second:
                assert first.status_code == second.status_code == 200
                first_lines, second_lines = first.iter_lines(), second.iter_lines()
                assert next_snapshot(first_lines)["window_seconds"] == 300
                assert next_snapshot(second_lines)["window_seconds"] == 300
                refused = httpx.get(url, timeout=10)
                assert refused.status_code == 503
                assert refused.headers["content-type"] == "application/json"
                assert refused.headers["retry-after"] == "10"
                assert refused.json()["error"] == (
                    "2 live streams are open, the most this server serves"
                    " (realtime.max_streams): retry later, or read GET /api/realtime"
                )
                assert httpx.get(f"{server.url}/api/realtime", timeout=10).status_code == 200
                # the two streams carry on, sending the same frames (rendered once for both,
                # their "as_of" would differ): of three each, those of a same second are equal
                firsts = [next_snapshot(first_lines) for _ in range(3)]
                seconds = [next_snapshot(second_lines) for _ in range(3)]
                assert [s for s in seconds if s in firsts], (firsts, seconds)
            # both closed: the server notices at its next frame and gives the places back
            deadline = time.monotonic() + 15
            statuses = []
            while time.monotonic() < deadline:
                with one.stream("GET", url) as again, two.stream("GET", url) as also:
                    statuses = [again.status_code, also.status_code]
                    if statuses == [200, 200]:
                        assert next_snapshot(again.iter_lines())["window_seconds"] == 300
                        break
                time.sleep(0.5)
            assert statuses == [200, 200]
    finally:
        server.stop()
