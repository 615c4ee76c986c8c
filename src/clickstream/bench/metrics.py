"""Metrics on and off in the benchmarks.

"On" means served, and scraped every second as Prometheus would, from a thread of the
benchmark's process. On a shared machine two runs of the same code differ by more than the
metrics cost, so the benchmarks also time the metrics' own work directly: what the consumer
does per batch and the server per request, as a share of the time per event or request the
run measured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import timeit
import urllib.request

from prometheus_client import REGISTRY, generate_latest

from clickstream.config import Settings
from clickstream.ingest.cleaning import CleanBatch
from clickstream.ingest.raw import RawEvent
from clickstream.metrics import IngestMetrics
from clickstream.store.writer import WriteResult

__all__ = [
    "METRICS_LEGS",
    "SCRAPE_SECONDS",
    "Scraper",
    "batch_seconds",
    "request_seconds",
    "scrape_seconds",
]

# `--metrics` of the benchmarks: the legs to run, metrics off (False) or on (True). `both`
# runs each twice in the order off, on, on, off, so that a machine that gets slower or faster
# during the run favours neither; each side's best leg is its figure.
METRICS_LEGS = {"off": (False,), "on": (True,), "both": (False, True, True, False)}
SCRAPE_SECONDS = 1.0


class Scraper:
    """GETs each URL every `SCRAPE_SECONDS` while entered; a failed scrape fails the run."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)

    def __enter__(self) -> Scraper:
        if self.urls:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.error is not None and exc[0] is None:
            raise RuntimeError(f"scraping the metrics failed: {self.error}")

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_SECONDS):
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        response.read()
                except OSError as exc:
                    self.error = exc
                    return


def _best_of(call, repeat: int = 5) -> float:
    """Seconds per call: the best of `repeat` timings of as many calls as fill 0.2 s."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number


def batch_seconds(settings: Settings, raw: list[RawEvent], batch: CleanBatch) -> float:
    """Seconds the consumer's metrics spend on one written batch."""
    metrics = IngestMetrics(dataclasses.replace(settings, ingest_metrics_port=1))
    written = WriteResult(len(batch.views), len(batch.order_lines), 0, 0, batch.orders)
    return _best_of(lambda: metrics.batch_written(raw, batch, written, 0.1))


def scrape_seconds() -> float:
    """Seconds one scrape of this process's metrics takes to render."""
    return _best_of(lambda: generate_latest(REGISTRY))


def request_seconds() -> float:
    """Seconds the request middleware adds to one request (a trivial app behind it)."""
    from clickstream.api.metrics import RequestMetricsMiddleware

    class Route:
        path = "/api/users/{user_id:anytext}/recently-viewed"

    async def answer(scope, receive, send) -> None:
        scope["route"] = Route
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict:
        return {}

    async def send(message) -> None:
        pass

    async def per_request(app, calls: int) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await app({"type": "http", "path": "/"}, receive, send)
        return (time.perf_counter() - started) / calls

    async def measure() -> float:
        wrapped = RequestMetricsMiddleware(answer, routes=[])
        await per_request(wrapped, 1000)  # warm the label cache
        bare = min([await per_request(answer, 20_000) for _ in range(5)])
        metered = min([await per_request(wrapped, 20_000) for _ in range(5)])
        return max(metered - bare, 0.0)

    return asyncio.run(measure())
