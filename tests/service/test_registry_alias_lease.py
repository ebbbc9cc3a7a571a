"""The registry's alias decisions under the model's lease (a fake one here; Redis's in
tests/integration/test_registry_first_approval_race.py)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from _registry_fakes import FakeModelRegistry
from test_registry_handlers import MODEL, _approved, _harness, _trained

from services.registry.admin import RegistryAdmin
from shared.errors import DependencyUnavailableError
from shared.events import ModelPromoted


@dataclass
class RecordingLeases:
    """Records what happened to the aliases while each model's lease was held."""

    registry: FakeModelRegistry
    held: list[str] = field(default_factory=list)
    moves_inside: list[dict[str, str]] = field(default_factory=list)
    refusing: bool = False

    @contextlib.asynccontextmanager
    async def hold(self, model_name: str) -> AsyncIterator[None]:
        if self.refusing:
            raise DependencyUnavailableError(f"alias lease of {model_name} held elsewhere")
        self.held.append(model_name)
        yield
        self.moves_inside.append(self.registry.all_aliases(model_name))


class ChampionSetBehindItsBack(FakeModelRegistry):
    """Another replica whose lease lapsed sets its own champion right after ours is set."""

    def set_alias(self, name: str, alias: str, version: str) -> None:
        super().set_alias(name, alias, version)
        if alias == "champion" and version != "9":
            super().set_alias(name, "champion", "9")


async def test_an_approval_chooses_and_sets_its_alias_while_holding_the_models_lease() -> None:
    h = _harness()
    leases = RecordingLeases(h.models)
    handlers = dataclasses.replace(h.handlers, leases=leases)
    await handlers.on_model_trained(_trained(h, "r1"))
    await handlers.on_model_trained(_trained(h, "r2"))
    assert leases.held == [MODEL, MODEL]
    # Each alias was in place before the lease was given back.
    assert leases.moves_inside == [{"champion": "1"}, {"champion": "1", "challenger": "2"}]


async def test_no_lease_no_alias_the_event_is_retried() -> None:
    h = _harness()
    handlers = dataclasses.replace(h.handlers, leases=RecordingLeases(h.models, refusing=True))
    with pytest.raises(DependencyUnavailableError):
        await handlers.on_model_trained(_trained(h, "r1"))
    assert h.models.aliases == {}
    assert _approved(h) == []


async def test_a_champion_set_meanwhile_wins_and_ours_is_announced_as_challenger() -> None:
    h = _harness()
    racing = ChampionSetBehindItsBack(runs=h.models.runs)
    h.loader.registry = racing
    handlers = dataclasses.replace(h.handlers, models=racing)
    await handlers.on_model_trained(_trained(h, "r1"))
    [approved] = _approved(h)
    assert (approved.version, approved.alias, approved.champion_version) == (
        "1",
        "challenger",
        "9",
    )
    assert racing.aliases[MODEL] == {"champion": "9", "challenger": "1"}
    clashes = h.sample("flywheel_registry_champion_clashes_total", model_name=MODEL)
    assert clashes == 1


async def test_promote_and_rollback_move_aliases_under_the_same_lease() -> None:
    h = _harness()
    await h.handlers.on_model_trained(_trained(h, "r1"))
    await h.handlers.on_model_trained(_trained(h, "r2"))
    leases = RecordingLeases(h.models)
    admin = RegistryAdmin(h.models, h.publisher, leases)
    promoted = await admin.promote(MODEL, None, "better")
    assert isinstance(promoted, ModelPromoted)
    await admin.rollback(MODEL, "worse after all")
    assert leases.held == [MODEL, MODEL]
    assert leases.moves_inside == [
        {"champion": "2", "champion-1": "1"},
        {"champion": "1"},
    ]
