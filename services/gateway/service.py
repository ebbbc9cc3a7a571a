"""What one predict request does, between the HTTP route and the core."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from redis.exceptions import RedisError

from services.gateway.core import (
    ModelFailedError,
    ModelUnavailableError,
    RowPrediction,
    check_instances,
    check_probabilities,
    choose_variant,
    row_from_store,
    rows_from_probabilities,
)
from services.gateway.fleet import ModelFleet, ServedModel
from services.gateway.metrics import GatewayMetrics
from services.gateway.pool import LoadedModel, RoutingTable, ServingSnapshot
from services.gateway.ports import FeatureStore
from services.gateway.prediction_log import PredictionEventBuffer
from services.gateway.regression import value_events, value_response, values_of
from services.gateway.schemas import (
    PredictResponse,
    RowPredictionOut,
    RowValueOut,
    ValuePredictResponse,
)
from services.gateway.shadow import ShadowScorer
from shared.catalog import UnknownModelError
from shared.errors import DependencyUnavailableError, InvalidInputError, NotFoundError
from shared.events import PredictionFailed, PredictionLogged, Variant
from shared.http_errors import http_status
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

#: What a predict request answers: a classifier's classes, or a regressor's values.
Answer = PredictResponse | ValuePredictResponse


#: Batches up to this many rows (~3 ms of scoring) are scored on the event loop: a
#: thread hand-off costs more than scoring a row (~0.1 ms), and a thread scoring while
#: the loop drains prediction events fights it for the GIL. Larger batches go to a
#: thread, so the loop is never stalled longer than that.
INLINE_ROWS = 256


async def probabilities_of(
    model: LoadedModel, rows: Sequence[dict[str, Any]], spec: ModelSpec
) -> np.ndarray:
    """``model``'s probabilities for checked rows, on the loop or, for big batches, a thread."""
    if len(rows) <= INLINE_ROWS:
        return model.predict_proba(rows, spec)
    return await asyncio.to_thread(model.predict_proba, rows, spec)


@dataclass(frozen=True)
class _Routed:
    """Where a checked request goes: the snapshot read, the variant and model picked."""

    spec: ModelSpec
    snapshot: ServingSnapshot
    variant: Variant
    model: LoadedModel
    started: float


