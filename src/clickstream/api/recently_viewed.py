"""`GET /api/users/{user_id}/recently-viewed`: the products a user looked at last.

Also `GET /api/ping`, which answers without touching anything: the benchmark compares the
real endpoint with it to show what the database path costs on top of HTTP.

The path accepts slashes in `user_id` on purpose: a percent-encoded `/` or a `..%2F` then
reaches the validation and gets a 422 that says what is wrong, instead of a bare 404.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from clickstream.api.errors import ErrorBody
from clickstream.events import MAX_ID_LENGTH
from clickstream.store.recent import recently_viewed

__all__ = ["MAX_LIMIT", "USER_ID_PATTERN", "router"]

MAX_LIMIT = 100
# The cleaning rules' ids (no C0/C1 control characters), minus the path separators.
USER_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f/\\]+$"

router = APIRouter(
    prefix="/api",
    tags=["recommendations"],
    responses={
        401: {"model": ErrorBody, "description": "API key required and missing or wrong"},
        422: {"model": ErrorBody, "description": "A malformed parameter"},
        503: {"model": ErrorBody, "description": "The database is unavailable"},
    },
)


class RecentlyViewed(BaseModel):
    user_id: str
    products: list[str]


class Pong(BaseModel):
    ok: bool


_PONG = orjson.dumps({"ok": True})


def _json(content: bytes) -> Response:
    return Response(content, media_type="application/json")


@router.get(
    "/users/{user_id:path}/recently-viewed",
    response_model=RecentlyViewed,
    summary="The distinct products a user viewed, most recent first",
)
async def get_recently_viewed(
    request: Request,
    user_id: Annotated[
        str,
        Path(
            min_length=1,
            max_length=MAX_ID_LENGTH,
            pattern=USER_ID_PATTERN,
            description="The user id exactly as the events carry it, e.g. `user-176`",
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many products at most")] = 5,
) -> Response:
    """A user with no views gets an empty list. A view is here within about a second of
    being consumed."""
    async with request.app.state.database.connection() as conn:
        products = await recently_viewed(conn, user_id, limit)
    return _json(orjson.dumps({"user_id": user_id, "products": products}))


@router.get("/ping", response_model=Pong, summary="Answers at once; touches no database")
async def ping() -> Response:
    return _json(_PONG)
