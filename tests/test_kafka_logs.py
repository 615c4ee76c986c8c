"""librdkafka's log through Python logging, once per interval, and one clear line when the
broker cannot be reached."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from confluent_kafka import Producer

from clickstream.errors import Unavailable
from clickstream.kafka.client import ensure_topics, producer_config, reach
from clickstream.kafka.logs import LOG, RepeatFilter
from clickstream.kafka.producer import produce_lines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("clickstream.librdkafka", level, __file__, 1, message, (), None)


def test_a_repeated_message_passes_once_per_interval_with_the_count():
    clock = Clock()
    repeat = RepeatFilter(interval=10, clock=clock)
    refused = "127.0.0.1:1/bootstrap: Connect failed: Connection refused (after {}ms in state X)"
    assert repeat.filter(record(refused.format(0)))
    # the same message, durations aside, within the interval: held back and counted
    for ms in (1, 0, 3):
        clock.now += 1
        assert not repeat.filter(record(refused.format(ms)))
    # another message, or the same at another level, is not a repeat
    assert repeat.filter(record("FAIL [rdkafka#producer-1] another broker is down"))
    assert repeat.filter(record(refused.format(0), level=logging.WARNING))
    clock.now = 10
    again = record(refused.format(7))
    assert repeat.filter(again)
    assert again.getMessage() == refused.format(7) + " (repeated 3 more times in the last 10s)"
    clock.now = 15
    assert not repeat.filter(record(refused.format(0)))
    clock.now = 100
    assert repeat.filter(quiet := record(refused.format(0)))
    assert quiet.getMessage().endswith("(repeated 1 more time in the last 90s)")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_librdkafka_logs_through_python_logging_deduplicated(monkeypatch):
    """A producer that cannot connect: librdkafka retries many times a second, the log says
    so once, then once more with the count when the interval has passed."""
    repeat = next(f for f in LOG.filters if isinstance(f, RepeatFilter))
    clock = Clock()
    monkeypatch.setattr(repeat, "_clock", clock)
    monkeypatch.setattr(repeat, "_seen", {})
    raw: list[str] = []
    passed: list[str] = []

    class Seen(logging.Filter):
        def filter(self, rec: logging.LogRecord) -> bool:
            raw.append(rec.getMessage())
            return True

    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            passed.append(rec.getMessage())

    seen, keep = Seen(), Keep()
    LOG.filters.insert(0, seen)  # sees every line, before the repeat filter
    LOG.addHandler(keep)
    port = closed_port()
    producer = Producer(producer_config(f"127.0.0.1:{port}", **{"reconnect.backoff.ms": 10}))
    try:

        def refused(lines: list[str]) -> list[str]:
            return [line for line in lines if "Connection refused" in line]

        deadline = time.monotonic() + 30
        while len(refused(raw)) < 5 and time.monotonic() < deadline:
            producer.poll(0.1)
        assert len(refused(raw)) >= 5, raw
        assert len(refused(passed)) == 1, passed
        assert passed[0].startswith("FAIL [rdkafka#producer-")
        assert f"Connect to ipv4#127.0.0.1:{port} failed: Connection refused" in passed[0]

        clock.now += 11
        while len(refused(passed)) < 2 and time.monotonic() < deadline:
            producer.poll(0.1)
        assert "more times in the last 11s)" in refused(passed)[1]
    finally:
        LOG.removeFilter(seen)
        LOG.removeHandler(keep)
        producer.flush(0)


def test_events_a_broker_never_took_are_counted_failed_with_the_reason():
    # Only failures are reported to the producer: what is not reported failed by the
    # flush was delivered, so a failure must still be counted, each one.
    lines = [b'{"event": "ProductView", "userid": "u1"}', b"not json", b"", b"{}"]
    result = produce_lines(
        f"127.0.0.1:{closed_port()}", "t", lines, config={"message.timeout.ms": 300}
    )
    assert (result.sent, result.delivered, result.failed) == (3, 0, 3)
    assert "Message timed out" in result.first_error


def test_an_unreachable_broker_is_one_clear_error():
    port = closed_port()
    with pytest.raises(Unavailable) as caught:
        ensure_topics(f"127.0.0.1:{port}", ["t"], 1)
    assert str(caught.value) == (
        f"cannot reach the Kafka broker at 127.0.0.1:{port}:"
        f" Connect to ipv4#127.0.0.1:{port} failed: Connection refused"
    )


def test_a_name_that_does_not_resolve_is_one_clear_error():
    with pytest.raises(Unavailable) as caught:
        reach("no-such-host.invalid:9092")
    message = str(caught.value)
    assert message.startswith("cannot reach the Kafka broker at no-such-host.invalid:9092: ")
    assert "Failed to resolve 'no-such-host.invalid:9092'" in message


def test_a_reachable_broker_answers_its_metadata(services):
    from clickstream.services.embedded import bootstrap_servers

    _, metadata = reach(bootstrap_servers(services))
    assert metadata.brokers
