"""Flywheel errors translated to HTTP at the edge, with messages a client can act on."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.gateway.core import (
    BatchTooLargeError,
    FeatureValidationError,
    ModelFailedError,
    ModelUnavailableError,
)
from shared.errors import DependencyUnavailableError, FlywheelError, NotFoundError

_STATUS: tuple[tuple[type[FlywheelError], int], ...] = (
    (BatchTooLargeError, 413),
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
    return JSONResponse({"detail": _body(error)}, status_code=http_status(error))


def install_error_handlers(app: FastAPI) -> None:
    """Answer every FlywheelError with its status and a ``detail`` object."""
    app.add_exception_handler(FlywheelError, _handle)
