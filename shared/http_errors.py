"""The one translation of Flywheel errors to HTTP, installed on every service's app.

Statuses: an error's own ``status_code`` if its class sets one, else its
family's (404 not found, 422 bad input, 503 a dependency away), else 503 when
retrying can help and 500 when it cannot. A 503 tells the client when to come
back (``Retry-After``). The body is ``{"detail": ...}``; what ``detail`` holds is
the API's choice (``describe``: the message by default). Malformed requests stay
422 whatever they hold, and a 405 names every method the path has.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.routing import compile_path

from shared.errors import (
    DependencyUnavailableError,
    FlywheelError,
    InvalidInputError,
    NotFoundError,
)

#: Seconds a client is told to wait before retrying after a 503.
RETRY_AFTER_S = 5

#: What an error's ``detail`` says (a service may answer with an object).
Describe = Callable[[FlywheelError], object]

_STATUS: tuple[tuple[type[FlywheelError], int], ...] = (
    (NotFoundError, 404),
    (InvalidInputError, 422),
    (DependencyUnavailableError, 503),
)


def http_status(error: Exception) -> int:
    """The status an error answers with: its own, its type's, else 503 if retryable, else 500
    (500 for any error that is not a FlywheelError: a bug).

    Examples
    --------
    >>> http_status(NotFoundError("no model m")), http_status(DependencyUnavailableError("x"))
    (404, 503)
    >>> http_status(FlywheelError("a bug"))
    500
    >>> class Conflict(InvalidInputError):
    ...     status_code = 409
    >>> http_status(Conflict("another model's prediction"))
    409
    """
    if not isinstance(error, FlywheelError):
        return 500
    if error.status_code is not None:
        return error.status_code
    for error_type, status in _STATUS:
        if isinstance(error, error_type):
            return status
    return 503 if error.retryable else 500


def json_safe(value: Any) -> Any:
    """``value`` with each float JSON cannot carry (NaN, ±Infinity) spelled as a string.

    A validation error echoes the client's input back: FastAPI's own answer to
    ``"reward": NaN`` failed to serialise it, and the 422 became a 500.

    >>> json_safe([{"loc": ["body", "reward"], "input": float("nan")}, 1.5])
    [{'loc': ['body', 'reward'], 'input': 'NaN'}, 1.5]
    >>> json_safe({"input": float("-inf")})
    {'input': '-Infinity'}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def install_error_handlers(app: FastAPI, describe: Describe = str) -> None:
    """Answer every FlywheelError a route lets through with its status and ``detail``."""

    async def answer(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, FlywheelError)
        status = http_status(error)
        # A dependency outage or a model still loading is the client's cue to come back.
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return JSONResponse({"detail": describe(error)}, status_code=status, headers=headers)

    app.add_exception_handler(FlywheelError, answer)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(405, _method_not_allowed)


async def _invalid_request(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": json_safe(jsonable_encoder(error.errors()))}, status_code=422)


async def _method_not_allowed(request: Request, _: Exception) -> Response:
    """405 with every documented method of the path in ``Allow``.

    Starlette's 405 names only the methods of the first route whose path matches:
    ``/v1/models`` with GET (read-only) and POST (admin, behind a token guard) said GET.
    """
    paths: dict[str, dict[str, Any]] = request.app.openapi()["paths"]
    allowed = {
        method.upper()
        for template, operations in paths.items()
        if compile_path(template)[0].match(request.url.path)
        for method in operations
    }
    return JSONResponse(
        {"detail": "Method Not Allowed"},
        status_code=405,
        headers={"Allow": ", ".join(sorted(allowed))},
    )
