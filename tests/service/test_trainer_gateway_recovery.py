"""The trainer's and the gateway's state guards: an emptied Redis is noticed, counted, rebuilt."""

from __future__ import annotations

from typing import cast

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from test_router_recovery import MarkerRedis
from test_trainer_handlers import FRAUD, MODEL, InMemoryHistory

from services.gateway.recovery import GatewayStateGuard, marker_key
from services.trainer.recovery import NEEDS_BATCHES, TrainerStateGuard, TrainerStateGuards
from services.trainer.recovery import marker_key as trainer_marker_key
from shared.events import DatasetRef


def _ref(n: int) -> DatasetRef:
    return DatasetRef(uri=f"file:///data/batch-{n}.parquet", sha256=f"{n:064x}", rows=100 + n)


class Trainer:
    def __init__(self, last_trained: list[DatasetRef] | None) -> None:
        self.redis, self.history = MarkerRedis(), InMemoryHistory()
        self.registry = CollectorRegistry()
        self.asked: list[str] = []

        def read(model_name: str) -> list[DatasetRef] | None:
            self.asked.append(model_name)
            return last_trained

        self.guard = TrainerStateGuard(
            cast(Redis, self.redis), self.history, read, self.registry, MODEL
        )

    def lost(self, rebuilt: str) -> float:
        labels = {"model_name": MODEL, "rebuilt": rebuilt}
        return self.registry.get_sample_value("trainer_state_lost_total", labels) or 0.0


async def test_a_lost_batch_list_is_rebuilt_from_the_newest_training_run() -> None:
    trainer = Trainer(last_trained=[_ref(1), _ref(2), _ref(3)])
    assert not await trainer.guard.ready()  # positive control: not ready before the check
    await trainer.guard.check()
    assert await trainer.history.recent(MODEL, 10) == [_ref(1), _ref(2), _ref(3)]
    assert trainer.lost("true") == 1
    assert await trainer.guard.ready()
    assert trainer.guard.details()["state_lost"] is None


async def test_a_lost_list_without_logged_batches_is_not_ready_until_a_batch_comes() -> None:
    trainer = Trainer(last_trained=[])
    await trainer.guard.check()
    assert trainer.lost("false") == 1
    assert not await trainer.guard.ready()
    assert trainer.guard.details()["state_lost"] == NEEDS_BATCHES
    await trainer.history.record(MODEL, _ref(7))
    assert await trainer.guard.ready()
    assert trainer.guard.details()["state_lost"] is None


async def test_a_first_start_loses_nothing() -> None:
    trainer = Trainer(last_trained=None)  # MLflow never saw a training of the model
    await trainer.guard.check()
    assert trainer.lost("true") + trainer.lost("false") == 0
    assert await trainer.guard.ready()


async def test_a_surviving_batch_list_is_marked_without_asking_mlflow() -> None:
    trainer = Trainer(last_trained=[_ref(1)])
    await trainer.history.record(MODEL, _ref(5))
    await trainer.guard.check()
    await trainer.guard.check()
    assert trainer.asked == []
    assert await trainer.history.recent(MODEL, 10) == [_ref(5)]
    assert trainer.lost("true") == 0


async def test_the_trainer_rebuilds_once_then_trusts_the_marker() -> None:
    trainer = Trainer(last_trained=[_ref(1)])
    await trainer.guard.check()
    trainer.history.refs.clear()  # only the marker is consulted while it is there
    await trainer.guard.check()
    assert trainer.asked == [MODEL]
    assert trainer.lost("true") == 1