class PredictionService:
    """Validates, routes, scores and logs one predict request."""

    def __init__(
        self,
        fleet: ModelFleet,
        events: PredictionEventBuffer,
        metrics: GatewayMetrics,
        *,
        max_batch: int,
        rng: random.Random | None = None,
        feature_store: FeatureStore | None = None,
        log_predictions: bool = True,
        shadow: ShadowScorer | None = None,
    ) -> None:
        self._shadow = shadow
        self._feature_store = feature_store
        self._fleet = fleet
        self._events = events
        self._metrics = metrics
        self._max_batch = max_batch
        self._log_predictions = log_predictions
        self._rng = rng or random.Random()

    async def predict(
        self, model_name: str, rows: Sequence[dict[str, Any]] | None, entity_id: str | None
    ) -> Answer:
        """Answer ``rows`` (or the entity's stored features) from one variant of ``model_name``.

        Prediction events are logged off the request path; a feature-store lookup
        writes the predicted class back to the store.
        """
        served = await self._served(model_name)
        if rows is None:
            if entity_id is None:
                raise InvalidInputError("send instances, features, or an entity_id")
            rows = [await self._stored_row(entity_id, served.spec)]
            response = await self._answer(served, rows, entity_id)
            await self._write_back(entity_id, response)
            return response
        return await self._answer(served, rows, entity_id)

    async def _served(self, model_name: str) -> ServedModel:
        try:
            return await self._fleet.serving(model_name)
        except UnknownModelError as error:
            # Not the requested name: a label per name a client makes up would grow forever.
            self._count_error("none", error, "none", "none")
            raise

    async def _stored_row(self, entity_id: str, spec: ModelSpec) -> dict[str, Any]:
        if self._feature_store is None:
            raise InvalidInputError("no feature store is configured: send the features")
        try:
            stored = await self._feature_store.features(entity_id)
        except (RedisError, OSError) as error:
            raise DependencyUnavailableError(f"feature store unavailable: {error}") from error
        if stored is None:
            raise NotFoundError(
                f"no stored features for entity {entity_id!r}: load them with "
                "`flywheel features load FILE`, or send the features"
            )
        return row_from_store(stored, spec)

    async def _write_back(self, entity_id: str, response: Answer) -> None:
        assert self._feature_store is not None
        answered, name = response.predictions[0], response.model_name
        # A regressor's "segment" is its value, written as text beside a classifier's class.
        if isinstance(answered, RowValueOut):
            segment = str(answered.value)
        else:
            segment = answered.predicted_class
        # The default model's class is the CRM's segment; other models' go beside it.
        model = None if name == self._fleet.default.name else name
        try:
            await self._feature_store.write_segment(
                entity_id, segment, response.model_version, model
            )
        except (RedisError, OSError) as error:
            log.warning("segment not written back", extra={"error": repr(error)})
            self._metrics.crm_updates.labels(name, "failed").inc()
            return
        self._metrics.crm_updates.labels(name, "written").inc()

    async def _answer(
        self, served: ServedModel, rows: Sequence[dict[str, Any]], entity_id: str | None
    ) -> Answer:
        started = time.perf_counter()
        spec = served.spec
        try:
            check_instances(rows, spec, self._max_batch)
            snapshot = served.pool.snapshot
            variant, model = self._pick(served, snapshot, entity_id)
        except Exception as error:
            self._count_error(served.name, error, "none", "none")
            raise
        if model.task == "regression":  # fixed when the model was loaded
            routed = _Routed(spec, snapshot, variant, model, started)
            return await self._answer_values(routed, rows, entity_id)
        try:
            answered = await self._score(model, rows, spec)
        except ModelFailedError as error:
            self._charge(error, model, variant, len(rows), started, snapshot.routing)
            raise
        elapsed = time.perf_counter() - started
        response = self._response(model, variant, answered, elapsed)
        if self._log_predictions:
            self._events.offer(self._events_of(response, rows, entity_id, snapshot.routing))
        self._observe(model, variant, answered, elapsed)
        if self._shadow is not None:
            self._shadow.maybe_mirror(snapshot, response, rows, entity_id, spec)
        return response

    async def _answer_values(
        self, routed: _Routed, rows: Sequence[dict[str, Any]], entity_id: str | None
    ) -> ValuePredictResponse:
        """A regression model's answer: values (and intervals), logged and counted."""
        model, variant, snapshot = routed.model, routed.variant, routed.snapshot
        try:
            answered = await _model_answers(model, values_of, rows, routed.spec)
        except ModelFailedError as error:
            self._charge(error, model, variant, len(rows), routed.started, snapshot.routing)
            raise
        elapsed = time.perf_counter() - routed.started
        response = value_response(model, variant, answered, elapsed)
        if self._log_predictions:
            self._events.offer(value_events(response, rows, entity_id, snapshot.routing))
        self._metrics.requests.labels(model.name, variant, model.version, "200").inc()
        self._metrics.latency.labels(model.name, variant).observe(elapsed)
        predicted = self._metrics.predicted_value.labels(model.name, model.version)
        for row in answered:
            predicted.observe(row.value)
        if self._shadow is not None:
            self._shadow.maybe_mirror(snapshot, response, rows, entity_id, routed.spec)
        return response

    def _charge(
        self,
        error: ModelFailedError,
        model: LoadedModel,
        variant: Variant,
        rows: int,
        started: float,
        routing: RoutingTable,
    ) -> None:
        """The variant that failed pays for it in the router's error-rate guardrail."""
        self._count_error(model.name, error, variant, model.version)
        elapsed = time.perf_counter() - started
        self._events.offer_unrecorded(
            [self._failure_of(error, model, variant, rows, elapsed, routing)]
        )

    async def _score(
        self, model: LoadedModel, rows: Sequence[dict[str, Any]], spec: ModelSpec
    ) -> list[RowPrediction]:
        try:
            probabilities = await probabilities_of(model, rows, spec)
            check_probabilities(probabilities, len(rows), len(model.classes))
        except ModelFailedError as error:
            raise ModelFailedError(f"model {model.name} version {model.version}: {error}") from None
        except Exception as error:
            raise ModelFailedError(
                f"model {model.name} version {model.version} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        return rows_from_probabilities(model.classes, probabilities, spec.classes)

    def _count_error(self, model_name: str, error: Exception, variant: str, version: str) -> None:
        cause = error.__cause__ if isinstance(error, ModelFailedError) else None
        self._metrics.errors.labels(model_name, type(cause or error).__name__).inc()
        self._metrics.requests.labels(model_name, variant, version, str(http_status(error))).inc()

    @staticmethod
    def _failure_of(
        error: ModelFailedError,
        model: LoadedModel,
        variant: Variant,
        rows: int,
        elapsed: float,
        routing: RoutingTable,
    ) -> PredictionFailed:
        request_id = str(uuid.uuid4())
        return PredictionFailed(
            producer="gateway",
            correlation_id=request_id,
            request_id=request_id,
            model_name=model.name,
            version=model.version,
            variant=variant,
            error_type=type(error.__cause__ or error).__name__,
            rows=rows,
            latency_ms=elapsed * 1000,
            experiment_id=routing.experiment_id,
            challenger_share=routing.challenger_share,
        )

    def _pick(
        self, served: ServedModel, snapshot: ServingSnapshot, entity_id: str | None
    ) -> tuple[Variant, LoadedModel]:
        routing = snapshot.routing
        variant = choose_variant(
            routing.challenger_share, routing.experiment_id, entity_id, self._rng
        )
        model = snapshot.model_for(variant)
        if model is None and variant == "challenger":
            # The challenger failed to load: its traffic falls back to the champion.
            variant, model = "champion", snapshot.champion
        if model is None:
            if served.is_loading:
                raise ModelUnavailableError(
                    f"no model is loaded for alias 'champion' of {served.name!r} yet: "
                    "it is loading; retry in a few seconds"
                )
            raise ModelUnavailableError(
                f"no model is loaded for alias 'champion' of {served.name!r}; "
                "approve a model version (or wait for it to load) and retry"
            )
        return variant, model

    def _response(
        self, model: LoadedModel, variant: Variant, rows: list[RowPrediction], elapsed: float
    ) -> PredictResponse:
        request_id = str(uuid.uuid4())
        ids = [request_id] if len(rows) == 1 else [f"{request_id}-{i}" for i in range(len(rows))]
        return PredictResponse(
            request_id=request_id,
            model_name=model.name,
            model_version=model.version,
            variant=variant,
            predictions=[
                RowPredictionOut(request_id=row_id, **vars(row))
                for row_id, row in zip(ids, rows, strict=True)
            ],
            server_time_ms=elapsed * 1000,
        )

    @staticmethod
    def _events_of(
        response: PredictResponse,
        rows: Sequence[dict[str, Any]],
        entity_id: str | None,
        routing: RoutingTable,
    ) -> list[PredictionLogged]:
        return [
            PredictionLogged(
                producer="gateway",
                correlation_id=response.request_id,
                request_id=row.request_id,
                model_name=response.model_name,
                version=response.model_version,
                variant=response.variant,
                entity_id=entity_id,
                features=features,
                predicted_class=row.predicted_class,
                confidence=row.confidence,
                latency_ms=response.server_time_ms,
                experiment_id=routing.experiment_id,
                challenger_share=routing.challenger_share,
            )
            for row, features in zip(response.predictions, rows, strict=True)
        ]

    def _observe(
        self, model: LoadedModel, variant: Variant, rows: list[RowPrediction], elapsed: float
    ) -> None:
        self._metrics.requests.labels(model.name, variant, model.version, "200").inc()
        self._metrics.latency.labels(model.name, variant).observe(elapsed)
        for row in rows:
            self._metrics.predictions.labels(model.name, model.version, row.predicted_class).inc()
            self._metrics.confidence.labels(model.name, model.version).observe(row.confidence)


T = TypeVar("T")


async def _model_answers(
    model: LoadedModel,
    answer: Callable[[LoadedModel, Sequence[dict[str, Any]], ModelSpec], T],
    rows: Sequence[dict[str, Any]],
    spec: ModelSpec,
) -> T:
    """``answer(model, rows, spec)``, on the loop or, for big batches, a thread; whatever it
    raises is the model's failure (ModelFailedError naming the model and version)."""
    try:
        if len(rows) <= INLINE_ROWS:
            return answer(model, rows, spec)
        return await asyncio.to_thread(answer, model, rows, spec)
    except ModelFailedError as error:
        raise ModelFailedError(f"model {model.name} version {model.version}: {error}") from None
    except Exception as error:
        raise ModelFailedError(
            f"model {model.name} version {model.version} failed: {type(error).__name__}: {error}"
        ) from error
