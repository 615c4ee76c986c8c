"""Many concurrent lookups answered by a few queries: requests that arrive while a query is
in flight wait for the next one and share it.

Under load this turns 64 requests in flight into a handful of queries of a dozen users each:
one round trip and one statement's overhead for all of them, on the server as well as in
the driver. There is no timer: a request that finds no query in flight starts one at once,
so a lone request waits for nothing but its own query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K")
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """`await get(key)`: the value `fetch` gives for key, fetched together with its peers.

    `fetch(keys)` returns one value per key, in order; at most `parallel` fetches run at a
    time, each with at most `max_batch` keys. An exception in a fetch goes to every caller
    of that batch.
    """

    def __init__(
        self,
        fetch: Callable[[list[K]], Awaitable[list[V]]],
        *,
        parallel: int = 2,
        max_batch: int = 256,
    ) -> None:
        self._fetch = fetch
        self._parallel = parallel
        self._max_batch = max_batch
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task] = set()

    async def get(self, key: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._running < self._parallel:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                try:
                    values = await self._fetch([key for key, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), value in zip(batch, values, strict=True):
                    if not future.done():
                        future.set_result(value)
        finally:
            self._running -= 1
