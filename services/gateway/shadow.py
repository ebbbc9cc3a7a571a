"""Shadow traffic: the challenger scores a mirror of champion-answered requests, unseen.

The client always gets the champion's answer, at the champion's speed: the
mirror runs as a background task after the response is built, with a cap on
tasks in flight (a busy gateway skips mirrors rather than queue them). Each
shadow answer is compared with the champion's (agreement counted) and
published as ``prediction-logged`` with ``shadow=true``, which the router and
the monitor leave out of experiments and drift windows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.gateway.core import RowPrediction, check_probabilities, rows_from_probabilities
from services.gateway.metrics import GatewayMetrics
from services.gateway.pool import LoadedModel, ServingSnapshot
from services.gateway.prediction_log import PredictionEventBuffer
from services.gateway.regression import RowValue, values_of
from services.gateway.schemas import (
    PredictResponse,
    RowPredictionOut,
    RowValueOut,
    ValuePredictResponse,
)
from shared.events import PredictionLogged
from shared.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Mirror:
    """One champion-answered request and the challenger that scores it in the shadow."""

    challenger: LoadedModel
    spec: ModelSpec
    snapshot: ServingSnapshot
    response: PredictResponse | ValuePredictResponse
    rows: Sequence[dict[str, Any]]
    entity_id: str | None


class ShadowScorer:
    """Mirrors a share of the champion's requests to the challenger in the background."""

    def __init__(
        self,
        events: PredictionEventBuffer,
        metrics: GatewayMetrics,
        *,
        share: float,
        max_in_flight: int,
        rng: random.Random | None = None,
    ) -> None:
        self._events = events
        self._metrics = metrics
        self._share = share
        self._max_in_flight = max_in_flight
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    def maybe_mirror(
        self,
        snapshot: ServingSnapshot,
        response: PredictResponse | ValuePredictResponse,
        rows: Sequence[dict[str, Any]],
        entity_id: str | None,
        spec: ModelSpec,
    ) -> None:
        """Start a shadow scoring of this champion answer, when drawn and there is room."""
        challenger = snapshot.challenger
        if challenger is None or response.variant != "champion" or self._share <= 0:
            return
        if self._rng.random() >= self._share:
            return
        if len(self._tasks) >= self._max_in_flight:
            self._metrics.shadow.labels(challenger.name, "skipped").inc(len(rows))
            return
        mirror = _Mirror(challenger, spec, snapshot, response, rows, entity_id)
        task = asyncio.create_task(self._score(mirror), name="shadow-prediction")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the mirrors in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _score(self, mirror: _Mirror) -> None:
        challenger, rows = mirror.challenger, mirror.rows
        started = time.perf_counter()
        try:
            # In a thread: a mirror must never hold up the requests the client waits for.
            if challenger.task == "regression":
                values = await asyncio.to_thread(values_of, challenger, rows, mirror.spec)
            else:
                probabilities = await asyncio.to_thread(challenger.predict_proba, rows, mirror.spec)
                check_probabilities(probabilities, len(rows), len(challenger.classes))
        except Exception as error:
            self._metrics.shadow.labels(challenger.name, "failed").inc(len(rows))
            log.warning(
                "shadow prediction failed",
                extra={
                    "model": challenger.name,
                    "version": challenger.version,
                    "error": repr(error),
                },
            )
            return
        elapsed = time.perf_counter() - started
        self._metrics.shadow_latency.labels(challenger.name).observe(elapsed)
        if challenger.task == "regression":
            # Values rarely agree exactly: counted as scored; the events carry both sides.
            self._metrics.shadow.labels(challenger.name, "scored").inc(len(rows))
            self._events.offer_unrecorded(_shadow_events(mirror, values, elapsed))
            return
        shadow_rows = rows_from_probabilities(challenger.classes, probabilities)
        for answered, shadow in zip(mirror.response.predictions, shadow_rows, strict=True):
            agree = getattr(answered, "predicted_class", None) == shadow.predicted_class
            outcome = "agree" if agree else "disagree"
            self._metrics.shadow.labels(challenger.name, outcome).inc()
        self._events.offer_unrecorded(_shadow_events(mirror, shadow_rows, elapsed))


def _shadow_events(
    mirror: _Mirror, shadow_rows: Sequence[RowPrediction | RowValue], elapsed: float
) -> list[PredictionLogged]:
    """One ``shadow=true`` event per row, tied to the answer the client got: the
    challenger's class (and confidence), or its value."""
    response, routing, challenger = mirror.response, mirror.snapshot.routing, mirror.challenger
    answered_ids = [answered.request_id for answered in _rows_of(response)]
    return [
        PredictionLogged(
            producer="gateway",
            correlation_id=response.request_id,
            request_id=f"{answered_id}:shadow",
            model_name=challenger.name,
            version=challenger.version,
            variant="challenger",
            entity_id=mirror.entity_id,
            features=features,
            **_answer_fields(shadow),
            latency_ms=elapsed * 1000,
            experiment_id=routing.experiment_id,
            challenger_share=routing.challenger_share,
            shadow=True,
        )
        for answered_id, shadow, features in zip(
            answered_ids, shadow_rows, mirror.rows, strict=True
        )
    ]


def _rows_of(
    response: PredictResponse | ValuePredictResponse,
) -> Sequence[RowPredictionOut | RowValueOut]:
    return response.predictions


def _answer_fields(shadow: RowPrediction | RowValue) -> dict[str, Any]:
    if isinstance(shadow, RowPrediction):
        return {"predicted_class": shadow.predicted_class, "confidence": shadow.confidence}
    return {"predicted_value": shadow.value}
