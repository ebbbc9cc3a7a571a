"""What one predict or feedback request does, between the HTTP route and the core."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
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
from services.gateway.errors import http_status
from services.gateway.metrics import GatewayMetrics
from services.gateway.pool import LoadedModel, ModelPool, RoutingTable, ServingSnapshot
from services.gateway.ports import FeatureStore, PredictionRecords
from services.gateway.prediction_log import PredictionEventBuffer
from services.gateway.schemas import FeedbackResponse, PredictResponse, RowPredictionOut
from services.gateway.shadow import ShadowScorer
from shared.errors import DependencyUnavailableError, InvalidInputError, NotFoundError
from shared.events import FeedbackReceived, PredictionFailed, PredictionLogged, Variant
from shared.messaging import EventPublisher
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

T = TypeVar("T")


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


class PredictionService:
    """Validates, routes, scores and logs one predict request."""

    def __init__(
        self,
        pool: ModelPool,
        spec: ModelSpec,
        events: PredictionEventBuffer,
        metrics: GatewayMetrics,
        *,
        model_name: str,
        max_batch: int,
        rng: random.Random | None = None,
        feature_store: FeatureStore | None = None,
        log_predictions: bool = True,
        shadow: ShadowScorer | None = None,
    ) -> None:
        self._shadow = shadow
        self._feature_store = feature_store
        self._pool = pool
        self._spec = spec
        self._events = events
        self._metrics = metrics
        self._model_name = model_name
        self._max_batch = max_batch
        self._log_predictions = log_predictions
        self._rng = rng or random.Random()

    async def predict(
        self, rows: Sequence[dict[str, Any]] | None, entity_id: str | None
    ) -> PredictResponse:
        """Answer ``rows`` (or the entity's stored features) from one variant.

        Prediction events are logged off the request path; a feature-store lookup
        writes the predicted segment back to the store.
        """
        if rows is None:
            if entity_id is None:
                raise InvalidInputError("send instances, features, or an entity_id")
            rows = [await self._stored_row(entity_id)]
            response = await self._answer(rows, entity_id)
            await self._write_back(entity_id, response)
            return response
        return await self._answer(rows, entity_id)

    async def _stored_row(self, entity_id: str) -> dict[str, Any]:
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
        return row_from_store(stored, self._spec)

    async def _write_back(self, entity_id: str, response: PredictResponse) -> None:
        assert self._feature_store is not None
        segment = response.predictions[0].predicted_class
        try:
            await self._feature_store.write_segment(entity_id, segment, response.model_version)
        except (RedisError, OSError) as error:
            log.warning("segment not written back", extra={"error": repr(error)})
            self._metrics.crm_updates.labels(outcome="failed").inc()
            return
        self._metrics.crm_updates.labels(outcome="written").inc()

    async def _answer(
        self, rows: Sequence[dict[str, Any]], entity_id: str | None
    ) -> PredictResponse:
        started = time.perf_counter()
        try:
            check_instances(rows, self._spec, self._max_batch)
            snapshot = self._pool.snapshot
            variant, model = self._pick(snapshot, entity_id)
        except Exception as error:
            self._count_error(error, "none", "none")
            raise
        try:
            answered = await self._score(model, rows)
        except ModelFailedError as error:
            # The variant that failed pays for it in the router's error-rate guardrail.
            self._count_error(error, variant, model.version)
            elapsed = time.perf_counter() - started
            self._events.offer_unrecorded(
                [self._failure_of(error, model, variant, len(rows), elapsed, snapshot.routing)]
            )
            raise
        elapsed = time.perf_counter() - started
        response = self._response(model, variant, answered, elapsed)
        if self._log_predictions:
            self._events.offer(self._events_of(response, rows, entity_id, snapshot.routing))
        self._observe(model, variant, answered, elapsed)
        if self._shadow is not None:
            self._shadow.maybe_mirror(snapshot, response, rows, entity_id)
        return response

    async def _score(
        self, model: LoadedModel, rows: Sequence[dict[str, Any]]
    ) -> list[RowPrediction]:
        try:
            probabilities = await probabilities_of(model, rows, self._spec)
            check_probabilities(probabilities, len(rows), len(model.classes))
        except ModelFailedError as error:
            raise ModelFailedError(f"model {model.name} version {model.version}: {error}") from None
        except Exception as error:
            raise ModelFailedError(
                f"model {model.name} version {model.version} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        return rows_from_probabilities(model.classes, probabilities, self._spec.classes)

    def _count_error(self, error: Exception, variant: str, version: str) -> None:
        cause = error.__cause__ if isinstance(error, ModelFailedError) else None
        self._metrics.errors.labels(error_type=type(cause or error).__name__).inc()
        self._metrics.requests.labels(variant, version, str(http_status(error))).inc()

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
        self, snapshot: ServingSnapshot, entity_id: str | None
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
            raise ModelUnavailableError(
                f"no model is loaded for alias 'champion' of {self._model_name!r}; "
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
        self._metrics.requests.labels(variant, model.version, "200").inc()
        self._metrics.latency.labels(variant).observe(elapsed)
        for row in rows:
            self._metrics.predictions.labels(model.name, model.version, row.predicted_class).inc()
            self._metrics.confidence.labels(model.name, model.version).observe(row.confidence)


class FeedbackService:
    """Joins an outcome to its prediction, once, and publishes FeedbackReceived."""

    def __init__(
        self,
        records: PredictionRecords,
        publisher: EventPublisher,
        spec: ModelSpec,
        metrics: GatewayMetrics,
        *,
        ttl_s: int,
        publish_timeout_s: float,
        pending: Callable[[str], PredictionLogged | None] = lambda _: None,
    ) -> None:
        self._records = records
        self._publisher = publisher
        self._spec = spec
        self._metrics = metrics
        self._ttl_s = ttl_s
        self._publish_timeout_s = publish_timeout_s
        self._pending = pending

    async def record(
        self, request_id: str, true_label: str | None, reward: float | None
    ) -> FeedbackResponse:
        """Publish the feedback unless it was already received; 404 for unknown ids."""
        prediction = await self._recall(request_id)
        if true_label is not None and true_label not in self._spec.classes:
            raise InvalidInputError(
                f"true_label {true_label!r} is not a class; expected one of "
                f"{list(self._spec.classes)}"
            )
        correct = None if true_label is None else true_label == prediction.predicted_class
        if not await self._guarded(self._records.claim_feedback(request_id)):
            return await self._duplicate(request_id, correct)
        event = FeedbackReceived.caused_by(
            prediction,
            producer="gateway",
            request_id=request_id,
            model_name=prediction.model_name,
            version=prediction.version,
            variant=prediction.variant,
            predicted_class=prediction.predicted_class,
            true_label=true_label,
            reward=reward,
            correct=correct,
            experiment_id=prediction.experiment_id,
            challenger_share=prediction.challenger_share,
        )
        await self._publish(event)
        await self._confirm(request_id)
        self._metrics.feedback.labels(outcome="recorded").inc()
        return FeedbackResponse(request_id=request_id, duplicate=False, correct=correct)

    async def _duplicate(self, request_id: str, correct: bool | None) -> FeedbackResponse:
        if not await self._guarded(self._records.feedback_recorded(request_id)):
            # Claimed, not published: in flight, or its gateway was killed before publishing.
            # Answering "duplicate" would lose it for good; the claim lapses, so retry.
            raise DependencyUnavailableError(
                f"feedback for {request_id!r} is being recorded; retry in a few seconds"
            )
        self._metrics.feedback.labels(outcome="duplicate").inc()
        return FeedbackResponse(request_id=request_id, duplicate=True, correct=correct)

    async def _confirm(self, request_id: str) -> None:
        try:
            await self._records.confirm_feedback(request_id)
        except (RedisError, OSError) as error:
            # Published already: the feedback counts. Its claim lapses, so a retry could
            # publish it again; consumers keep one label per request.
            log.warning("feedback marker not confirmed", extra={"error": repr(error)})

    async def _recall(self, request_id: str) -> PredictionLogged:
        # Feedback can overtake the prediction's record, still queued in this process.
        prediction = self._pending(request_id) or await self._guarded(
            self._records.recall(request_id)
        )
        if prediction is None:
            self._metrics.feedback.labels(outcome="unknown").inc()
            raise NotFoundError(
                f"no prediction with request_id {request_id!r}: it is unknown, or older than "
                f"the {self._ttl_s // 3600} h feedback window"
            )
        return prediction

    async def _publish(self, event: FeedbackReceived) -> None:
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                await self._publisher.publish(event)
        except Exception as error:
            # Let the client retry: the feedback did not count.
            await self._guarded(self._records.release_feedback(event.request_id))
            raise DependencyUnavailableError(
                f"feedback could not be published ({type(error).__name__}); retry"
            ) from error

    @staticmethod
    async def _guarded(call: Awaitable[T]) -> T:
        try:
            return await call
        except (RedisError, OSError) as error:
            raise DependencyUnavailableError(
                f"prediction records unavailable ({type(error).__name__}); retry"
            ) from error
