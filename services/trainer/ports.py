"""The trainer's I/O, as protocols: batch files, batch history, the training lock, MLflow."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shared.events import DatasetRef

if TYPE_CHECKING:
    import pandas as pd

    from services.trainer.coalesce import PendingArrival
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
    """Data-arrived events received but not trained on yet, kept across restarts."""

    async def add(self, model_name: str, arrival: PendingArrival) -> None:
        """Remember ``arrival`` until a training covers it."""

    async def waiting(self, model_name: str) -> list[PendingArrival]:
        """Every pending arrival of the model, oldest first."""

    async def remove(self, model_name: str, arrivals: list[PendingArrival]) -> None:
        """Forget ``arrivals`` (a training covered them)."""


class TrainingLock(Protocol):
    """At most one training of a model at a time, across processes."""

    def hold(self, model_name: str) -> AbstractAsyncContextManager[None]:
        """Wait (bounded) for the model's lock and hold it for the block."""


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
