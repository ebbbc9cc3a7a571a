"""Notices a Redis that came back without a model's batch list, and rebuilds it.

Each model has a marker key beside its batch list (``shared.state_marker``), and
``TrainerStateGuards`` checks every known model's. When a marker is missing, the
list is empty and MLflow shows the model was trained before, Redis lost that
model's state: without a batch list every drift or scheduled retrain
fails with "no batches recorded". Each training run logs the batches it trained
on (``datasets.json``), so the newest run's batches are recorded again and a
retrain works at once. Batches announced after that run, and pending arrivals,
are gone: the loss is counted in ``trainer_state_lost_total`` (alert
``RedisStateLost``) and logged as an error. When the run has no batches to give
back, ``/readyz`` is 503 with the model and the reason until a batch of that
model is announced again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from services.trainer.ports import BatchHistory
from shared.events import DatasetRef, model_key
from shared.mlflow_client import mlflow_client
from shared.state_marker import MarkerGuard

log = logging.getLogger(__name__)


def marker_key(model_name: str) -> str:
    """The marker of one model's state, hash-tagged by model: each model's loss is its own.

    Written once the batch list is known to be whole; gone only when Redis lost its data.
    """
    return model_key("trainer", model_name, "state-marker")


#: The ``/readyz`` reason while the batch list is lost and not rebuilt.
NEEDS_BATCHES = "Redis lost the trainer's batch list; announce the batches again"

LastTrained = Callable[[str], list[DatasetRef] | None]
"""Blocking: the batches of the model's newest training run; None when it never trained."""

Models = Callable[[], Awaitable[Sequence[str]]]
"""Every model the trainer trains (the catalog's names)."""


def state_lost_counter(registry: CollectorRegistry) -> Counter:
    """``trainer_state_lost_total``, registered once however many models are guarded."""
    return Counter(
        "trainer_state_lost_total",
        "Times Redis came back without a model's batch list after the model was trained "
        "(rebuilt: the newest run's batches were recorded again).",
        ["model_name", "rebuilt"],
        registry=registry,
    )


def mlflow_last_trained(tracking_uri: str) -> LastTrained:
    """Read the newest training run's ``datasets.json`` (``[]`` when it has none)."""

    def read(model_name: str) -> list[DatasetRef] | None:
        client = mlflow_client(tracking_uri)
        experiment = client.get_experiment_by_name(model_name)
        if experiment is None:
            return None
        runs = client.search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=20
        )
        trainings = [run for run in runs if "flywheel.batches" in run.data.tags]
        if not trainings:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(trainings[0].info.run_id, "datasets.json", tmp)
            except MlflowException:
                return []  # a run without the file: nothing to rebuild from
            logged = json.loads(Path(path).read_text())
        return [DatasetRef.model_validate(item) for item in logged.get("datasets", [])]

    return read


class TrainerStateGuard:
    """One model's guard: checks its marker, rebuilds its batch list on a loss.

    On its own (``start``) it checks at start and every ``period_s``; under
    ``TrainerStateGuards`` it is checked with every other model's and shares the
    ``lost`` counter (``registry`` is then not used).
    """

    def __init__(
        self,
        redis: Redis,
        history: BatchHistory,
        last_trained: LastTrained,
        registry: CollectorRegistry | None,
        model_name: str,
        period_s: float = 5.0,
        *,
        lost: Counter | None = None,
    ) -> None:
        self._history, self._last_trained, self._model_name = history, last_trained, model_name
        self._marker = MarkerGuard(
            redis, marker_key(model_name), self._recover, "trainer-state-guard", period_s
        )
        if lost is None:
            if registry is None:
                raise ValueError("a registry or a lost counter is needed")
            lost = state_lost_counter(registry)
        self._lost = lost
        self._awaiting_batches = False
        self._last_loss: str | None = None

    async def start(self) -> None:
        """Check once in the background now, then every ``period_s``."""
        await self._marker.start()

    async def stop(self) -> None:
        """Stop checking."""
        await self._marker.stop()

    async def check(self) -> None:
        """Do nothing while the marker is there; else rebuild what MLflow holds."""
        await self._marker.check()

    async def ready(self) -> bool:
        """Readiness: the marker is there and, after an unrebuilt loss, a batch came again."""
        if not await self._marker.marked():
            return False
        if self._awaiting_batches:
            if not await self._history.recent(self._model_name, 1):
                return False
            self._awaiting_batches = False
        return True

    def details(self) -> dict[str, object]:
        """For ``/readyz``: why it is not ready, and what the last loss did."""
        return {
            "state_lost": NEEDS_BATCHES if self._awaiting_batches else None,
            "state_rebuilt": self._last_loss,
        }

    async def _recover(self) -> None:
        if await self._history.recent(self._model_name, 1):
            return  # the list is there (a marker new to this Redis): nothing lost
        refs = await asyncio.to_thread(self._last_trained, self._model_name)
        if refs is None:
            return  # never trained: a first start, nothing was lost
        for ref in refs:  # oldest first, as the run logged them: the list keeps that order
            await self._history.record(self._model_name, ref)
        self._lost.labels(model_name=self._model_name, rebuilt=str(bool(refs)).lower()).inc()
        self._awaiting_batches = not refs
        self._last_loss = f"{len(refs)} batches recorded again from the newest training run"
        log.error(
            "Redis lost the trainer's batch list"
            + (
                "; rebuilt from the newest training run" if refs else "; announce the batches again"
            ),
            extra={"model": self._model_name, "batches": len(refs)},
        )


class TrainerStateGuards:
    """A ``TrainerStateGuard`` per known model, all checked every ``period_s``.

    A model registered later is guarded from the next check on. One model's
    failing check (its MLflow runs unreadable) leaves the others' checked.
    """

    def __init__(
        self,
        redis: Redis,
        history: BatchHistory,
        last_trained: LastTrained,
        registry: CollectorRegistry,
        models: Models,
        period_s: float = 5.0,
    ) -> None:
        self._redis, self._history, self._last_trained = redis, history, last_trained
        self._models, self._period_s = models, period_s
        self._lost = state_lost_counter(registry)
        self._guards: dict[str, TrainerStateGuard] = {}
        self._checked = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Check once in the background now, then every ``period_s``."""
        self._task = asyncio.create_task(self._loop(), name="trainer-state-guards")

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> None:
        """Check every known model's marker (raises only when the models cannot be listed)."""
        for name in await self._models():
            try:
                await self._guard(name).check()
            except Exception as error:  # Redis or MLflow down: this model is checked again later
                log.warning("model state not checked", extra={"model": name, "error": repr(error)})
        self._checked = True

    async def ready(self) -> bool:
        """Readiness: every model was checked, has its marker, and none awaits batches."""
        if not self._checked:
            return False
        ready = [await guard.ready() for guard in self._guards.values()]
        return all(ready)

    def details(self) -> dict[str, object]:
        """For ``/readyz``: by model, why it is not ready and what its last loss did."""
        found = {name: guard.details() for name, guard in self._guards.items()}
        return {
            key: {name: d[key] for name, d in found.items() if d[key] is not None} or None
            for key in ("state_lost", "state_rebuilt")
        }

    def _guard(self, name: str) -> TrainerStateGuard:
        if name not in self._guards:
            self._guards[name] = TrainerStateGuard(
                self._redis,
                self._history,
                self._last_trained,
                None,
                name,
                self._period_s,
                lost=self._lost,
            )
        return self._guards[name]

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as error:  # the model list unreadable (MLflow down): try again
                log.warning("trainer state not checked", extra={"error": repr(error)})
            await asyncio.sleep(self._period_s)
