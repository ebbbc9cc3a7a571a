"""Errors raised while starting or stopping local infrastructure; each message is one sentence."""

from __future__ import annotations

from shared.errors import FlywheelError


class InfraError(FlywheelError):
    """Local infrastructure could not be started or stopped; the message names the fix."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail
        """Extra context for a person (a log tail), printed after the message."""


class PortTakenError(InfraError):
    """A port the stack needs is already held by a process Flywheel did not start."""


class MissingToolError(InfraError):
    """A program the stack needs (java, mvn, redis-server) is not installed."""


class StartupError(InfraError):
    """A component did not become ready in time, or exited while starting."""
