"""A Redis crash and restart during an experiment: one verdict, no feedback lost.

The router runs in this process on the session's Kafka and MLflow and on a Redis
of this test's own, started as ``flywheel up`` starts it (append-only file,
fsync every second). Midway through a ramping experiment that Redis is killed
(SIGKILL: a crash, not a shutdown), outcomes keep arriving while it is down, and
it is restarted on the same port and data directory. Before persistence the
restart erased the experiment: no verdict ever came and the outcomes counted
for an experiment nobody knew.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import mlflow
import pytest
from _support import free_port
from aiokafka import AIOKafkaProducer
from mlflow.tracking import MlflowClient
from redis.asyncio import Redis
from sklearn.linear_model import LogisticRegression

from flywheel.infra import Endpoints, InfraConfig
from flywheel.infra.processes import running_pid, stop
from flywheel.infra.redis import redis_answers, start_redis
from flywheel.loop import EventTap
from services.router.app import create_app
from services.router.core import experiment_id_for
from services.router.settings import Settings
from shared.events import (
    Event,
    ExperimentUpdated,
    FeedbackReceived,
    ModelApproved,
    ModelMetrics,
    ModelPromoted,
    ModelRolledBack,
    PredictionLogged,
    Topic,
    Variant,
)

pytestmark = pytest.mark.integration

SETTINGS: dict[str, object] = {
    "ramp_shares": (0.2, 0.5),
    "stage_min_labelled": 10,
    "look_every": 20,
    "n_star": 400.0,
    "min_labelled_per_arm": 60,
    "min_correct_per_arm": 5,
    "min_wrong_per_arm": 5,
}
#: Outcomes arrive right after their predictions; a 15 s window outlasts the outage and the
#: consumers' catching up after it (with 1 s, every label of a loaded machine came late).
FAST_WINDOWS = {"outcome_window_s": 15.0, "outcome_grace_s": 2.0, "look_interval_s": 1.0}
ACCURACY = {"champion": 0.55, "challenger": 0.95}


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfraConfig]:
    config = InfraConfig(run_dir=tmp_path_factory.mktemp("redis-restart"), redis_port=free_port())
    start_redis(config)
    try:
        yield config
    finally:
        stop(config.run_dir, "redis")


def _crash(config: InfraConfig) -> None:
    """SIGKILL the Redis process group and wait until its port is closed."""
    pid = running_pid(config.run_dir, "redis")
    assert pid is not None, "the test's Redis is not running"
    os.killpg(pid, signal.SIGKILL)
    while redis_answers(config.redis_port):
        pass


def _two_versions(uri: str, name: str, challenger: bool = True) -> None:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(name)
    for _ in range(2):
        with mlflow.start_run() as run:
            model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], ["a", "a", "b", "b"])
            mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
        mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    client = MlflowClient(uri)
    client.set_registered_model_alias(name, "champion", "1")
    if challenger:
        client.set_registered_model_alias(name, "challenger", "2")


async def _ready(router: httpx.AsyncClient) -> httpx.Response:
    """The router's /readyz once it says ready (or its last answer after 30 s)."""
    for _ in range(60):
        ready = await router.get("/readyz")
        if ready.status_code == 200:
            break
        await asyncio.sleep(0.5)
    return ready


@asynccontextmanager
async def _router(group: str) -> AsyncIterator[httpx.AsyncClient]:
    fields = {**SETTINGS, **{k: v for k, v in FAST_WINDOWS.items() if k in Settings.model_fields}}
    app = create_app(Settings(**fields), name=group)  # type: ignore[arg-type]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client,
    ):
        yield client


@dataclass
class Traffic:
    """Routed predictions and their outcomes, sent by the latest published split."""

    approval: ModelApproved
    producer: AIOKafkaProducer
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    feedback_ids: list[str] = field(default_factory=list)

    async def send(self, share: float, pairs: int = 20) -> None:
        events: list[Event] = []
        for _ in range(pairs):
            events += self._pair(share)
        sends = [
            await self.producer.send(e.topic.value, e.model_dump_json().encode()) for e in events
        ]
        await asyncio.gather(*sends)

    def _pair(self, share: float) -> list[Event]:
        variant: Variant = "challenger" if self.rng.random() < share else "champion"
        version = "2" if variant == "challenger" else "1"
        correct = self.rng.random() < ACCURACY[variant]
        common = {"model_name": self.approval.model_name, "version": version, "variant": variant}
        routed = {"experiment_id": experiment_id_for(self.approval), "challenger_share": share}
        prediction = PredictionLogged(
            producer="it",
            request_id=uuid.uuid4().hex,
            features={},
            predicted_class="a",
            confidence=0.8,
            latency_ms=self.rng.uniform(1, 3),
            **common,
            **routed,
        )
        feedback = FeedbackReceived.caused_by(
            prediction,
            producer="it",
            request_id=prediction.request_id,
            predicted_class="a",
            true_label="a" if correct else "b",
            correct=correct,
            **common,
            **routed,
        )
        self.feedback_ids.append(feedback.event_id)
        return [prediction, feedback]


def _share(tap: EventTap, experiment_id: str) -> float:
    updates = [
        e
        for e in tap.events
        if isinstance(e, ExperimentUpdated) and e.experiment_id == experiment_id
    ]
    return updates[-1].challenger_share if updates else 0.0


def _verdicts(tap: EventTap, model: str) -> list[Event]:
    return [
        e
        for e in tap.events
        if isinstance(e, ModelPromoted | ModelRolledBack) and e.model_name == model
    ]


