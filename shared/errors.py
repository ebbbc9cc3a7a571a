"""One error hierarchy; handlers turn it into retries or dead letters, ``shared.http_errors``
into HTTP statuses (a retryable error answers 503)."""

from __future__ import annotations

from typing import ClassVar


class FlywheelError(Exception):
    """Base of every error Flywheel raises on purpose.

    A subclass whose HTTP status is not its family's sets ``status_code`` (as
    MLServer's errors carry theirs): the one mapping in ``shared.http_errors`` reads it.
    """

    retryable: bool = False
    status_code: ClassVar[int | None] = None


class InvalidInputError(FlywheelError):
    """The input does not fit the contract; retrying cannot help."""


class NotFoundError(FlywheelError):
    """A referenced thing (model, dataset, request) does not exist."""


class DependencyUnavailableError(FlywheelError):
    """A store or the broker did not answer; the same work will succeed later."""

    retryable = True
