"""What one feedback request does: join the outcome to its prediction, once, and publish it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

from services.gateway.core import WrongModelError
from services.gateway.fleet import ModelFleet
from services.gateway.metrics import GatewayMetrics
from services.gateway.ports import PredictionRecords
from services.gateway.schemas import FeedbackResponse
from shared.errors import DependencyUnavailableError, InvalidInputError, NotFoundError
from shared.events import FeedbackReceived, PredictionLogged
from shared.messaging import EventPublisher
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

T = TypeVar("T")


class FeedbackService:
    """Joins an outcome to its prediction, once, and publishes FeedbackReceived."""

    def __init__(
        self,
        records: PredictionRecords,
        publisher: EventPublisher,
        fleet: ModelFleet,
        metrics: GatewayMetrics,
        *,
        ttl_s: int,
        publish_timeout_s: float,
        pending: Callable[[str], PredictionLogged | None] = lambda _: None,
    ) -> None:
        self._records = records
        self._publisher = publisher
        self._fleet = fleet
        self._metrics = metrics
        self._ttl_s = ttl_s
        self._publish_timeout_s = publish_timeout_s
        self._pending = pending

    async def record(
        self,
        model_name: str,
        request_id: str,
        true_label: str | None,
        reward: float | None,
        true_value: float | None = None,
    ) -> FeedbackResponse:
        """Publish the feedback unless it was already received; 404 for unknown ids or
        models, 409 for a prediction another model answered, 422 for an outcome that is
        not the model's task's (a label for a regressor, a value for a classifier)."""
        spec = await self._fleet.spec(model_name)
        check_outcome_fits(spec, model_name, true_label, true_value)
        prediction = await self._recall(model_name, request_id)
        if true_label is not None and true_label not in spec.classes:
            raise InvalidInputError(
                f"true_label {true_label!r} is not a class of {model_name!r}; expected one of "
                f"{list(spec.classes)}"
            )
        correct = None if true_label is None else true_label == prediction.predicted_class
        if not await self._guarded(self._records.claim_feedback(request_id)):
            return await self._duplicate(model_name, request_id, correct)
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
            predicted_value=prediction.predicted_value,
            true_value=true_value,
            experiment_id=prediction.experiment_id,
            challenger_share=prediction.challenger_share,
        )
        await self._publish(event)
        await self._confirm(request_id)
        self._metrics.feedback.labels(model_name, "recorded").inc()
        return FeedbackResponse(request_id=request_id, duplicate=False, correct=correct)

    async def _duplicate(
        self, model_name: str, request_id: str, correct: bool | None
    ) -> FeedbackResponse:
        if not await self._guarded(self._records.feedback_recorded(request_id)):
            # Claimed, not published: in flight, or its gateway was killed before publishing.
            # Answering "duplicate" would lose it for good; the claim lapses, so retry.
            raise DependencyUnavailableError(
                f"feedback for {request_id!r} is being recorded; retry in a few seconds"
            )
        self._metrics.feedback.labels(model_name, "duplicate").inc()
        return FeedbackResponse(request_id=request_id, duplicate=True, correct=correct)

    async def _confirm(self, request_id: str) -> None:
        try:
            await self._records.confirm_feedback(request_id)
        except (RedisError, OSError) as error:
            # Published already: the feedback counts. Its claim lapses, so a retry could
            # publish it again; consumers keep one label per request.
            log.warning("feedback marker not confirmed", extra={"error": repr(error)})

    async def _recall(self, model_name: str, request_id: str) -> PredictionLogged:
        # Feedback can overtake the prediction's record, still queued in this process.
        prediction = self._pending(request_id) or await self._guarded(
            self._records.recall(request_id)
        )
        if prediction is None:
            self._metrics.feedback.labels(model_name, "unknown").inc()
            raise NotFoundError(
                f"no prediction with request_id {request_id!r}: it is unknown, or older than "
                f"the {self._ttl_s // 3600} h feedback window"
            )
        if prediction.model_name != model_name:
            # Counted under the other model, a label would judge it by the wrong classes.
            self._metrics.feedback.labels(model_name, "wrong_model").inc()
            raise WrongModelError(
                f"request_id {request_id!r} was answered by model {prediction.model_name!r}, "
                f"not {model_name!r}: send its feedback to "
                f"/v1/models/{prediction.model_name}/feedback"
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


def check_outcome_fits(
    spec: ModelSpec, model_name: str, true_label: str | None, true_value: float | None
) -> None:
    """Refuse an outcome of the other task: a true_label for a regressor, a true_value for a
    classifier (each scores its answers its own way)."""
    if spec.is_regression and true_label is not None:
        raise InvalidInputError(
            f"true_label: {model_name!r} is a regression model; send its outcome as "
            "true_value (a number)"
        )
    if not spec.is_regression and true_value is not None:
        raise InvalidInputError(
            f"true_value: {model_name!r} is a classification model; send its outcome as "
            f"true_label (one of {list(spec.classes)})"
        )
