"""The API's PostgreSQL connection pool, opened on first use.

Opening lazily lets the server start, and `/healthz` answer 503, while the database is down;
the first request after it comes back opens the pool. The API never changes the schema: it
checks that it is current before opening the pool, and while it is older than this version
needs, every request that needs the database (and `/healthz`) gets 503 with "run
`clickstream migrate`". Driver and pool errors leave this module translated by the error
policy (store/faults.py): every one is a fault the app answers with 503, a reason and
Retry-After, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from clickstream.config import Settings
from clickstream.errors import ClickstreamError, Unavailable
from clickstream.store.faults import classify

__all__ = ["Database"]

log = logging.getLogger("clickstream.api")

POOL_MIN = 2
POOL_MAX = 10
# How long a request waits for a free connection before it is answered with 503.
WAIT_SECONDS = 5.0
CHECK_SECONDS = 2.0


def _check_schema(settings: Settings) -> str:
    """The database's URL once its schema is current (SchemaOutOfDate otherwise)."""
    from clickstream.services.embedded import database_url
    from clickstream.store.db import connect

    with connect(settings):
        pass
    return database_url(settings)


class Database:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> AsyncConnectionPool:
        async with self._opening:
            if self._pool is None:
                try:
                    url = await asyncio.to_thread(_check_schema, self.settings)
                except Unavailable:
                    raise
                except ClickstreamError as exc:
                    raise Unavailable(str(exc)) from exc
                pool = AsyncConnectionPool(
                    url,
                    min_size=POOL_MIN,
                    max_size=POOL_MAX,
                    kwargs={"autocommit": True},
                    name="clickstream-api",
                    open=False,
                )
                await pool.open(wait=False)
                self._pool = pool
                log.info("connection pool open (%d to %d connections)", POOL_MIN, POOL_MAX)
            return self._pool

    @asynccontextmanager
    async def connection(
        self, wait: float = WAIT_SECONDS
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        pool = self._pool or await self._open()
        try:
            conn = await pool.getconn(timeout=wait)
        except PoolTimeout as exc:
            raise Unavailable("no database connection available: is the database up?") from exc
        try:
            yield conn
        except psycopg.Error as exc:
            raise classify(exc, role=conn.info.user) from exc
        finally:
            await pool.putconn(conn)

    async def check(self) -> str | None:
        """None when the database answers a query now, else why not."""
        try:
            async with self.connection(wait=CHECK_SECONDS) as conn:
                await conn.execute("SELECT 1")
        except Unavailable as exc:
            return str(exc)
        return None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
