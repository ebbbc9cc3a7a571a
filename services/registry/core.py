"""Registry decisions: validation gates, version tags, which alias an approved version gets,
and whether a model's spec may change.

Pure: metrics, aliases and specs in, gate results and decisions out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from services.registry.gates import GatePolicy
from shared.aliases import CHALLENGER, CHAMPION
from shared.errors import InvalidInputError
from shared.events import (
    GateResult,
    ModelApproved,
    ModelMetrics,
    ModelRejected,
    ModelTrained,
    Role,
)
from shared.spec import ModelSpec, serving_incompatibilities

#: What registering a spec did to the model.
SpecChange = Literal["created", "changed", "unchanged"]


def accuracy_gate(metrics: ModelMetrics, min_accuracy: float) -> GateResult:
    """Validation accuracy at least ``min_accuracy``.

    >>> m = ModelMetrics(accuracy=0.55, macro_f1=0.5, validation_rows=100)
    >>> accuracy_gate(m, 0.6).passed
    False
    """
    if metrics.accuracy is None:
        return GateResult(name="accuracy", passed=False, detail="no accuracy in the metrics")
    passed = metrics.accuracy >= min_accuracy
    sign = "≥" if passed else "<"
    detail = f"accuracy {metrics.accuracy:.4f} {sign} {min_accuracy:.4f}"
    return GateResult(name="accuracy", passed=passed, detail=detail)


def finite_metrics_gate(metrics: ModelMetrics) -> GateResult:
    """No metric is NaN or infinite (a broken fit often shows up this way)."""
    values = {k: v for k, v in metrics.model_dump().items() if isinstance(v, float)}
    bad = sorted(name for name, value in values.items() if not math.isfinite(value))
    if bad:
        return GateResult(name="finite_metrics", passed=False, detail=f"not finite: {bad}")
    return GateResult(
        name="finite_metrics", passed=True, detail=f"{len(values)} metrics all finite"
    )


def task_gate(metrics: ModelMetrics, spec: ModelSpec) -> GateResult:
    """The candidate reports the metrics of its spec's task (a regressor's for a regression).

    >>> from shared.spec import load_spec
    >>> m = ModelMetrics(rmse=1.0, mae=0.8, r2=0.5, validation_rows=10)
    >>> task_gate(m, load_spec()).detail
    "task changed: the candidate reports regression metrics, model 'customer-segment' is \
a classification model (its spec's task)"
    """
    task = "regression" if metrics.is_regression else "classification"
    passed = task == spec.task
    detail = (
        f"{task} metrics, as the spec's task"
        if passed
        else f"task changed: the candidate reports {task} metrics, model {spec.name!r} is "
        f"a {spec.task} model (its spec's task)"
    )
    return GateResult(name="task", passed=passed, detail=detail)


def r2_gate(metrics: ModelMetrics, min_r2: float) -> GateResult:
    """Regression: validation R² at least ``min_r2``.

    >>> r2_gate(ModelMetrics(rmse=1.0, mae=0.8, r2=-0.2, validation_rows=10), 0.0).detail
    'r2 -0.2000 < 0.0000'
    """
    if metrics.r2 is None:
        return GateResult(name="r2", passed=False, detail="no r2 in the metrics")
    passed = metrics.r2 >= min_r2
    detail = f"r2 {metrics.r2:.4f} {'≥' if passed else '<'} {min_r2:.4f}"
    return GateResult(name="r2", passed=passed, detail=detail)


def rmse_gate(metrics: ModelMetrics, max_rmse: float | None) -> GateResult:
    """Regression: validation RMSE at most ``max_rmse`` (no ceiling when None)."""
    rmse = metrics.rmse if metrics.rmse is not None else math.nan
    if max_rmse is None:
        detail = f"rmse {rmse:.4f}, no ceiling set (REGISTRY_MAX_RMSE)"
        return GateResult(name="rmse", passed=True, detail=detail)
    passed = rmse <= max_rmse
    detail = f"rmse {rmse:.4f} {'≤' if passed else '>'} {max_rmse:.4f}"
    return GateResult(name="rmse", passed=passed, detail=detail)


def evaluate_gates(
    metrics: ModelMetrics, policy: GatePolicy, spec: ModelSpec
) -> tuple[GateResult, ...]:
    """Every gate on the reported metrics, in a fixed order: the spec's task decides which
    quality gates apply; a candidate of the other task fails the ``task`` gate alone."""
    if metrics.is_regression != spec.is_regression:
        return (task_gate(metrics, spec), finite_metrics_gate(metrics))
    if spec.is_regression:
        quality = (r2_gate(metrics, policy.min_r2), rmse_gate(metrics, policy.max_rmse))
        return (*quality, finite_metrics_gate(metrics))
    return (accuracy_gate(metrics, policy.min_accuracy), finite_metrics_gate(metrics))


def failed(gates: tuple[GateResult, ...]) -> tuple[GateResult, ...]:
    """The gates that did not pass."""
    return tuple(gate for gate in gates if not gate.passed)


def gate_tags(gates: tuple[GateResult, ...]) -> dict[str, str]:
    """Version tags ``gate.<name>`` = ``"passed: <detail>"`` or ``"failed: <detail>"``."""
    return {f"gate.{g.name}": f"{'passed' if g.passed else 'failed'}: {g.detail}" for g in gates}


def lineage_tags(event: ModelTrained) -> dict[str, str]:
    """Version tags tracing a version back to its run, data and turn of the loop."""
    return {
        "flywheel.run_id": event.run_id,
        "flywheel.data_version": event.data_version,
        "flywheel.correlation_id": event.correlation_id,
        "flywheel.trigger": event.trigger,
        "flywheel.algorithm": event.algorithm,
        "flywheel.trained_event_id": event.event_id,
        **({"flywheel.caused_by": event.causation_id} if event.causation_id else {}),
    }


def decision_tags(decision: ModelApproved | ModelRejected) -> dict[str, str]:
    """Version tags naming the model-approved / model-rejected event the registry published."""
    return {"flywheel.decision": decision.type, "flywheel.decision_event_id": decision.event_id}


#: The event that starts each kind of training.
TRIGGER_EVENT_TYPES = {
    "data": "data-arrived",
    "drift": "drift-detected",
    "manual": "retrain-model",
    "schedule": "schedule",
}


@dataclass(frozen=True)
class ChainLink:
    """One event of a version's turn of the loop, and the event(s) that caused it."""

    type: str
    event_ids: tuple[str, ...]
    caused_by: str | None = None


