"""`GET /healthz`: is the database reachable, is the broker reachable.

503 as soon as either is down, with which one and why; the rest of the API keeps answering
what it can meanwhile. The broker probe is a metadata request on a client kept for the
life of the app, run in a thread because the Kafka client blocks.
"""

from __future__ import annotations

import asyncio
import threading

import orjson
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from clickstream.config import Settings
from clickstream.errors import ClickstreamError

__all__ = ["Broker", "router"]

CHECK_SECONDS = 2.0


class Component(BaseModel):
    ok: bool
    detail: str


class Health(BaseModel):
    status: str
    database: Component
    broker: Component


class Broker:
    """Answers "can the broker be reached" without creating a client per request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._admin: AdminClient | None = None
        self._bootstrap: str | None = None
        self._lock = threading.Lock()

    def _check(self) -> str | None:
        from clickstream.services.embedded import bootstrap_servers

        with self._lock:
            try:
                bootstrap = bootstrap_servers(self.settings)
            except ClickstreamError as exc:
                return str(exc)
            if self._admin is None or bootstrap != self._bootstrap:
                self._admin = AdminClient({"bootstrap.servers": bootstrap})
                self._bootstrap = bootstrap
            try:
                self._admin.list_topics(timeout=CHECK_SECONDS)
            except KafkaException as exc:
                return f"cannot reach the broker at {bootstrap}: {exc.args[0]}"
            return None

    async def check(self) -> str | None:
        """None when the broker answers now, else why not."""
        return await asyncio.to_thread(self._check)


router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or the broker is down"}},
    summary="Whether the database and the broker are reachable",
)
async def healthz(request: Request) -> Response:
    state = request.app.state
    db_problem, broker_problem = await asyncio.gather(state.database.check(), state.broker.check())
    ok = db_problem is None and broker_problem is None
    body = {
        "status": "ok" if ok else "unavailable",
        "database": {"ok": db_problem is None, "detail": db_problem or "reachable"},
        "broker": {"ok": broker_problem is None, "detail": broker_problem or "reachable"},
    }
    return Response(
        orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json"
    )
