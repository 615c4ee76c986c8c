"""librdkafka's own log, through Python logging, each distinct line at most once per interval.

Left to itself librdkafka prints to stderr, and a broker that cannot be reached makes it
repeat the same line about twenty times a second. Every client the project creates passes
`LOG` as confluent-kafka's `logger`, so those lines reach the `clickstream.librdkafka`
logger, where `RepeatFilter` lets a line through once per `REPEAT_SECONDS` and says how
many times it was repeated meanwhile.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

__all__ = ["LOG", "PROBE_LOG", "REPEAT_SECONDS", "RepeatFilter"]

REPEAT_SECONDS = 10.0
_MAX_KEYS = 1000
# What varies between two repeats of one message: durations and librdkafka's own counts.
_VARYING = re.compile(r"\d+ms|\d+ identical error\(s\) suppressed")


class RepeatFilter(logging.Filter):
    """Pass a message the first time, then at most once per `interval` seconds, with a count.

    Two messages are the same when they differ only in durations (`after 3ms in state
    CONNECT`). Called from librdkafka's threads, hence the lock.
    """

    def __init__(
        self, interval: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}  # key: (last passed, held)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        key = (record.levelno, _VARYING.sub("#", message))
        now = self._clock()
        with self._lock:
            passed, held = self._seen.get(key, (None, 0))
            if passed is not None and now - passed < self.interval:
                self._seen[key] = (passed, held + 1)
                return False
            if len(self._seen) >= _MAX_KEYS:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if held:
            since = now - passed
            times = "time" if held == 1 else "times"
            record.msg = f"{message} (repeated {held} more {times} in the last {since:.0f}s)"
            record.args = ()
        return True


LOG = logging.getLogger("clickstream.librdkafka")
LOG.addFilter(RepeatFilter())


class _Probe:
    """For a client whose failure becomes an error message of its own: its log is detail."""

    def log(self, level: int, msg: str, *args) -> None:
        LOG.debug(msg, *args)


PROBE_LOG = _Probe()
