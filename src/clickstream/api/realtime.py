"""The live view over HTTP: `GET /api/realtime`, its push stream, and the dashboard at `/`.

The window lives in this process (`app.state.realtime`, a `RealtimeSource` entered in the
app's lifespan): every worker reads the views topic itself, so any of them answers alike.
The push stream is server-sent events: one `snapshot` event a second, the same JSON as
`GET /api/realtime`, rendered once for all the streams open (`Broadcast`); beyond
`realtime.max_streams` open streams a new one gets 503. The dashboard reads it with `fetch`
rather than `EventSource`, so it can send the API key header when one is configured.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from clickstream.api.broadcast import Broadcast
from clickstream.api.errors import ErrorBody, error_response
from clickstream.ingest.event_time import format_timestamp
from clickstream.realtime.source import LiveState, RealtimeSource

__all__ = ["PUSH_SECONDS", "STATIC_FILES", "broadcast", "render", "router"]

PUSH_SECONDS = 1.0
STATIC_FILES = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
_STATIC = resources.files("clickstream.api") / "static"

router = APIRouter(tags=["realtime"])
_UNAUTHORIZED = {401: {"model": ErrorBody, "description": "API key required and missing or wrong"}}


class ActiveUsers(BaseModel):
    count: int
    users: list[str]


class CategoryViews(BaseModel):
    category: str
    views: int


class PlatformViews(BaseModel):
    platform: str
    views: int


class Realtime(BaseModel):
    window_seconds: int
    as_of: str
    active_users: ActiveUsers
    categories: list[CategoryViews]
    platforms: list[PlatformViews]
    views: int
    late_events: int
    future_events: int
    duplicates: int
    catching_up: bool


def render(state: LiveState) -> bytes:
    """The contract's JSON, plus the counts that say what was left out and why."""
    snap = state.snapshot
    as_of = datetime.fromtimestamp(snap.as_of_ms / 1000, UTC)
    return orjson.dumps(
        {
            "window_seconds": snap.window_ms // 1000,
            "as_of": format_timestamp(as_of),
            "active_users": {"count": len(snap.users), "users": snap.users},
            "categories": [{"category": name, "views": n} for name, n in snap.categories],
            "platforms": [{"platform": name, "views": n} for name, n in snap.platforms],
            "views": snap.views,
            "late_events": snap.late,
            "future_events": snap.future,
            "duplicates": snap.duplicates,
            "catching_up": state.catching_up,
        }
    )


def _source(request: Request) -> RealtimeSource:
    return request.app.state.realtime


def broadcast(source: RealtimeSource, max_streams: int) -> Broadcast:
    """The one rendering a second that every push stream of this process sends."""
    return Broadcast(lambda: render(source.state()), max_streams, PUSH_SECONDS)


class _Stream(StreamingResponse):
    """A push stream that gives its place back however it ends, even before it started."""

    def __init__(self, content, streams: Broadcast, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streams.leave()


@router.get(
    "/api/realtime",
    response_model=Realtime,
    responses=_UNAUTHORIZED,
    summary="The last window (5 minutes by default) of product views, as of now",
)
async def get_realtime(request: Request) -> Response:
    """Distinct active users (count and ids), views per category and per platform, counts
    descending then name in natural order. Events older than the window on arrival are
    counted in `late_events`, timestamps too far ahead in `future_events`, a `messageid`
    read twice in `duplicates`; none of them is shown. `catching_up` is true while a fresh
    start is still reading what was already on the broker."""
    body = await run_in_threadpool(lambda: render(_source(request).state()))
    return Response(body, media_type="application/json")


@router.get(
    "/api/realtime/stream",
    summary="Server-sent events: a `snapshot` of GET /api/realtime every second",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        503: {"model": ErrorBody, "description": "realtime.max_streams streams are open"},
        **_UNAUTHORIZED,
    },
)
async def stream_realtime(request: Request) -> Response:
    """One snapshot a second, the same for every open stream. Beyond
    `realtime.max_streams` open streams, 503 with the reason and `Retry-After`."""
    streams: Broadcast = request.app.state.streams
    if not streams.join():
        return error_response(
            503,
            f"{streams.limit} live streams are open, the most this server serves"
            " (realtime.max_streams): retry later, or read GET /api/realtime",
            headers={"Retry-After": "10"},
        )

    async def events():
        yield b"retry: 2000\n\n"
        async for frame in streams.frames():
            if await request.is_disconnected():
                return
            yield b"event: snapshot\ndata: " + frame + b"\n\n"

    return _Stream(
        events(),
        streams,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(
        str(_STATIC / "index.html"), media_type="text/html", headers={"Cache-Control": "no-cache"}
    )


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no static file {name}")
    return FileResponse(
        str(_STATIC / name), media_type=media_type, headers={"Cache-Control": "no-cache"}
    )
