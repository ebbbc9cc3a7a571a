"""Fenced writes on a real Redis (one server and a Redis Cluster): a replica that lost a
model to a successor cannot overwrite the successor's state."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.monitor.adapters import RedisStateStore
from services.monitor.core import Reference
from services.monitor.handlers import MonitorHandlers
from services.monitor.metrics import MonitorMetrics
from services.monitor.service import ModelMonitors, MonitorPorts
from services.monitor.settings import Settings
from shared.catalog import InMemorySpecSource, ModelCatalog
from shared.errors import FencedOffError
from shared.events import PredictionLogged, model_key
from shared.ownership import RedisFencing, Write
from shared.redis_client import RedisClient, redis_client
from shared.spec import ModelSpec, load_spec
from shared.testing import RecordingPublisher

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(stateful_redis_url: str) -> AsyncIterator[RedisClient]:
    client = redis_client(stateful_redis_url)
    yield client
    await client.aclose()


async def test_a_zombie_s_late_write_is_refused_and_its_successor_s_state_stands(
    redis: RedisClient,
) -> None:
    model = f"test-fence-{uuid.uuid4().hex[:8]}"
    state, log = model_key("fence-test", model, "state"), model_key("fence-test", model, "log")
    first, second = RedisFencing(redis, "fence-test"), RedisFencing(redis, "fence-test")
    held = await first.take(model)
    await first.fenced_save(state, "first's", held)
    successor = await second.take(model)  # the partition moved; the first was not told
    assert successor.epoch == held.epoch + 1
    assert await redis.get(state) == b"first's"  # the successor reads what was written
    await second.apply(successor, [Write("SET", state, ("second's",)), Write("RPUSH", log, ("s",))])
    with pytest.raises(FencedOffError, match=f"epoch {successor.epoch}"):
        await first.fenced_save(state, "first's late write", held)
    with pytest.raises(FencedOffError):  # several commands: none applied
        await first.apply(held, [Write("DEL", log), Write("SET", state, ("late",))])
    assert await redis.get(state) == b"second's"
    assert await redis.lrange(log, 0, -1) == [b"s"]


async def test_a_monitor_that_lost_a_model_cannot_overwrite_the_new_owner_s_window(
    redis: RedisClient,
) -> None:
    settings = Settings(model_name=f"test-fence-{uuid.uuid4().hex[:8]}", window_size=100)
    model = settings.model_name
    rng = np.random.default_rng(5)
    reference = Reference.from_columns("7", {"a": rng.normal(size=500)}, None, (), 0.9)

    def replica() -> tuple[MonitorHandlers, CollectorRegistry]:
        registry = CollectorRegistry()
        ports = MonitorPorts(_OneReference(reference), RedisStateStore(redis), RecordingPublisher())
        catalog = ModelCatalog(InMemorySpecSource(), model, load_spec())
        models = ModelMonitors(
            ports, catalog, settings.to_config(), MonitorMetrics.create(registry)
        )
        return MonitorHandlers(models), registry

    def rows(count: int) -> list[PredictionLogged]:
        return [_prediction(model, float(x)) for x in rng.normal(size=count)]

    zombie, zombie_registry = replica()
    await zombie.on_predictions(rows(30))
    successor, _ = replica()
    await successor.on_predictions(rows(20))  # takes the model's next epoch, then reads
    assert successor.models.of(model).drift is not None
    saved = await RedisStateStore(redis).load(model)
    assert saved is not None
    assert saved[0]["window"]["filled"] == 50
    with pytest.raises(FencedOffError):
        await zombie.on_predictions(rows(40))
    labels = {"model_name": model}
    assert zombie_registry.get_sample_value("monitor_fenced_off_total", labels) == 1
    assert zombie.models.of(model).drift is None  # dropped, not written
    after = await RedisStateStore(redis).load(model)
    assert after == saved


class _OneReference:
    def __init__(self, reference: Reference) -> None:
        self._reference = reference

    def reference(
        self, model_name: str, spec: ModelSpec, version: str | None = None
    ) -> Reference | None:
        return self._reference


def _prediction(model_name: str, a: float) -> PredictionLogged:
    return PredictionLogged(
        producer="gateway",
        request_id="r",
        model_name=model_name,
        version="7",
        variant="champion",
        features={"a": a},
        predicted_class="steady",
        confidence=0.9,
        latency_ms=1.0,
    )
