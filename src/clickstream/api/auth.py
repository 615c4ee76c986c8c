"""The optional API key: when `api.key` is set, every `/api/` request and `/metrics` must
carry it, in the `X-API-Key` header or as `Authorization: Bearer <key>` (what Prometheus
sends from a scrape job's `authorization.credentials_file`).

A plain ASGI middleware rather than a FastAPI dependency, so that no route under `/api/`,
whoever adds it, can forget the check. The comparison takes the same time whatever the
first wrong byte, so the key cannot be guessed one byte at a time from response times.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from clickstream.api.errors import error_response

__all__ = ["HEADER", "ApiKeyMiddleware", "carries_key"]

HEADER = "X-API-Key"
_HEADER = HEADER.lower().encode()
_BEARER = b"bearer "


def _protected(path: str) -> bool:
    return path.startswith("/api/") or path == "/metrics"


def _given_key(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == _HEADER:
            return value
        if name == b"authorization" and value[:7].lower() == _BEARER:
            return value[7:].strip()
    return b""


def carries_key(headers: list[tuple[bytes, bytes]], key: str | None) -> bool:
    """Whether the request's headers carry `key`; never true when no key is configured."""
    if not key:
        return False
    return hmac.compare_digest(_given_key(headers), key.encode())


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _protected(scope["path"]):
            given = _given_key(scope["headers"])
            if not hmac.compare_digest(given, self.key):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                reason = "wrong API key" if given else "missing API key"
                response = error_response(
                    401,
                    f"{reason}: send it in the {HEADER} header",
                    headers={"WWW-Authenticate": HEADER},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
