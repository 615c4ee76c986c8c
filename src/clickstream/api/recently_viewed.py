"""`GET /api/users/{user_id}/recently-viewed`: the products a user looked at last.

Also `GET /api/ping`, which answers without touching anything: the benchmark compares the
real endpoint with it to show what the database path costs on top of HTTP.

The parameters are checked here, by `parse_lookup`, rather than by FastAPI's per-parameter
validation: on this, the busiest route, that machinery cost more than the database lookup
itself. The OpenAPI document still describes them exactly (`_PARAMETERS`).

The path accepts any text in `user_id` on purpose, slashes and line breaks included: a
percent-encoded `/`, a `..%2F` or a `%0A` then reaches the check and gets a 422 that says
what is wrong, instead of a bare 404.
"""

from __future__ import annotations

import re

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.convertors import PathConvertor, register_url_convertor

from clickstream.api.coalesce import Coalescer
from clickstream.api.database import Database
from clickstream.api.errors import ErrorBody, InvalidRequest, Problem
from clickstream.ingest.cleaning import MAX_ID_LENGTH
from clickstream.store.recent import recently_viewed_many

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "USER_ID_PATTERN", "parse_lookup", "reader", "router"]

DEFAULT_LIMIT = 5
MAX_LIMIT = 100
# The cleaning rules' ids (no C0/C1 control characters) minus what reads as a path: no '/'
# or '\', and not '.' or '..' (spelled without look-ahead, which OpenAPI tools lack).
_CHAR = r"[^\x00-\x1f\x7f-\x9f/\\]"
_NOT_DOT = r"[^\x00-\x1f\x7f-\x9f/\\.]"
USER_ID_PATTERN = rf"^(?:{_NOT_DOT}|\.{_NOT_DOT}|\.\.{_CHAR}){_CHAR}*$"
_USER_ID = re.compile(USER_ID_PATTERN)
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUMBER = re.compile(r"[0-9]+")


class _AnyText(PathConvertor):
    regex = r"[\s\S]*"  # `path` without its blind spot: a decoded line break


register_url_convertor("anytext", _AnyText())

_PARAMETERS = [
    {
        "name": "user_id",
        "in": "path",
        "required": True,
        "description": "The user id exactly as the events carry it, e.g. `user-176`: 1 to "
        f"{MAX_ID_LENGTH} characters, no control characters, no '/' or '\\', not '.' or '..'.",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": USER_ID_PATTERN,
        },
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "How many products at most.",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
]

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


def parse_lookup(user_id: str, limit: str | None) -> tuple[str, int]:
    """The (user id, limit) a request asks for; InvalidRequest naming every bad parameter."""
    problems = []
    if not user_id:
        problems.append(Problem(parameter="user_id", message="must not be empty"))
    elif len(user_id) > MAX_ID_LENGTH:
        message = f"must be at most {MAX_ID_LENGTH} characters long"
        problems.append(Problem(parameter="user_id", message=message))
    elif not _USER_ID.fullmatch(user_id) or _SURROGATE.search(user_id):
        message = "must not contain control characters, '/' or '\\', nor be '.' or '..'"
        problems.append(Problem(parameter="user_id", message=message))
    number = DEFAULT_LIMIT
    if limit is not None:
        if not _NUMBER.fullmatch(limit):
            problems.append(Problem(parameter="limit", message="must be a whole number"))
        else:
            number = int(limit) if len(limit) <= 4 else MAX_LIMIT + 1
            if not 1 <= number <= MAX_LIMIT:
                message = f"must be a whole number from 1 to {MAX_LIMIT}"
                problems.append(Problem(parameter="limit", message=message))
    if problems:
        raise InvalidRequest(*problems)
    return user_id, number


def reader(database: Database) -> Coalescer[tuple[str, int], list[str]]:
    """Lookups of (user id, limit), coalesced into few queries under load."""

    async def fetch(lookups: list[tuple[str, int]]) -> list[list[str]]:
        async with database.connection() as conn:
            return await recently_viewed_many(conn, lookups)

    return Coalescer(fetch)


def _json(content: bytes) -> Response:
    return Response(content, media_type="application/json")


@router.get(
    "/users/{user_id:anytext}/recently-viewed",
    response_model=RecentlyViewed,
    summary="The distinct products a user viewed, most recent first",
    openapi_extra={"parameters": _PARAMETERS},
)
async def get_recently_viewed(request: Request) -> Response:
    """A user with no views gets an empty list. A view shows here as soon as the consumer
    has stored it."""
    lookup = parse_lookup(request.path_params["user_id"], request.query_params.get("limit"))
    products = await request.app.state.recent_views.get(lookup)
    return _json(orjson.dumps({"user_id": lookup[0], "products": products}))


@router.get("/ping", response_model=Pong, summary="Answers at once; touches no database")
async def ping() -> Response:
    return _json(_PONG)
