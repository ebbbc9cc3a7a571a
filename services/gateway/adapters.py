"""MLflow and Redis implementations of the gateway's ports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis

from services.gateway.core import is_flywheel_pipeline
from services.gateway.ports import Classifier, Regressor
from shared.events import PredictionLogged, Variant
from shared.mlflow_client import bound_mlflow_requests, mlflow_client
from shared.scoring import Scorer, flavor_of, load_scorer
from shared.spec import ModelSpec

_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


class MlflowModelRegistry:
    """Loads models of any supported flavour and resolves aliases from the MLflow registry
    (blocking)."""

    def __init__(self, tracking_uri: str) -> None:
        bound_mlflow_requests()
        self._tracking_uri = tracking_uri

    def load(self, name: str, version: str, spec: ModelSpec) -> Classifier | Regressor:
        """Load ``models:/<name>/<version>``: Flywheel's own pipelines as themselves (scored
        straight from rows), any other model through ``shared.scoring`` (scored from a frame).

        Raises UnusableModelError naming the flavour and the problem when the model cannot
        answer in ``spec``'s terms.
        """
        mlflow.set_tracking_uri(self._tracking_uri)
        uri = f"models:/{name}/{version}"
        if flavor_of(uri) == "sklearn":
            model = mlflow.sklearn.load_model(uri)
            if is_flywheel_pipeline(model):
                return cast(Classifier | Regressor, model)
        # Loaded again (a plain sklearn model) through the one reader of every flavour:
        # loads are rare, and its answers come in the spec's class order.
        return ScorerModel(load_scorer(uri, spec), spec)

    def aliases(self, name: str) -> dict[Variant, str | None]:
        """The versions behind ``champion`` and ``challenger`` (None where unset)."""
        client = mlflow_client(self._tracking_uri)
        return {
            "champion": _alias_version(client, name, "champion"),
            "challenger": _alias_version(client, name, "challenger"),
        }


class ScorerModel:
    """A model of any flavour as the gateway scores it: from a frame, in the spec's terms.

    ``classes_`` are the spec's (the scorer orders probabilities that way); ``predict``
    gives a regressor's values.
    """

    def __init__(self, scorer: Scorer, spec: ModelSpec) -> None:
        self.scorer = scorer
        self.flavor = scorer.flavor
        self.classes_ = spec.classes

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Probabilities, one column per class of the spec."""
        return self.scorer.predict_proba(frame)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """A regressor's values, one per row."""
        return self.scorer.predict_values(frame)


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in _MISSING_CODES:
            return None
        raise


_SET_ALL_WITH_EXPIRY = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
"""


#: Feedback markers: claimed (publishing now, or its gateway died doing so) and recorded.
_CLAIMED, _RECORDED = b"claimed", b"1"


class RedisPredictionRecords:
    """One JSON record per request id (without features) and a once-only feedback marker."""

    def __init__(
        self,
        redis: Redis,
        ttl_s: int,
        prefix: str = "flywheel:gateway:",
        claim_hold_s: float = 30.0,
    ) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._prefix = prefix
        self._claim_hold_ms = max(1, int(claim_hold_s * 1000))

    async def remember(self, events: Sequence[PredictionLogged]) -> None:
        """Write all records with one command (a script setting each key with its expiry).

        One command instead of a pipeline of one SET per event: the client's CPU for
        packing commands was the larger part of logging a prediction.
        """
        keys = [self._key("prediction", event.request_id) for event in events]
        records = [event.model_dump_json(exclude={"features"}) for event in events]
        await self._redis.eval(_SET_ALL_WITH_EXPIRY, len(keys), *keys, self._ttl_s, *records)

    async def recall(self, request_id: str) -> PredictionLogged | None:
        """The stored record of ``request_id`` (features left out), if it has not expired."""
        raw = await self._redis.get(self._key("prediction", request_id))
        if raw is None:
            return None
        return PredictionLogged.model_validate({"features": {}, **json.loads(raw)})

    async def claim_feedback(self, request_id: str) -> bool:
        """SET NX a short-lived claim: True only for the first feedback (or after it lapsed)."""
        key = self._key("feedback", request_id)
        return bool(await self._redis.set(key, _CLAIMED, nx=True, px=self._claim_hold_ms))

    async def confirm_feedback(self, request_id: str) -> None:
        """Turn the claim into the recorded marker, kept for the feedback window."""
        await self._redis.set(self._key("feedback", request_id), _RECORDED, ex=self._ttl_s)

    async def feedback_recorded(self, request_id: str) -> bool:
        """Whether the marker says recorded (markers of older gateways all do)."""
        return await self._redis.get(self._key("feedback", request_id)) == _RECORDED

    async def release_feedback(self, request_id: str) -> None:
        """Delete the feedback marker so the client may retry."""
        await self._redis.delete(self._key("feedback", request_id))

    def _key(self, kind: str, request_id: str) -> str:
        return f"{self._prefix}{kind}:{request_id}"


class RedisFeatureStore:
    """Features in one hash per entity; the predicted segment beside them in another."""

    def __init__(self, redis: Redis, prefix: str = "flywheel:features:") -> None:
        self._redis = redis
        self._prefix = prefix

    async def features(self, entity_id: str) -> dict[str, str] | None:
        """The entity's feature hash, or None when it has none."""
        raw = await self._redis.hgetall(self._prefix + entity_id)
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    async def write_segment(
        self, entity_id: str, segment: str, version: str, model_name: str | None = None
    ) -> None:
        """Write the predicted class and the version that predicted it: the default model's
        under ``<entity>:segment`` (where CRM reads it), another's under ``:segment:<model>``."""
        items: list[str] = ["segment", segment, "version", version]
        suffix = "" if model_name is None else f":{model_name}"
        await self._redis.hset(f"{self._prefix}{entity_id}:segment{suffix}", items=items)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