def trigger_chain(run_tags: dict[str, str], version_tags: dict[str, str]) -> list[ChainLink]:
    """The events from the trigger to the registry's decision, oldest first.

    Links whose ids were not recorded (versions from before they were) are left out.

    >>> run = {"flywheel.trigger": "drift", "flywheel.event_id": "d1"}
    >>> version = {"flywheel.trained_event_id": "t1", "flywheel.caused_by": "d1",
    ...            "flywheel.decision": "model-approved", "flywheel.decision_event_id": "a1"}
    >>> for link in trigger_chain(run, version):
    ...     print(link.type, link.event_ids, link.caused_by)
    drift-detected ('d1',) None
    model-trained ('t1',) d1
    model-approved ('a1',) t1
    """
    trigger = run_tags.get("flywheel.trigger")
    ids = [i for i in run_tags.get("flywheel.trigger_ids", "").split(",") if i]
    first = run_tags.get("flywheel.event_id")
    ids = ids or ([first] if first else [])
    chain = []
    if trigger and ids:
        chain.append(ChainLink(TRIGGER_EVENT_TYPES.get(trigger, trigger), tuple(ids)))
    trained = version_tags.get("flywheel.trained_event_id")
    if trained:
        chain.append(ChainLink("model-trained", (trained,), version_tags.get("flywheel.caused_by")))
    decided = version_tags.get("flywheel.decision_event_id")
    if decided:
        decision = version_tags.get("flywheel.decision", "decision")
        chain.append(ChainLink(decision, (decided,), trained))
    return chain


def choose_alias(champion_version: str | None, version: str) -> Role:
    """First approved version becomes champion, later ones challenger.

    Choosing again for the version that already is champion (a redelivery)
    keeps it champion.

    >>> choose_alias(None, "1"), choose_alias("1", "1"), choose_alias("1", "2")
    ('champion', 'champion', 'challenger')
    """
    if champion_version is None or champion_version == version:
        return CHAMPION
    return CHALLENGER


class IncompatibleSpecError(InvalidInputError):
    """A spec change that models already trained and served could not take."""

    def __init__(self, name: str, reasons: list[str]) -> None:
        super().__init__(f"spec change of {name} refused: {'; '.join(reasons)}")
        self.reasons = reasons


def spec_change(
    name: str, registered: ModelSpec | None, new: ModelSpec, served: ModelSpec | None = None
) -> SpecChange:
    """Whether registering ``new`` as ``name``'s spec creates, changes or repeats it.

    ``registered`` is the spec stored now; ``served`` the one the deployment's default
    model is served with while it is not registered (deprecated), which a first
    registration must be compatible with too. Raises InvalidInputError when ``new``
    names another model, IncompatibleSpecError naming every break otherwise.

    >>> from shared.spec import load_spec
    >>> spec = load_spec()
    >>> spec_change(spec.name, None, spec), spec_change(spec.name, spec, spec)
    ('created', 'unchanged')
    >>> fewer = spec.model_copy(update={"classes": spec.classes[:2]})
    >>> try:
    ...     spec_change(spec.name, spec, fewer)
    ... except IncompatibleSpecError as error:
    ...     print(error.reasons)
    ["classes changed: ['at_risk', 'steady', 'high_value'] -> ['at_risk', 'steady']"]
    """
    if new.name != name:
        raise InvalidInputError(f"spec.name {new.name!r} differs from the model name {name!r}")
    baseline = registered or served
    reasons = serving_incompatibilities(baseline, new) if baseline is not None else []
    if reasons:
        raise IncompatibleSpecError(name, reasons)
    if registered is None:
        return "created"
    return "unchanged" if registered == new else "changed"
