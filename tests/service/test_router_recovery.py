"""The router's state guard: an emptied Redis is noticed, the routing table rebuilt from aliases."""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from test_router_handlers import MODEL, InMemoryExperimentStore, Router, open_experiment

from services.router.recovery import STATE_MARKER_KEY, StateGuard
from shared.events import ExperimentUpdated
from shared.testing import RecordingPublisher


class MarkerRedis:
    """The two Redis commands the guard uses, on a dict."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}

    async def exists(self, key: str) -> int:
        return int(key in self.keys)

    async def set(self, key: str, value: Any) -> None:
        self.keys[key] = value


class Guarded:
    def __init__(self, aliases: tuple[str | None, str | None], store: Any = None) -> None:
        self.redis = MarkerRedis()
        self.store = store or InMemoryExperimentStore()
        self.publisher = RecordingPublisher()
        self.registry = CollectorRegistry()
        self.guard = StateGuard(
            cast(Redis, self.redis),
            self.store,
            lambda _: aliases,
            self.publisher,
            self.registry,
            self.models,
        )

    @staticmethod
    async def models() -> list[str]:
        return [MODEL]

    def lost(self) -> float:
        value = self.registry.get_sample_value("router_state_lost_total", {"model_name": MODEL})
        return value or 0.0


async def test_an_emptied_redis_with_a_challenger_alias_is_a_lost_experiment() -> None:
    guarded = Guarded(aliases=("3", "4"))
    assert not await guarded.guard.ready()  # positive control: not ready before the check
    await guarded.guard.check()
    (update,) = guarded.publisher.events
    assert isinstance(update, ExperimentUpdated)
    assert (update.status, update.champion_version, update.challenger_share) == (
        "champion_only",
        "3",
        0.0,
    )
    assert update.reason == "state_lost"
    assert guarded.store.tables.get(MODEL) == update
    assert guarded.lost() == 1
    assert await guarded.guard.ready()
    assert guarded.guard.details()["state_rebuilt"]


async def test_the_check_rebuilds_once_then_trusts_the_marker() -> None:
    guarded = Guarded(aliases=("3", None))
    await guarded.guard.check()
    await guarded.guard.check()
    assert len(guarded.publisher.events) == 1
    assert guarded.lost() == 0  # a champion alone: the table rebuilt, nothing lost


async def test_a_store_with_experiments_is_marked_without_a_rebuild() -> None:
    router = Router()
    await open_experiment(router)
    guarded = Guarded(aliases=("1", "2"), store=router.store)
    await guarded.guard.check()
    assert guarded.publisher.events == []
    assert STATE_MARKER_KEY in guarded.redis.keys


async def test_nothing_registered_is_a_first_start() -> None:
    guarded = Guarded(aliases=(None, None))
    await guarded.guard.check()
    assert guarded.publisher.events == []
    assert await guarded.guard.ready()
