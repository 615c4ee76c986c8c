"""Every Prometheus metric of the project, and the few calls the running parts make to them.

The consumer and the server count into `prometheus_client` metrics; what is a reading of the
present (event-time lag, consumer lag, the live window) is a collector that reads plain
attributes when Prometheus scrapes, so the hot paths only assign numbers.

The consumer's metrics are created the first time a consumer turns them on, never at import:
`clickstream serve` with several workers runs `prometheus_client` in multiprocess mode, where
every metric without labels writes a file per process as soon as it exists, and the server
must not report a consumer's histogram full of zeros.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from clickstream.errors import UsageError

if TYPE_CHECKING:
    from clickstream.config import Settings
    from clickstream.ingest.cleaning import CleanBatch
    from clickstream.ingest.raw import RawEvent
    from clickstream.store.writer import WriteResult

__all__ = [
    "CONTENT_TYPE_LATEST",
    "IngestMetrics",
    "LiveReading",
    "LiveViewCollector",
    "exposed_names",
    "exposed_registry",
    "http_metrics",
    "multiprocess_dir",
    "records_and_newest",
    "render",
    "retry_cause",
    "serve_consumer_metrics",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Batch writes take milliseconds to a few seconds; retries during an outage take longer.
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Lookups answer in about a millisecond; the push stream lasts as long as a dashboard is open.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_TOPIC = itemgetter(1)  # RawEvent.topic
_VIEW_TIME = itemgetter(4)  # ViewRow.viewed_at
_ORDER_TIME = itemgetter(6)  # OrderLineRow.ordered_at


# -- the consumer -------------------------------------------------------------------------------


class _IngestFamilies:
    """The consumer's counters and histogram (created once per process, see the module doc)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "clickstream_ingest_events",
            "Kafka records consumed, by outcome: stored, duplicate, dead_letter or erased (an"
            " erased user's event from before the erasure, skipped)",
            ["topic", "outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "clickstream_dead_letters",
            "dead letters written, by reason code (the part of the reason before ':')",
            ["topic", "reason"],
            registry=registry,
        )
        self.batches = Counter(
            "clickstream_ingest_batches", "batches written and committed", registry=registry
        )
        self.batch_seconds = Histogram(
            "clickstream_ingest_batch_seconds",
            "one batch's write, database commit and retries included",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "clickstream_ingest_retries",
            "writes retried because the database or broker failed, by cause",
            ["cause"],
            registry=registry,
        )
        self.state = _ConsumerState()
        registry.register(self.state)


class _ConsumerState(Collector):
    """The consumer's readings of the present, computed when scraped."""

    def __init__(self) -> None:
        self.newest_event: float | None = None  # epoch seconds of the newest stored event
        self.last_commit: float | None = None
        self.lag: dict[tuple[str, int], int] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "clickstream_consumer_lag",
            "records on the broker not yet consumed, per partition this consumer owns",
            labels=["topic", "partition"],
        )
        for (topic, partition), count in sorted(self.lag.items()):
            lag.add_metric([topic, str(partition)], count)
        yield lag
        if self.newest_event is not None:
            yield GaugeMetricFamily(
                "clickstream_event_time_lag_seconds",
                "now minus the newest event time this consumer stored",
                value=time.time() - self.newest_event,
            )
            yield GaugeMetricFamily(
                "clickstream_newest_stored_event_timestamp_seconds",
                "event time of the newest event this consumer stored, epoch seconds",
                value=self.newest_event,
            )
        if self.last_commit is not None:
            yield GaugeMetricFamily(
                "clickstream_last_commit_timestamp_seconds",
                "when this consumer last committed offsets, epoch seconds",
                value=self.last_commit,
            )


@functools.cache
def _ingest_families() -> _IngestFamilies:
    return _IngestFamilies(REGISTRY)


