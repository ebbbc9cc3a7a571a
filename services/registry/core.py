"""Registry decisions: validation gates, version tags and which alias an approved version gets.

Pure: metrics and aliases in, gate results and decisions out.
"""

from __future__ import annotations

import math

from shared.events import GateResult, ModelMetrics, ModelTrained, Role

CHAMPION: Role = "champion"
CHALLENGER: Role = "challenger"


def accuracy_gate(metrics: ModelMetrics, min_accuracy: float) -> GateResult:
    """Validation accuracy at least ``min_accuracy``.

    >>> m = ModelMetrics(accuracy=0.55, macro_f1=0.5, validation_rows=100)
    >>> accuracy_gate(m, 0.6).passed
    False
    """
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


def evaluate_gates(metrics: ModelMetrics, min_accuracy: float) -> tuple[GateResult, ...]:
    """Every gate's result, in a fixed order."""
    return (accuracy_gate(metrics, min_accuracy), finite_metrics_gate(metrics))


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
    }


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


#: Aliases remembering earlier champions, most recent first: rollback walks back along them.
PREVIOUS_CHAMPIONS = ("champion-1", "champion-2", "champion-3")

AliasMoves = dict[str, str | None]


def promotion_moves(aliases: dict[str, str], version: str) -> AliasMoves:
    """Alias changes that make ``version`` champion and remember the one it replaces.

    ``None`` means delete the alias. The last three champions stay one alias away.

    >>> promotion_moves({"champion": "1", "challenger": "2"}, "2")
    {'champion': '2', 'challenger': None, 'champion-1': '1', 'champion-2': None, 'champion-3': None}
    """
    current = aliases.get(CHAMPION)
    moves: AliasMoves = {CHAMPION: version}
    if aliases.get(CHALLENGER) == version:
        moves[CHALLENGER] = None
    if current is None or current == version:
        return moves
    history = [current, *(aliases.get(a) for a in PREVIOUS_CHAMPIONS)]
    moves.update(zip(PREVIOUS_CHAMPIONS, history, strict=False))
    return moves


def rollback_moves(aliases: dict[str, str]) -> AliasMoves:
    """Alias changes that give the champion alias back to the previous champion.

    Raises LookupError when there is no earlier champion to return to.

    >>> rollback_moves({"champion": "3", "champion-1": "2", "champion-2": "1"})
    {'champion': '2', 'champion-1': '1', 'champion-2': None, 'champion-3': None}
    """
    previous = aliases.get(PREVIOUS_CHAMPIONS[0])
    if previous is None:
        raise LookupError("no previous champion to roll back to")
    older = [aliases.get(a) for a in PREVIOUS_CHAMPIONS[1:]] + [None]
    return {CHAMPION: previous, **dict(zip(PREVIOUS_CHAMPIONS, older, strict=True))}
