"""One rendering a period for every open push stream, and a cap on how many may be open.

A snapshot of a busy window costs milliseconds; rendered per client per second it would grow
with the audience. Here one task renders it while at least one stream is open, and every
stream sends that same frame. Past `limit` open streams a new one is refused (the caller
answers 503), so a crowd of dashboards cannot starve the API of its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

__all__ = ["Broadcast"]

log = logging.getLogger("clickstream.api")


class Broadcast:
    def __init__(self, render: Callable[[], bytes], limit: int, period: float = 1.0) -> None:
        self._render = render
        self.limit = limit
        self.period = period
        self.open = 0
        self._frame: bytes | None = None
        self._number = 0
        self._fresh = asyncio.Event()
        self._task: asyncio.Task | None = None

    def join(self) -> bool:
        """Take a place for one stream; False when `limit` streams are open already."""
        if self.open >= self.limit:
            return False
        self.open += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    def leave(self) -> None:
        """Give the place back; the last stream to leave stops the rendering."""
        self.open = max(0, self.open - 1)

    async def frames(self) -> AsyncIterator[bytes]:
        """Each new frame once, starting with the newest one there is."""
        seen = 0
        while True:
            if self._number == seen:
                await self._fresh.wait()
            seen = self._number
            if self._frame is not None:
                yield self._frame

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.open > 0:
            started = loop.time()
            try:
                frame = await asyncio.to_thread(self._render)
            except Exception:  # the streams wait for the next frame; the log has the cause
                log.exception("cannot render the live view's snapshot")
            else:
                self._frame, self._number = frame, self._number + 1
                fresh, self._fresh = self._fresh, asyncio.Event()
                fresh.set()
            await asyncio.sleep(max(0.0, self.period - (loop.time() - started)))
        self._frame = None  # the next stream starts from a fresh frame, not an old one

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