class Trainers:
    """Guards of every model: ``runs`` is each model's newest training run (absent: never)."""

    def __init__(self, runs: dict[str, list[DatasetRef]]) -> None:
        self.redis, self.history = MarkerRedis(), InMemoryHistory()
        self.registry, self.runs = CollectorRegistry(), runs
        self.models = [MODEL]
        self.broken: set[str] = set()

        def read(model_name: str) -> list[DatasetRef] | None:
            if model_name in self.broken:
                raise ConnectionError("MLflow unreachable")
            return self.runs.get(model_name)

        async def models() -> list[str]:
            return list(self.models)

        self.guards = TrainerStateGuards(
            cast(Redis, self.redis), self.history, read, self.registry, models
        )

    def lost(self, model: str, rebuilt: str) -> float:
        labels = {"model_name": model, "rebuilt": rebuilt}
        return self.registry.get_sample_value("trainer_state_lost_total", labels) or 0.0


async def test_every_model_has_its_own_marker_and_rebuilds_only_its_own_list() -> None:
    trainers = Trainers(runs={MODEL: [_ref(1)], FRAUD: []})
    trainers.models = [MODEL, FRAUD, "churn"]  # churn never trained: a first start
    assert not await trainers.guards.ready()  # positive control: nothing checked yet
    await trainers.history.record("churn", _ref(9))
    await trainers.guards.check()

    assert set(trainers.redis.keys) == {trainer_marker_key(m) for m in trainers.models}
    assert trainer_marker_key(FRAUD) == "flywheel:trainer:{card-fraud}:state-marker"
    assert await trainers.history.recent(MODEL, 10) == [_ref(1)]
    assert (trainers.lost(MODEL, "true"), trainers.lost(FRAUD, "false")) == (1, 1)
    assert trainers.lost("churn", "true") + trainers.lost("churn", "false") == 0
    # The fraud model's run held no batches: not ready, and /readyz says which model.
    assert not await trainers.guards.ready()
    assert trainers.guards.details()["state_lost"] == {FRAUD: NEEDS_BATCHES}
    await trainers.history.record(FRAUD, _ref(2))
    assert await trainers.guards.ready()
    assert trainers.guards.details()["state_lost"] is None


async def test_a_later_model_is_guarded_and_one_failing_check_spares_the_others() -> None:
    trainers = Trainers(runs={MODEL: [_ref(1)], FRAUD: [_ref(2)]})
    await trainers.guards.check()
    assert trainers.lost(MODEL, "true") == 1

    trainers.models = [MODEL, FRAUD, "churn"]
    trainers.broken = {FRAUD}  # its runs cannot be read now
    await trainers.guards.check()
    assert trainer_marker_key(FRAUD) not in trainers.redis.keys
    assert trainer_marker_key("churn") in trainers.redis.keys
    assert not await trainers.guards.ready()  # the fraud model is not checked yet

    trainers.broken = set()
    await trainers.guards.check()
    assert await trainers.history.recent(FRAUD, 10) == [_ref(2)]
    assert trainers.lost(FRAUD, "true") == 1
    assert await trainers.guards.ready()


class Gateway:
    def __init__(self, serving: bool) -> None:
        self.redis, self.registry = MarkerRedis(), CollectorRegistry()
        self.serving = serving
        self.guard = GatewayStateGuard(
            cast(Redis, self.redis), lambda: self.serving, self.registry, MODEL
        )

    def lost(self) -> float:
        value = self.registry.get_sample_value("gateway_state_lost_total", {"model_name": MODEL})
        return value or 0.0


async def test_a_gateway_first_start_without_a_model_loses_nothing() -> None:
    gateway = Gateway(serving=False)
    await gateway.guard.check()
    assert gateway.lost() == 0
    assert marker_key(MODEL) in gateway.redis.keys


async def test_a_gateway_serving_a_model_counts_an_emptied_redis_at_start() -> None:
    gateway = Gateway(serving=True)
    await gateway.guard.check()
    assert gateway.lost() == 1


async def test_a_redis_emptied_under_a_running_gateway_is_counted_once() -> None:
    gateway = Gateway(serving=False)
    await gateway.guard.check()
    gateway.redis.keys.clear()  # FLUSHALL
    await gateway.guard.check()
    await gateway.guard.check()
    assert gateway.lost() == 1
