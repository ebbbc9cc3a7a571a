"""The model catalog: cached specs, the default model, and unknown names answered cheaply."""

from __future__ import annotations

import pytest

from shared.catalog import InMemorySpecSource, ModelCatalog, RegisteredSpec, UnknownModelError
from shared.events import ModelRegistered
from shared.spec import load_spec

SPEC = load_spec()


class CountingSource(InMemorySpecSource):
    """Counts the calls that would reach MLflow."""

    def __init__(self) -> None:
        super().__init__({"churn": RegisteredSpec(1, SPEC)})
        self.calls = 0

    def registered_spec(self, name: str) -> RegisteredSpec | None:
        self.calls += 1
        return super().registered_spec(name)

    def registered_specs(self) -> dict[str, RegisteredSpec]:
        self.calls += 1
        return super().registered_specs()


async def test_a_repeated_unknown_name_is_answered_without_asking_the_source() -> None:
    source = CountingSource()
    catalog = ModelCatalog(source)
    for _ in range(50):
        with pytest.raises(UnknownModelError, match="registered models: churn"):
            await catalog.spec("nope")
    assert source.calls == 2  # one look-up and one listing, for the first request only


async def test_an_unknown_name_is_asked_again_after_its_time() -> None:
    source = CountingSource()
    catalog = ModelCatalog(source, miss_ttl_s=0.0)
    with pytest.raises(UnknownModelError):
        await catalog.spec("fraud")
    source.specs["fraud"] = RegisteredSpec(1, SPEC)
    assert await catalog.spec("fraud") == SPEC


async def test_model_registered_makes_a_missed_name_known_at_once() -> None:
    catalog = ModelCatalog(CountingSource())
    with pytest.raises(UnknownModelError):
        await catalog.spec("fraud")
    event = ModelRegistered(
        producer="registry", model_name="fraud", spec_revision=1, spec=SPEC, requested_by="ana"
    )
    assert catalog.apply(event)
    assert await catalog.spec("fraud") == SPEC


async def test_the_default_model_answers_with_its_configured_spec() -> None:
    catalog = ModelCatalog(InMemorySpecSource(), "segment", SPEC)
    assert await catalog.registered("segment") == RegisteredSpec(0, SPEC)
    assert await catalog.names() == ["segment"]
