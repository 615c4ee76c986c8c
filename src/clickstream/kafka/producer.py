"""Replay NDJSON into Kafka: keyed by userid, stamped with the send time, paced or flat out.

The producer never judges an event: a line that is not a JSON object is sent as it is, so
the consumer dead-letters it with a reason and nothing disappears on the way in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from confluent_kafka import KafkaException, Producer

from clickstream.kafka.client import Brokers, producer_config

__all__ = ["ProduceResult", "TimestampClock", "produce_lines", "stamp"]


@dataclass
class ProduceResult:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    interrupted: bool = False
    first_error: str | None = None


class TimestampClock:
    """The send time as `2026-11-24T13:00:00.123Z`, formatted once per millisecond."""

    def __init__(self) -> None:
        self._ms = -1
        self._text = ""

    def now(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            self._ms = ms
            seconds, millis = divmod(ms, 1000)
            self._text = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
            )
        return self._text


def stamp(line: bytes, timestamp: str, *, keep: bool = False) -> tuple[bytes | None, bytes]:
    """Return (key, value): a JSON object gets the send time and is keyed by its userid.

    With `keep`, an event that carries a `timestamp` already keeps it: events sent back
    after a fix then count in the hour they happened, not the hour they were resent.
    """
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, line
    if type(event) is not dict:
        return None, line
    if not keep or "timestamp" not in event:
        event["timestamp"] = timestamp
    userid = event.get("userid")
    key = userid.encode() if type(userid) is str else None
    return key, orjson.dumps(event)


def produce_lines(
    brokers: Brokers | str,
    topic: str,
    lines: Iterable[bytes],
    *,
    rate: float | None = None,
    limit: int | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
    config: dict | None = None,
    keep_timestamps: bool = False,
) -> ProduceResult:
    """Send each non-blank line; wait until every sent event is delivered or failed.

    `rate` is events per second (None: as fast as the broker takes them). Setting `stop`
    ends the replay early; what was sent before is still delivered.
    """
    result = ProduceResult()
    # Reports of failures only: one per delivered event cost the producer a Python call and
    # a message object each. The counts rely on it (`_flush`), so `config` cannot undo it.
    config = {**(config or {}), "delivery.report.only.error": True}
    producer = Producer(producer_config(brokers, **config))
    clock = TimestampClock()

    def failed(err, _msg) -> None:
        result.failed += 1
        if result.first_error is None:
            result.first_error = str(err)

    started = time.monotonic()
    pending_progress = 0
    try:
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            if limit is not None and result.sent >= limit:
                break
            if stop is not None and stop.is_set():
                result.interrupted = True
                break
            if rate is not None:
                delay = started + result.sent / rate - time.monotonic()
                if delay > 0:
                    producer.poll(0)
                    if stop is not None:
                        if stop.wait(delay):
                            result.interrupted = True
                            break
                    else:
                        time.sleep(delay)
            key, value = stamp(line, clock.now(), keep=keep_timestamps)
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=failed)
                    break
                except BufferError:
                    producer.poll(0.05)
            result.sent += 1
            pending_progress += 1
            if pending_progress >= 1000 or rate is not None:
                producer.poll(0)
                if on_progress:
                    on_progress(pending_progress)
                pending_progress = 0
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if on_progress and pending_progress:
            on_progress(pending_progress)
        _flush(producer, result)
    return result


def _flush(producer: Producer, result: ProduceResult) -> None:
    """Wait for every sent event: what was sent and did not fail by then was delivered."""
    try:
        remaining = producer.flush(120)
    except KeyboardInterrupt:
        remaining = producer.flush(120)
    except KafkaException as exc:  # pragma: no cover - broker gone while flushing
        remaining = len(producer)
        result.first_error = result.first_error or str(exc)
    if remaining:
        result.failed += remaining
        result.first_error = result.first_error or f"{remaining} events undelivered at exit"
    result.delivered = result.sent - result.failed
