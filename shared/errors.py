"""One error hierarchy; handlers turn it into retries or dead letters, ``shared.http_errors``
into HTTP statuses (a retryable error answers 503)."""

from __future__ import annotations

from collections.abc import Sequence
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


class TopicMismatchError(FlywheelError):
    """An existing Kafka topic differs from Flywheel's topic plan in a way it cannot run with
    (fewer partitions than planned: a model's key would hash to a partition that is missing).

    ``mismatches`` holds one (topic, setting, expected, found) per difference.
    """

    def __init__(self, mismatches: Sequence[tuple[str, str, str, str]]) -> None:
        self.mismatches = tuple(mismatches)
        super().__init__(
            "; ".join(
                f"topic {topic}: {setting} is {found}, the plan says {expected}"
                for topic, setting, expected, found in self.mismatches
            )
        )


class FencedOffError(DependencyUnavailableError):
    """Another replica took over the state this one was writing (a newer epoch is stored).

    The write was refused and nothing of it is kept. Handled as an outage: the
    event is neither committed nor dead-lettered; it is the new owner's to handle
    (it re-reads the state this replica wrote before it was fenced off).
    """
