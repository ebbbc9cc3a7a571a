"""Flywheel errors translated to HTTP at the edge, with messages a client can act on."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.gateway.core import (
    BatchTooLargeError,
    FeatureValidationError,
    ModelFailedError,
    ModelUnavailableError,
    WrongModelError,
)
from shared.errors import DependencyUnavailableError, FlywheelError, NotFoundError
from shared.http_errors import RETRY_AFTER_S

_STATUS: tuple[tuple[type[FlywheelError], int], ...] = (
    (BatchTooLargeError, 413),
    (WrongModelError, 409),
    (NotFoundError, 404),
    (ModelUnavailableError, 503),
    (DependencyUnavailableError, 503),
    (ModelFailedError, 500),
)


def http_status(error: Exception) -> int:
    """The HTTP status an error answers with (422 for other bad input, 500 otherwise)."""
    for error_type, status in _STATUS:
        if isinstance(error, error_type):
            return status
    return 422 if isinstance(error, FlywheelError) and not error.retryable else 500


def _body(error: FlywheelError) -> dict[str, object]:
    if isinstance(error, FeatureValidationError):
        return {
            "message": "instances do not fit the model's features",
            "errors": list(error.problems),
            "expected_features": list(error.expected),
        }
    return {"message": str(error)}


async def _handle(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, FlywheelError)
    status = http_status(error)
    # A model still loading, or a store away, is the client's cue to come back.
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"detail": _body(error)}, status_code=status, headers=headers)


async def _invalid_request(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": json_safe(jsonable_encoder(error.errors()))}, status_code=422)


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


def install_error_handlers(app: FastAPI) -> None:
    """Answer every FlywheelError with its status and a ``detail`` object, and keep FastAPI's
    422 for malformed requests a 422 whatever they contain."""
    app.add_exception_handler(FlywheelError, _handle)
    app.add_exception_handler(RequestValidationError, _invalid_request)
