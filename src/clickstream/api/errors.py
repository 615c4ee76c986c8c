"""Every error the API returns is JSON with a one-line message: never HTML, never a traceback.

A request the API cannot accept is a 422 that names the parameter and what is wrong with
it; a fault of the database or the broker (store/faults.py) is a 503 with a short reason
and Retry-After, its cause and remedy logged on the server; anything unexpected is a 500
with no details, its traceback logged on the server only.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from clickstream.errors import DatabaseFault, Unavailable

__all__ = ["ErrorBody", "InvalidRequest", "Problem", "error_response", "install_error_handlers"]

log = logging.getLogger("clickstream.api")


class Problem(BaseModel):
    parameter: str
    message: str


class ErrorBody(BaseModel):
    error: str
    problems: list[Problem] = []


class InvalidRequest(Exception):
    """Parameters a route checked itself and refuses (answered with 422)."""

    def __init__(self, *problems: Problem) -> None:
        super().__init__("; ".join(f"{p.parameter} {p.message}" for p in problems))
        self.problems = problems


# Clearer wording than the validator's for the mistakes clients actually make.
_MESSAGES = {
    "missing": "is required",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters long",
    "string_pattern_mismatch": "must not contain control characters, '/' or '\\'",
}


def error_response(
    status: int, error: str, problems: tuple[Problem, ...] = (), headers=None
) -> Response:
    body = {"error": error, "problems": [p.model_dump() for p in problems]}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _problem(error: dict) -> Problem:
    loc = [str(part) for part in error.get("loc", ())]
    parameter = loc[-1] if loc else "request"
    template = _MESSAGES.get(error.get("type", ""))
    if template is None:
        message = str(error.get("msg", "is invalid"))
    else:
        message = template.format(**(error.get("ctx") or {}))
    return Problem(parameter=parameter, message=message)


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    problems = tuple(_problem(e) for e in exc.errors())
    summary = "; ".join(f"{p.parameter} {p.message}" for p in problems) or "invalid request"
    return error_response(422, summary, problems)


async def _refused(request: Request, exc: InvalidRequest) -> Response:
    return error_response(422, str(exc), exc.problems)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _unavailable(request: Request, exc: Unavailable) -> Response:
    """503 with a reason for the client; the cause and the remedy go to the server log."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    reason = exc.summary if isinstance(exc, DatabaseFault) else str(exc)
    return error_response(503, reason, headers={"Retry-After": str(exc.retry_after)})


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The server logs the traceback itself once this returns.
    return error_response(500, "internal error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(InvalidRequest, _refused)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Unavailable, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
