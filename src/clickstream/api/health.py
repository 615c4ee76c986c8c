"""`GET /healthz`: is the database reachable, is the broker reachable.

503 as soon as either is down; the rest of the API keeps answering what it can meanwhile.
Anyone may ask, so by default the answer is only "ok" or "unavailable" per component: the
reasons name addresses and quote the driver, which is for operators. A request carrying
the configured API key gets them too (`detail`, passwords redacted), and every change of a
component's state is logged with its reason. The broker probe is a metadata request on a
client kept for the life of the app, run in a thread because the Kafka client blocks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Literal

import orjson
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from clickstream.api.auth import HEADER, carries_key
from clickstream.config import Settings
from clickstream.errors import ClickstreamError
from clickstream.kafka.client import admin_config
from clickstream.kafka.security import Brokers, brokers
from clickstream.kafka.tls import explain as explain_tls
from clickstream.util.redact import redact

__all__ = ["Broker", "router"]

log = logging.getLogger("clickstream.api")

CHECK_SECONDS = 2.0


class Component(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Component
    broker: Component


class Broker:
    """Answers "can the broker be reached" without creating a client per request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._admin: AdminClient | None = None
        self._brokers: Brokers | None = None
        self._lock = threading.Lock()

    def _check(self) -> str | None:
        with self._lock:
            try:
                address = brokers(self.settings)
            except ClickstreamError as exc:
                return str(exc)
            if self._admin is None or address != self._brokers:
                self._admin = AdminClient(admin_config(address))
                self._brokers = address
            try:
                self._admin.list_topics(timeout=CHECK_SECONDS)
            except KafkaException as exc:
                why = exc.args[0].str()
                if "ssl.ca.location" in address.properties:  # TLS: librdkafka says not why
                    why = explain_tls(address) or why
                return f"cannot reach the broker at {address}: {why}"
            return None

    async def check(self) -> str | None:
        """None when the broker answers now, else why not."""
        return await asyncio.to_thread(self._check)


router = APIRouter(tags=["operations"])


def _log_changes(request: Request, problems: dict[str, str | None]) -> None:
    """Log a component going down (with why) or coming back, once per change."""
    state = request.app.state
    seen: dict[str, str | None] = getattr(state, "health_seen", {})
    for name, problem in problems.items():
        if name in seen and (seen[name] is None) == (problem is None):
            continue
        if problem is not None:
            log.warning("health: the %s is unavailable: %s", name, redact(problem))
        elif name in seen:
            log.info("health: the %s is reachable again", name)
    state.health_seen = problems


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or the broker is down"}},
    summary="Whether the database and the broker are reachable",
)
async def healthz(request: Request) -> Response:
    """`ok` or `unavailable` per component. With the API key in the X-API-Key header
    (when `api.key` is set), each component also says why, in `detail`."""
    state = request.app.state
    database, broker = await asyncio.gather(state.database.check(), state.broker.check())
    problems = {"database": database, "broker": broker}
    _log_changes(request, problems)
    detailed = carries_key(request.scope["headers"], state.settings.api_key)
    body: dict[str, object] = {"status": "ok" if not any(problems.values()) else "unavailable"}
    for name, problem in problems.items():
        component = {"status": "ok" if problem is None else "unavailable"}
        if detailed:
            component["detail"] = "reachable" if problem is None else redact(problem)
        body[name] = component
    return Response(
        orjson.dumps(body),
        status_code=200 if body["status"] == "ok" else 503,
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Vary": HEADER},
    )
