"""Notices a Redis that came back without the trainer's batch list, and rebuilds it.

A marker key lives beside the batch list (``shared.state_marker``). When it is
missing, the list is empty and MLflow shows the model was trained before, Redis
lost the trainer's state: without a batch list every drift or scheduled retrain
fails with "no batches recorded". Each training run logs the batches it trained
on (``datasets.json``), so the newest run's batches are recorded again and a
retrain works at once. Batches announced after that run, and pending arrivals,
are gone: the loss is counted in ``trainer_state_lost_total`` (alert
``RedisStateLost``) and logged as an error. When the run has no batches to give
back, ``/readyz`` is 503 with the reason until a batch is announced again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlflow.exceptions import MlflowException
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from services.trainer.ports import BatchHistory
from shared.events import DatasetRef
from shared.mlflow_client import mlflow_client
from shared.state_marker import MarkerGuard

log = logging.getLogger(__name__)

#: Written once the batch list is known to be whole; gone only when Redis lost its data.
STATE_MARKER_KEY = "flywheel:trainer:state-marker"


def marker_key(model_name: str) -> str:
    """The marker of one model's state: each model's trainer notices its own loss."""
    return f"{STATE_MARKER_KEY}:{model_name}"


#: The ``/readyz`` reason while the batch list is lost and not rebuilt.
NEEDS_BATCHES = "Redis lost the trainer's batch list; announce the batches again"

LastTrained = Callable[[str], list[DatasetRef] | None]
"""Blocking: the batches of the model's newest training run; None when it never trained."""


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
    """Checks the marker at start and every ``period_s``; rebuilds the batch list on a loss."""

    def __init__(
        self,
        redis: Redis,
        history: BatchHistory,
        last_trained: LastTrained,
        registry: CollectorRegistry,
        model_name: str,
        period_s: float = 5.0,
    ) -> None:
        self._history, self._last_trained, self._model_name = history, last_trained, model_name
        self._marker = MarkerGuard(
            redis, marker_key(model_name), self._recover, "trainer-state-guard", period_s
        )
        self._lost = Counter(
            "trainer_state_lost_total",
            "Times Redis came back without the trainer's batch list after the model was trained "
            "(rebuilt: the newest run's batches were recorded again).",
            ["model_name", "rebuilt"],
            registry=registry,
        )
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