class IngestMetrics:
    """What the consumer reports after each batch, retry and commit; nothing when disabled.

    Disabled (`ingest.metrics_port` 0) every call returns at once, so a consumer without
    metrics pays one attribute test per batch.
    """

    def __init__(self, settings: Settings) -> None:
        self.enabled = bool(settings.ingest_metrics_port)
        self._views_topic = settings.kafka_views_topic
        self._orders_topic = settings.kafka_orders_topic
        self._families = _ingest_families() if self.enabled else None

    def batch_written(
        self, raw: list[RawEvent], batch: CleanBatch, written: WriteResult, seconds: float
    ) -> None:
        """Count a durable batch: each record once, as stored, duplicate or dead letter."""
        if self._families is None:
            return
        records, newest = records_and_newest(raw, batch, written)
        self.share_written(records, newest, written, seconds)

    def share_written(
        self,
        records: Mapping[str, int],
        newest: float | None,
        written: WriteResult,
        seconds: float,
    ) -> None:
        """Count a durable batch from its records per topic and what it stored: how a Spark
        task's share, written in a worker process, is counted where the metrics are served."""
        families = self._families
        if families is None:
            return
        dead = Tally(topic for topic, _ in written.dead_letter_reasons)
        for (topic, code), count in Tally(written.dead_letter_reasons).items():
            families.dead_letters.labels(topic, code).inc(count)
        stored = {self._views_topic: written.views, self._orders_topic: written.orders}
        erased = {
            self._views_topic: written.erased_views,
            self._orders_topic: written.erased_orders,
        }
        events = families.events
        for topic, count in records.items():
            kept, gone = stored.get(topic, 0), erased.get(topic, 0)
            events.labels(topic, "stored").inc(kept)
            events.labels(topic, "dead_letter").inc(dead[topic])
            events.labels(topic, "erased").inc(gone)
            events.labels(topic, "duplicate").inc(max(count - kept - dead[topic] - gone, 0))
        families.batches.inc()
        families.batch_seconds.observe(seconds)
        state = families.state
        if newest is not None and (state.newest_event is None or newest > state.newest_event):
            state.newest_event = newest

    def retried(self, exc: BaseException) -> None:
        self.retried_for(retry_cause(exc))

    def retried_for(self, cause: str) -> None:
        if self._families is not None:
            self._families.retries.labels(cause).inc()

    def committed(self) -> None:
        if self._families is not None:
            self._families.state.last_commit = time.time()

    def consumer_lag(self, lags: Iterable[tuple[str, int, int | None]]) -> None:
        """Take a reading of (topic, partition, lag), leaving out partitions whose lag is not
        known yet."""
        if self._families is None:
            return
        self._families.state.lag = {(t, p): lag for t, p, lag in lags if lag is not None}

    def consumer_lag_known(self, read: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        """After each batch: update the partitions whose lag the consumer knows by itself
        (`read`, no broker round trip), so a scrape soon after the start has a sample; the
        progress line's full reading replaces them all."""
        if self._families is not None:
            self._families.state.lag.update({(t, p): lag for t, p, lag in read()})


def retry_cause(exc: BaseException) -> str:
    """A short, bounded label: the SQLSTATE when the database gave one, else the error type."""
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc.__cause__, "sqlstate", None)
    return f"sqlstate-{sqlstate}" if sqlstate else type(exc).__name__


def records_and_newest(
    raw: list[RawEvent], batch: CleanBatch, written: WriteResult
) -> tuple[Tally[str], float | None]:
    """What the metrics need of a batch's events: its records per topic, and the newest event
    time it stored."""
    newest = _newest_event_time(batch) if written.views or written.orders else None
    return Tally(map(_TOPIC, raw)), newest


def _newest_event_time(batch: CleanBatch) -> float | None:
    # Every stored time has the one format of `format_timestamp`: text order is time order.
    newest = max(
        max(map(_VIEW_TIME, batch.views), default=""),
        max(map(_ORDER_TIME, batch.order_lines), default=""),
    )
    if not newest:
        return None
    from clickstream.ingest.event_time import epoch_ms

    return epoch_ms(newest) / 1000


def serve_consumer_metrics(settings: Settings) -> None:
    """Serve this process's metrics on `ingest.metrics_host:ingest.metrics_port` (a thread)."""
    host, port = settings.ingest_metrics_host, settings.ingest_metrics_port
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None


# -- the HTTP server ----------------------------------------------------------------------------


class _HttpFamilies:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "clickstream_http_requests",
            "requests answered, by route template and status code",
            ["route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "clickstream_http_request_duration_seconds",
            "time from a request's arrival to its response's last byte, by route template",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )


@functools.cache
def http_metrics() -> _HttpFamilies:
    return _HttpFamilies(REGISTRY)


class LiveReading(NamedTuple):
    """What the live view knows about itself at one moment (see `RealtimeSource.reading`)."""

    views: int
    late: int
    future: int
    duplicates: int
    catching_up: bool
    received: int
    newest_ms: int | None


class LiveViewCollector(Collector):
    """The live window of one server process, read when scraped."""

    def __init__(self, read: Callable[[], LiveReading]) -> None:
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        reading = self.read()
        for name, documentation, value in (
            ("window_events", "views inside the live window now", reading.views),
            ("late_events", "views that arrived older than the window (not shown)", reading.late),
            ("future_events", "views dated too far ahead (not shown)", reading.future),
            ("duplicates", "views placed twice and counted once", reading.duplicates),
            (
                "catching_up",
                "1 while the readers are still reading the backlog the window needs",
                int(reading.catching_up),
            ),
            ("received", "views the readers delivered since the server started", reading.received),
        ):
            yield GaugeMetricFamily(f"clickstream_realtime_{name}", documentation, value=value)
        if reading.newest_ms is not None:
            yield GaugeMetricFamily(
                "clickstream_realtime_delay_seconds",
                "now minus the newest event time the readers delivered",
                value=max(time.time() - reading.newest_ms / 1000, 0.0),
            )


def multiprocess_dir(data_dir: Path, port: int) -> Path:
    """A fresh directory for the workers' metric files of one server (its port)."""
    path = data_dir / "prometheus" / str(port)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def render(*extra: CollectorRegistry) -> bytes:
    """The text format of this process (of every worker in multiprocess mode), then `extra`."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return b"".join(generate_latest(r) for r in (registry, *extra))


def exposed_registry() -> CollectorRegistry:
    """A registry of every metric family this module can expose, the readings of the present
    given a sample value so that they show (the docs' metrics reference is generated from it)."""
    registry = CollectorRegistry()
    consumer = _IngestFamilies(registry).state
    consumer.newest_event = consumer.last_commit = 0.0
    consumer.lag = {("topic", 0): 0}
    _HttpFamilies(registry)
    sample = LiveReading(0, 0, 0, 0, False, 0, 0)
    registry.register(LiveViewCollector(lambda: sample))
    return registry


def exposed_names() -> set[str]:
    """Every metric family this module can expose (what dashboards and alerts may use)."""
    return {family.name for family in exposed_registry().collect()}
