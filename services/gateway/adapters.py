"""MLflow and Redis implementations of the gateway's ports."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import cast

import mlflow
import mlflow.sklearn
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.ports import Classifier
from shared.events import ROUTING_STATE_KEY, ExperimentUpdated, PredictionLogged, Variant
from shared.mlflow_client import bound_mlflow_requests, mlflow_client

log = logging.getLogger(__name__)

_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


class MlflowModelRegistry:
    """Loads sklearn models and resolves aliases from the MLflow registry (blocking)."""

    def __init__(self, tracking_uri: str) -> None:
        bound_mlflow_requests()
        self._tracking_uri = tracking_uri

    def load(self, name: str, version: str) -> Classifier:
        """Load ``models:/<name>/<version>`` as the logged sklearn pipeline."""
        mlflow.set_tracking_uri(self._tracking_uri)
        return cast(Classifier, mlflow.sklearn.load_model(f"models:/{name}/{version}"))

    def aliases(self, name: str) -> dict[Variant, str | None]:
        """The versions behind ``champion`` and ``challenger`` (None where unset)."""
        client = mlflow_client(self._tracking_uri)
        return {
            "champion": _alias_version(client, name, "champion"),
            "challenger": _alias_version(client, name, "challenger"),
        }


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in _MISSING_CODES:
            return None
        raise


class RedisRoutingState:
    """Reads the routing table the router keeps under ``ROUTING_STATE_KEY``."""

    def __init__(self, redis: Redis, key: str = ROUTING_STATE_KEY) -> None:
        self._redis = redis
        self._key = key

    async def latest(self) -> ExperimentUpdated | None:
        """The stored routing table; None when absent or unreadable (start-up falls back)."""
        try:
            raw = await self._redis.get(self._key)
        except (RedisError, OSError) as error:
            log.warning("routing state unreadable", extra={"error": repr(error)})
            return None
        return None if raw is None else ExperimentUpdated.model_validate_json(raw)


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

    async def write_segment(self, entity_id: str, segment: str, version: str) -> None:
        """Write the predicted segment and the version that predicted it."""
        items: list[str] = ["segment", segment, "version", version]
        await self._redis.hset(f"{self._prefix}{entity_id}:segment", items=items)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
