"""The one translation of Flywheel errors to HTTP, installed on every service's app."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.errors import (
    DependencyUnavailableError,
    FlywheelError,
    InvalidInputError,
    NotFoundError,
)

#: Seconds a client is told to wait before retrying after a 503.
RETRY_AFTER_S = 5

_STATUS: tuple[tuple[type[FlywheelError], int], ...] = (
    (NotFoundError, 404),
    (InvalidInputError, 422),
    (DependencyUnavailableError, 503),
)


def http_status(error: FlywheelError) -> int:
    """The status an error answers with: its type's, else 503 if retryable, else 500.

    Examples
    --------
    >>> http_status(NotFoundError("no model m")), http_status(DependencyUnavailableError("x"))
    (404, 503)
    >>> http_status(FlywheelError("a bug"))
    500
    """
    for error_type, status in _STATUS:
        if isinstance(error, error_type):
            return status
    return 503 if error.retryable else 500


async def _answer(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, FlywheelError)
    status = http_status(error)
    # A dependency outage is the client's cue to come back, not a bug of ours.
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every FlywheelError a route lets through with its status and ``detail``."""
    app.add_exception_handler(FlywheelError, _answer)