async def _unprocessed(redis: Redis, group: str, ids: list[str]) -> list[str]:
    found = await redis.exists(*[f"flywheel:{group}:done:{i}" for i in ids]) if ids else 0
    if found == len(ids):
        return []
    flags = [await redis.exists(f"flywheel:{group}:done:{i}") for i in ids]
    return [i for i, hit in zip(ids, flags, strict=True) if not hit]


async def test_a_redis_crash_mid_experiment_ends_in_one_verdict_with_every_outcome_counted(
    infra_env: Endpoints, own_redis: InfraConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    infra, config = infra_env, own_redis
    monkeypatch.setenv("REDIS_URL", config.redis_url)
    model, group = f"it-restart-{uuid.uuid4().hex[:8]}", f"router-restart-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_two_versions, infra.mlflow_uri, model)
    approval = ModelApproved(
        producer="it",
        model_name=model,
        version="2",
        run_id="r2",
        alias="challenger",
        champion_version="1",
        metrics=ModelMetrics(accuracy=0.8, macro_f1=0.8, validation_rows=10),
    )
    experiment_id = experiment_id_for(approval)
    producer = AIOKafkaProducer(**infra.kafka.client_options())
    await producer.start()
    traffic = Traffic(approval, producer)
    redis = Redis.from_url(config.redis_url)
    try:
        async with EventTap(infra.kafka) as tap, _router(group) as router:
            await producer.send_and_wait(
                Topic.MODEL_APPROVED.value, approval.model_dump_json().encode()
            )
            await tap.wait_for(ExperimentUpdated, lambda e: e.experiment_id == experiment_id, 60)
            for _ in range(3):  # the experiment is under way, its state in Redis
                await traffic.send(_share(tap, experiment_id))
                await asyncio.sleep(0.5)
            await asyncio.to_thread(_crash, config)
            share = _share(tap, experiment_id)
            for _ in range(3):  # outcomes arrive while Redis is down
                await traffic.send(share)
                await asyncio.sleep(0.5)
            await asyncio.to_thread(start_redis, config)  # same port, same data directory
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:  # a bounded wait, so a lost experiment fails
                if _verdicts(tap, model):
                    break
                await traffic.send(_share(tap, experiment_id))
                await asyncio.sleep(0.5)
            for _ in range(60):  # until the router has handled every outcome sent
                if not await _unprocessed(redis, group, traffic.feedback_ids):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # a second verdict, were there one, would be out by now
            missing = await _unprocessed(redis, group, traffic.feedback_ids)
            verdicts = _verdicts(tap, model)
            ended = [
                e
                for e in tap.events
                if isinstance(e, ExperimentUpdated)
                and e.experiment_id == experiment_id
                and e.status != "running"
            ]
            lettered = [d for d in tap.dead_letters if d.topic.startswith(Topic.FEEDBACK_RECEIVED)]
            report = (await router.get(f"/v1/experiments/{experiment_id}/report")).json()
    finally:
        await producer.stop()
        await redis.aclose()
    assert len(verdicts) == 1, report
    labelled = sum(arm["labelled"] for arm in report["arms"].values())
    assert labelled >= 2 * SETTINGS["min_labelled_per_arm"], report["arms"]  # type: ignore[operator]
    assert isinstance(verdicts[0], ModelPromoted)  # the better challenger, as without a crash
    assert [e.status for e in ended] == ["promoted"]
    assert missing == [], f"{len(missing)} of {len(traffic.feedback_ids)} outcomes never handled"
    assert lettered == []


async def test_a_redis_that_comes_back_empty_ends_the_lost_experiment_loudly(
    infra_env: Endpoints, own_redis: InfraConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    infra, config = infra_env, own_redis
    model, group = f"it-emptied-{uuid.uuid4().hex[:8]}", f"router-emptied-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("REDIS_URL", config.redis_url)
    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", model)
    # The challenger alias comes with the approval, once the router has started: a fresh
    # Redis beside a registry that already names a challenger is itself a lost state.
    await asyncio.to_thread(_two_versions, infra.mlflow_uri, model, False)
    approval = ModelApproved(
        producer="it",
        model_name=model,
        version="2",
        run_id="r2",
        alias="challenger",
        champion_version="1",
        metrics=ModelMetrics(accuracy=0.8, macro_f1=0.8, validation_rows=10),
    )
    producer = AIOKafkaProducer(**infra.kafka.client_options())
    await producer.start()
    try:
        async with EventTap(infra.kafka) as tap, _router(group) as router:
            await _ready(router)
            await asyncio.to_thread(
                MlflowClient(infra.mlflow_uri).set_registered_model_alias, model, "challenger", "2"
            )
            await producer.send_and_wait(
                Topic.MODEL_APPROVED.value, approval.model_dump_json().encode()
            )
            await tap.wait_for(
                ExperimentUpdated, lambda e: e.model_name == model and e.status == "running", 60
            )
            await asyncio.to_thread(_crash, config)
            shutil.rmtree(config.run_dir / "redis")  # the data directory is lost with it
            (config.run_dir / "redis").mkdir()
            await asyncio.to_thread(start_redis, config)
            rebuilt = await tap.wait_for(
                ExperimentUpdated,
                lambda e: e.model_name == model and e.reason == "state_lost",
                30,
            )
            ready = await _ready(router)
            metrics = (await router.get("/metrics")).text
            table = (await router.get("/v1/experiments/current")).json()
    finally:
        await producer.stop()
    assert (rebuilt.champion_version, rebuilt.challenger_share) == ("1", 0.0)
    assert rebuilt.reason == "state_lost"
    assert ready.status_code == 200, ready.text
    assert f'router_state_lost_total{{model_name="{model}"}} 1.0' in metrics
    assert (table["model_name"], table["champion_version"], table["challenger_share"]) == (
        model,
        "1",
        0.0,
    )
