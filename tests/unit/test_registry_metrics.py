"""The registry's metrics start from what MLflow holds, not from zero, after a restart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.registry.metrics import MetricsFromRegistry, RegistryMetrics
from services.registry.ports import VersionInfo
from shared.errors import NotFoundError
from shared.events import ModelPromoted


def _version(number: int, decision: str, gates: dict[str, str], *aliases: str) -> VersionInfo:
    tags = {"flywheel.decision": decision, **{f"gate.{k}": v for k, v in gates.items()}}
    return VersionInfo(str(number), f"run-{number}", tuple(aliases), tags)


def test_a_restarted_registry_reports_decisions_gates_and_aliases_from_mlflow() -> None:
    registry = CollectorRegistry()
    metrics = RegistryMetrics.create(registry)
    versions = [
        _version(4, "model-rejected", {"accuracy": "failed: 0.5", "latency": "passed: 3 ms"}),
        _version(3, "model-approved", {"accuracy": "passed: 0.9"}, "challenger"),
        _version(2, "model-approved", {"accuracy": "passed: 0.8"}, "champion"),
        _version(1, "model-approved", {"accuracy": "passed: 0.7"}, "champion-1"),
        VersionInfo("5", "run-5"),  # registered, not decided yet (a crash mid-gate)
    ]
    metrics.seed("churn", versions)
    value = registry.get_sample_value
    assert value("flywheel_registry_model_versions_total", {"outcome": "approved"}) == 3
    assert value("flywheel_registry_model_versions_total", {"outcome": "rejected"}) == 1
    assert value("flywheel_registry_gate_passed", {"gate": "accuracy"}) == 0
    assert value("flywheel_registry_gate_passed", {"gate": "latency"}) == 1
    alias = "flywheel_registry_alias_version"
    assert value(alias, {"model_name": "churn", "alias": "champion"}) == 2
    assert value(alias, {"model_name": "churn", "alias": "challenger"}) == 3
    assert value(alias, {"model_name": "churn", "alias": "champion-1"}) == 1


def test_aliases_follow_a_promotion_and_a_removed_alias_disappears() -> None:
    registry = CollectorRegistry()
    metrics = RegistryMetrics.create(registry)
    metrics.show_aliases(
        "churn", [_version(2, "", {}, "champion"), _version(3, "", {}, "challenger")]
    )
    metrics.show_aliases(
        "churn", [_version(3, "", {}, "champion"), _version(2, "", {}, "champion-1")]
    )
    alias = "flywheel_registry_alias_version"
    assert registry.get_sample_value(alias, {"model_name": "churn", "alias": "champion"}) == 3
    assert registry.get_sample_value(alias, {"model_name": "churn", "alias": "challenger"}) is None


async def test_the_gauges_are_seeded_at_start_and_follow_promotions() -> None:
    registry = CollectorRegistry()
    metrics = RegistryMetrics.create(registry)
    held = {"churn": [_version(2, "model-approved", {}, "champion")]}

    def list_versions(name: str) -> list[VersionInfo]:
        if name not in held:
            raise NotFoundError(name)
        return held[name]

    synced = MetricsFromRegistry(list_versions, metrics, "churn")
    await synced.start()
    assert synced._seeding is not None
    await synced._seeding
    champion = {"model_name": "churn", "alias": "champion"}
    assert registry.get_sample_value("flywheel_registry_alias_version", champion) == 2
    held["churn"] = [_version(3, "model-approved", {}, "champion")]
    await synced.on_aliases_moved(
        ModelPromoted(producer="router", model_name="other", version="9", reason="won")
    )
    assert registry.get_sample_value("flywheel_registry_alias_version", champion) == 2
    await synced.on_aliases_moved(
        ModelPromoted(producer="router", model_name="churn", version="3", reason="won")
    )
    assert registry.get_sample_value("flywheel_registry_alias_version", champion) == 3
    approved = {"outcome": "approved"}
    assert registry.get_sample_value("flywheel_registry_model_versions_total", approved) == 1
