"""What "metrics on" means in a benchmark: served, and scraped every second as Prometheus
would, from a thread of the benchmark's process."""

from __future__ import annotations

import threading
import urllib.request

__all__ = ["METRICS_LEGS", "SCRAPE_SECONDS", "Scraper"]

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
