"""One error hierarchy; handlers turn it into retries or dead letters, ``shared.http_errors``
into HTTP statuses (a retryable error answers 503)."""

from __future__ import annotations


class FlywheelError(Exception):
    """Base of every error Flywheel raises on purpose."""

    retryable: bool = False


class InvalidInputError(FlywheelError):
    """The input does not fit the contract; retrying cannot help."""


class NotFoundError(FlywheelError):
    """A referenced thing (model, dataset, request) does not exist."""


class DependencyUnavailableError(FlywheelError):
    """A store or the broker did not answer; the same work will succeed later."""

    retryable = True
