"""The trainer's I/O, as protocols: batch files, batch history, the training lock, MLflow."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shared.events import DatasetRef

if TYPE_CHECKING:
    import pandas as pd

    from services.trainer.coalesce import PendingArrival, StagedOutcome
    from services.trainer.core import TrainedModel
    from shared.spec import ModelSpec


class BatchSource(Protocol):
    """Reads referenced batches (blocking)."""

    def load(self, ref: DatasetRef, spec: ModelSpec) -> pd.DataFrame:
        """The batch's rows, checked against its hash and its model's ``spec``.

        Raises NotFoundError or InvalidInputError when it is missing or does not fit
        (a misfit names the missing columns and the ones the spec does not know).
        """


class BatchHistory(Protocol):
    """Remembers which batches arrived for each model, newest last."""

    async def record(self, model_name: str, ref: DatasetRef) -> bool:
        """Append ``ref`` (moving it to the end if its content hash was recorded); True when new."""

    async def recent(self, model_name: str, count: int) -> list[DatasetRef]:
        """The ``count`` most recent batches, oldest first."""


class PendingTriggers(Protocol):
    """Triggers received but not trained on yet, kept across restarts, each accepted once.

    With them, the outcome of a finished training until it is published: a
    crash in between publishes that outcome again instead of training again.
    """

    async def add(self, model_name: str, arrival: PendingArrival, once: str | None = None) -> bool:
        """Remember ``arrival`` until a training covers it; False when already accepted.

        ``once`` names the trigger (default: its event id): a redelivered event,
        or a second replica's claim of the same schedule period, adds nothing.
        """

    async def waiting(self, model_name: str) -> list[PendingArrival]:
        """Every pending trigger of the model, oldest first."""

    async def stage(self, model_name: str, staged: StagedOutcome, fence: str) -> bool:
        """Keep ``staged`` for publication if the lease ``fence`` still holds; False when lost.

        The check and the write are one step: a replica whose lease expired
        cannot stage over its successor's work.
        """

    async def staged(self, model_name: str) -> StagedOutcome | None:
        """The outcome staged and not yet settled (a crash came between), if any."""

    async def settle(self, model_name: str, staged: StagedOutcome) -> None:
        """The staged outcome was published: forget it and the triggers it covered."""


class Lease(Protocol):
    """A model's training lease, renewed in the background while held."""

    @property
    def token(self) -> str:
        """What fences writes made under this lease (``PendingTriggers.stage``)."""

    @property
    def lost(self) -> bool:
        """True once a renewal found the lease expired or held by someone else."""


class TrainingLock(Protocol):
    """At most one training of a model at a time, across processes."""

    def try_hold(self, model_name: str) -> AbstractAsyncContextManager[Lease | None]:
        """Hold the model's lease for the block (renewed), or None when another holds it."""


@dataclass(frozen=True)
class RunContext:
    """What the run is about: which model, which data, which event caused it."""

    model_name: str
    data_version: str
    trigger: str
    event_id: str
    correlation_id: str
    datasets: tuple[DatasetRef, ...]
    trigger_ids: tuple[str, ...] = ()
    """Every event this training answers (a coalesced burst has several)."""
    sampled: tuple[DatasetRef, ...] = ()
    """Older batches a share of whose rows joined the recent window."""
    label: str = ""
    """The model's label column (its spec's); empty: the store's default."""


class ModelStore(Protocol):
    """Logs trained models as tracked runs (blocking)."""

    def log_training(self, model: TrainedModel, context: RunContext) -> str:
        """Log params, metrics, tags, the model and its reference sample; return the run id."""
