"""MLflow and Redis implementations of the gateway's ports."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Sequence
from typing import cast

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic_core import to_json

from services.gateway.core import is_flywheel_pipeline
from services.gateway.ports import Classifier, Regressor
from shared.events import PredictionLogged, Variant
from shared.mlflow_client import bound_mlflow_requests, mlflow_client
from shared.redis_client import RedisClient, slot_groups
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
    """One compact record per request id (what feedback joins on) and a once-only marker."""

    def __init__(
        self,
        redis: RedisClient,
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
        packing commands was the larger part of logging a prediction. On a Redis
        Cluster the keys (by request id, no hash tag) spread over slots: one script
        per slot, pipelined; the records are independent, so nothing needs them atomic.
        """
        keys = [self._key("prediction", event.request_id) for event in events]
        records = [encode_record(event) for event in events]
        groups = slot_groups(self._redis, keys)
        if len(groups) == 1:
            await self._redis.eval(_SET_ALL_WITH_EXPIRY, len(keys), *keys, self._ttl_s, *records)
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for group in groups:
                slot_keys, slot_records = [keys[i] for i in group], [records[i] for i in group]
                pipe.eval(_SET_ALL_WITH_EXPIRY, len(group), *slot_keys, self._ttl_s, *slot_records)
            await pipe.execute()

    async def recall(self, request_id: str) -> PredictionLogged | None:
        """The stored record of ``request_id``, if it has not expired (what ``decode_record``
        restores: no features, times, confidence or latency)."""
        raw = await self._redis.get(self._key("prediction", request_id))
        if raw is None:
            return None
        return decode_record(request_id, raw)

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


#: The record layout's version, its first element: a later layout can read earlier ones.
_RECORD_LAYOUT = 1
_VARIANTS: tuple[Variant, Variant] = ("champion", "challenger")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_URL_SAFE = bytes.maketrans(b"+/", b"-_")
#: Where a record's correlation id comes from: the request id itself (a single row), the
#: request id less its ``-<row>`` suffix (a row of a batch), or else stored as it is.
_SAME_AS_REQUEST, _REQUEST_OF_ROW = 0, 1


def encode_record(event: PredictionLogged) -> bytes:
    """What feedback needs of a prediction, as a JSON array without keys.

    Kept: the ids the feedback event is caused by (a UUID in 22 characters; the
    correlation id only when the request id does not imply it), who answered (model,
    version, variant), the answer, and the experiment's id and share. The request id is
    the key; features, times, confidence, latency and entity are left out: feedback joins
    on none of them. ~95 bytes instead of the ~560 of the event's JSON without features.
    """
    answer = event.predicted_class if event.predicted_value is None else event.predicted_value
    experiment = None if event.experiment_id is None else _short_id(event.experiment_id)
    fields = [
        _RECORD_LAYOUT,
        _short_id(event.event_id),
        _short_correlation(event.correlation_id, event.request_id),
        event.model_name,
        event.version,
        _VARIANTS.index(event.variant),
        answer,
        experiment,
        event.challenger_share,
    ]
    return to_json(fields)


def decode_record(request_id: str, raw: bytes | str) -> PredictionLogged:
    """The prediction ``encode_record`` kept (or an earlier gateway's full JSON record)."""
    value = json.loads(raw)
    if isinstance(value, dict):  # written by a gateway before the compact layout
        return PredictionLogged.model_validate({"features": {}, **value})
    _, event_id, correlation, model, version, variant, answer, experiment, share = value
    is_class = isinstance(answer, str)
    return PredictionLogged(
        producer="gateway",
        event_id=_long_id(event_id),
        correlation_id=_long_correlation(correlation, request_id),
        request_id=request_id,
        model_name=model,
        version=version,
        variant=_VARIANTS[variant],
        features={},
        predicted_class=answer if is_class else None,
        predicted_value=None if is_class else answer,
        latency_ms=0.0,
        experiment_id=None if experiment is None else _long_id(experiment),
        challenger_share=share,
    )


def _short_id(text: str) -> str:
    """A canonical UUID as its 16 bytes in URL-safe base64 (22 characters); any other id
    as it is behind ``=`` (which that base64 never holds)."""
    # Matched rather than parsed with uuid.UUID: faster, and only the form str() gives back.
    if _CANONICAL_UUID.fullmatch(text):
        raw = binascii.b2a_base64(bytes.fromhex(text.replace("-", "")), newline=False)
        return raw[:22].translate(_URL_SAFE).decode()
    return "=" + text


def _long_id(short: str) -> str:
    if short.startswith("="):
        return short[1:]
    return str(uuid.UUID(bytes=base64.urlsafe_b64decode(short + "==")))


def _short_correlation(correlation_id: str, request_id: str) -> int | str:
    if correlation_id == request_id:
        return _SAME_AS_REQUEST
    if request_id.rpartition("-")[0] == correlation_id:
        return _REQUEST_OF_ROW
    return _short_id(correlation_id)


def _long_correlation(short: int | str, request_id: str) -> str:
    if short == _SAME_AS_REQUEST:
        return request_id
    if short == _REQUEST_OF_ROW:
        return request_id.rpartition("-")[0]
    return _long_id(str(short))


class RedisFeatureStore:
    """Features in one hash per entity; the predicted segment beside them in another."""

    def __init__(self, redis: RedisClient, prefix: str = "flywheel:features:") -> None:
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
