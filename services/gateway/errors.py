"""What the gateway's errors say: an object a client can act on (``shared.http_errors``
maps them to statuses, as it does for every service)."""

from __future__ import annotations

from services.gateway.core import FeatureValidationError
from shared.errors import FlywheelError


def describe(error: FlywheelError) -> dict[str, object]:
    """The ``detail`` of an error answer: the message, and for bad rows each problem."""
    if isinstance(error, FeatureValidationError):
        return {
            "message": "instances do not fit the model's features",
            "errors": list(error.problems),
            "expected_features": list(error.expected),
        }
    return {"message": str(error)}
