"""The HTTP surface of `clickstream serve`: the recommendation API, the realtime view and its
dashboard, in one ASGI app.

Features plug in here: each adds its router with `app.include_router(...)` and, when it owns
long-lived resources (a connection pool, a Kafka reader), enters them on `resources` in the
lifespan so that shutdown releases them in reverse order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from clickstream import __version__
from clickstream.api import health, metrics, realtime, recently_viewed
from clickstream.api.auth import ApiKeyMiddleware
from clickstream.api.database import Database
from clickstream.api.errors import install_error_handlers
from clickstream.config import Settings
from clickstream.realtime.source import RealtimeSource

__all__ = ["create_app"]


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as resources:
            app.state.resources = resources
            resources.push_async_callback(app.state.database.close)
            app.state.realtime = resources.enter_context(RealtimeSource(settings))
            app.state.streams = realtime.broadcast(
                app.state.realtime, settings.realtime_max_streams
            )
            resources.push_async_callback(app.state.streams.close)
            app.state.live_view_metrics = metrics.live_view_registry(app.state.realtime)
            yield

    # FastAPI's built-in OpenTelemetry hooks look up the global providers on every request;
    # nothing here exports traces or metrics, so they would only cost time.
    app = FastAPI(
        title="clickstream",
        version=__version__,
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.database = Database(settings)
    app.state.broker = health.Broker(settings)
    app.state.recent_views = recently_viewed.reader(app.state.database)
    install_error_handlers(app)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key)
    routers = [recently_viewed.router, health.router, realtime.router]
    if settings.api_metrics:
        routers.append(metrics.router)
        routes = [route for router in routers for route in router.routes]
        # Outermost, so that it counts the requests the API key refuses too.
        app.add_middleware(metrics.RequestMetricsMiddleware, routes=routes)
    for router in routers:
        app.include_router(router)
    return app
