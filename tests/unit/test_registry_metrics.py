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
    churn = {"model_name": "churn"}
    assert value("flywheel_registry_model_versions_total", {**churn, "outcome": "approved"}) == 3
    assert value("flywheel_registry_model_versions_total", {**churn, "outcome": "rejected"}) == 1
    assert value("flywheel_registry_gate_passed", {**churn, "gate": "accuracy"}) == 0
    assert value("flywheel_registry_gate_passed", {**churn, "gate": "latency"}) == 1
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

    synced = MetricsFromRegistry(list_versions, metrics, lambda: sorted(held))
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
    approved = {"model_name": "churn", "outcome": "approved"}
    assert registry.get_sample_value("flywheel_registry_model_versions_total", approved) == 1


async def test_every_registered_model_is_seeded_and_one_models_move_leaves_the_others() -> None:
    registry = CollectorRegistry()
    metrics = RegistryMetrics.create(registry)
    held = {
        "churn": [_version(2, "model-approved", {"accuracy": "passed: 0.9"}, "champion")],
        "fraud": [
            _version(5, "model-rejected", {"accuracy": "failed: 0.4"}),
            _version(4, "model-approved", {"accuracy": "passed: 0.8"}, "champion"),
            _version(3, "model-approved", {}, "champion-1"),
        ],
    }
    synced = MetricsFromRegistry(lambda name: held[name], metrics, lambda: sorted(held))
    await synced.start()
    assert synced._seeding is not None
    await synced._seeding

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"flywheel_registry_{name}", labels)

    assert value("alias_version", model_name="churn", alias="champion") == 2
    assert value("alias_version", model_name="fraud", alias="champion") == 4
    assert value("model_versions_total", model_name="fraud", outcome="approved") == 2
    assert value("model_versions_total", model_name="fraud", outcome="rejected") == 1
    assert value("model_versions_total", model_name="churn", outcome="rejected") is None
    assert value("gate_passed", model_name="fraud", gate="accuracy") == 0
    assert value("gate_passed", model_name="churn", gate="accuracy") == 1

    held["fraud"] = [_version(4, "model-approved", {}, "champion")]  # champion-1 gone
    await synced.on_aliases_moved(
        ModelPromoted(producer="router", model_name="fraud", version="4", reason="won")
    )
    assert value("alias_version", model_name="fraud", alias="champion-1") is None
    assert value("alias_version", model_name="churn", alias="champion") == 2
