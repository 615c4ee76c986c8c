"""`GET /metrics` and the middleware that counts every request by route template and status.

The route label is the template (`/api/users/{user_id}/recently-viewed`), never the path a
client sent: ids in labels would make a new time series per user. A request no route
matched, or one the API key refused before routing, is labelled with the template that
would have matched, else `unmatched`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clickstream.metrics import CONTENT_TYPE_LATEST, LiveViewCollector, http_metrics, render

__all__ = ["RequestMetricsMiddleware", "live_view_registry", "router"]

UNMATCHED = "unmatched"
_CONVERTER = re.compile(r":[^}]*}")

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    description="Requests by route and status, their latency, and the live view's counts, "
    "in the Prometheus text format. Needs the API key when one is set.",
)
def metrics(request: Request) -> Response:
    return Response(render(request.app.state.live_view_metrics), media_type=CONTENT_TYPE_LATEST)


def live_view_registry(source) -> CollectorRegistry:
    """The live view's gauges of this process, read from `source` (a RealtimeSource)."""
    registry = CollectorRegistry()
    registry.register(LiveViewCollector(source.reading))
    return registry


class RequestMetricsMiddleware:
    """Counts and times each HTTP request; outermost, so refused requests count too."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # to name a request refused before routing
        self._families = http_metrics()
        self._children: dict[tuple[str, int], tuple] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            requests, duration = self._child(scope, status)
            requests.inc()
            duration.observe(time.perf_counter() - started)

    def _child(self, scope: Scope, status: int) -> tuple:
        """The (counter, histogram) of a route and status, looked up once each."""
        route = scope.get("route")
        template = route.path if route is not None else self._template(scope)
        key = (template, status)
        child = self._children.get(key)
        if child is None:
            label = _CONVERTER.sub("}", template)  # {user_id:anytext} reads {user_id}
            child = (
                self._families.requests.labels(label, str(status)),
                self._families.duration.labels(label),
            )
            self._children[key] = child
        return child

    def _template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "path", UNMATCHED)
        return UNMATCHED
