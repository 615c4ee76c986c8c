"""The one way to retry a fault: capped exponential backoff, one log line per retry.

Whatever retries (the consumer's writes, `catalog load`, the reports) goes through
`retrying`, so every retry waits the same way and says the same thing: the cause, what the
operator can do, when the next attempt comes and what was left undone meanwhile.
Only `Unavailable` (a fault of the broker or the database) is retried; anything else
propagates at once.
"""

from __future__ import annotations

import logging
import threading
import time

import tenacity

from clickstream.errors import Unavailable

__all__ = ["ONE_SHOT_ATTEMPTS", "retrying"]

FIRST_WAIT = 0.2
# A command that does one thing (`catalog load`, `report`) rides out a blip, then says why
# it gives up; a long-running one (`consume`) retries until the fault is gone.
ONE_SHOT_ATTEMPTS = 4


def retrying(
    logger: logging.Logger,
    meanwhile: str,
    *,
    max_wait: float,
    stop: threading.Event | None = None,
    attempts: int | None = None,
) -> tenacity.Retrying:
    """Iterate `for attempt in retrying(...): with attempt: ...` to retry faults.

    Waits double from FIRST_WAIT up to `max_wait` seconds. `meanwhile` ends each log line
    ("nothing committed"). Gives up, re-raising the last fault, after `attempts` attempts,
    or as soon as `stop` is set during a wait.
    """

    last: list[BaseException | None] = [None]

    def sleep(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise Unavailable(f"stopped while retrying ({last[0]}); {meanwhile}") from last[0]

    def before_sleep(state: tenacity.RetryCallState) -> None:
        last[0] = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning("%s; retrying in %s s, %s", last[0], _seconds(wait), meanwhile)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(Unavailable),
        wait=tenacity.wait_exponential(multiplier=FIRST_WAIT, max=max_wait),
        stop=tenacity.stop_after_attempt(attempts) if attempts else tenacity.stop_never,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def _seconds(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")
