"""Gating one candidate, of any flavour and task: load it and its holdout through the ports,
score both candidate and champion on that holdout, and run the pure gates on the outputs.

Every way a candidate can fail to be gated (no holdout, a model that cannot be loaded or
answers in other terms than its spec's, a champion of another task) ends in a failed
gate that names it, never in an exception: the handler turns them into model-rejected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from services.registry.core import evaluate_gates, failed
from services.registry.gates import (
    GatePolicy,
    determinism_gate,
    finite_output_gate,
    finite_values_gate,
    latency_gate,
    no_champion_gate,
    non_inferiority_gate,
    regression_non_inferiority_gate,
    schema_gate,
)
from services.registry.ports import CandidateLoader, ModelRegistry
from shared.aliases import CHAMPION
from shared.errors import InvalidInputError, NotFoundError
from shared.events import GateResult, ModelTrained
from shared.scoring import Scorer, UnusableModelError
from shared.spec import ModelSpec

#: Version tag recording the task a version was gated (and is served) as.
TASK_TAG = "flywheel.task"
#: Where a run's holdout lives; the import command's ``--holdout`` logs it there.
HOLDOUT_ARTIFACT = "holdout/validation.parquet"

#: A model's outputs for a frame: probabilities (classification) or values (regression).
Predict = Callable[[pd.DataFrame], np.ndarray]


class Holdout(NamedTuple):
    """The fresh held-out rows: the spec's features, and the label (str or float)."""

    x: pd.DataFrame
    truth: pd.Series


class Gated(NamedTuple):
    """Every gate's result, and the flavour the candidate was loaded in (None: it was not)."""

    gates: tuple[GateResult, ...]
    flavor: str | None


@dataclass(frozen=True)
class CandidateGates:
    """Runs every gate on a candidate against its model's spec (blocking calls)."""

    models: ModelRegistry
    loader: CandidateLoader
    policy: GatePolicy

    def run(self, event: ModelTrained, version: str, spec: ModelSpec) -> Gated:
        """The reported metrics' gates, then (when they agree on the task) the behaviour's."""
        reported = evaluate_gates(event.metrics, self.policy, spec)
        if any(gate.name == "task" for gate in failed(reported)):
            return Gated(reported, None)
        scorer, holdout = self._scorer(event.model_uri, spec), self._holdout(event, spec)
        if isinstance(scorer, GateResult) or isinstance(holdout, GateResult):
            missing = [item for item in (scorer, holdout) if isinstance(item, GateResult)]
            return Gated((*reported, *missing), None)
        try:
            behaviour = self._behaviour(event, version, spec, scorer, holdout)
        except UnusableModelError as error:
            behaviour = (GateResult(name="model", passed=False, detail=str(error)),)
        return Gated((*reported, *behaviour), scorer.flavor)

    def _scorer(self, model_uri: str, spec: ModelSpec) -> Scorer | GateResult:
        try:
            return self.loader.load(model_uri, spec)
        except (UnusableModelError, NotFoundError) as error:
            return GateResult(name="model", passed=False, detail=str(error))

    def _holdout(self, event: ModelTrained, spec: ModelSpec) -> Holdout | GateResult:
        try:
            return _checked_holdout(self.loader.holdout(event.run_id), spec)
        except (NotFoundError, InvalidInputError) as error:
            detail = (
                f"{error}. The gates score the model on fresh labelled rows: log them as "
                f"{HOLDOUT_ARTIFACT} in the run (the spec's features and {spec.label!r}), "
                f"or import the model with `flywheel models import {event.model_name} "
                "--model-uri URI --holdout FILE`"
            )
            return GateResult(name="holdout", passed=False, detail=detail)

    def _behaviour(
        self,
        event: ModelTrained,
        version: str,
        spec: ModelSpec,
        scorer: Scorer,
        holdout: Holdout,
    ) -> tuple[GateResult, ...]:
        predict = _predictor(scorer, spec)
        first, second = predict(holdout.x), predict(holdout.x)
        finite = finite_values_gate(first) if spec.is_regression else finite_output_gate(first)
        return (
            schema_gate(self.loader.input_names(event.model_uri), spec.classes, spec),
            finite,
            determinism_gate(first, second),
            latency_gate(self._latencies_ms(predict, holdout.x), self.policy.latency_budget_ms),
            self._non_inferiority(event.model_name, version, spec, first, holdout),
        )

    def _non_inferiority(
        self, name: str, version: str, spec: ModelSpec, candidate: np.ndarray, holdout: Holdout
    ) -> GateResult:
        champion_version = self.models.alias_version(name, CHAMPION)
        if champion_version is None or champion_version == version:
            return no_champion_gate()
        changed = self._task_change(name, champion_version, spec)
        if changed is not None:
            return changed
        try:
            champion = self.loader.load(f"models:/{name}/{champion_version}", spec)
            theirs = _predictor(champion, spec)(holdout.x)
        except (UnusableModelError, NotFoundError) as error:
            detail = f"champion v{champion_version} cannot be scored for the spec: {error}"
            return GateResult(name="non_inferiority", passed=False, detail=detail)
        if spec.is_regression:
            return regression_non_inferiority_gate(
                candidate, theirs, holdout.truth, champion_version, self.policy.regression_margin
            )
        return non_inferiority_gate(
            _correct(candidate, holdout.truth, spec),
            _correct(theirs, holdout.truth, spec),
            champion_version,
            self.policy.non_inferiority_margin,
        )

    def _task_change(self, name: str, champion_version: str, spec: ModelSpec) -> GateResult | None:
        """A failed gate when the champion was gated as another task (the spec's task changed)."""
        versions = {v.version: v for v in self.models.list_versions(name)}
        champion = versions.get(champion_version)
        task = champion.tags.get(TASK_TAG) if champion is not None else None
        if task is None or task == spec.task:
            return None
        detail = (
            f"task changed: champion v{champion_version} is a {task} model, this candidate a "
            f"{spec.task} one; they cannot be compared or share traffic (serve the "
            f"{spec.task} model under a model name of its own)"
        )
        return GateResult(name="non_inferiority", passed=False, detail=detail)

    def _latencies_ms(self, predict: Predict, x: pd.DataFrame) -> list[float]:
        """Per-row best of three single-row timings: the model's cost, not the scheduler's."""
        rows = [x.iloc[[i % len(x)]] for i in range(self.policy.latency_samples)]
        for row in rows[:20]:  # warm caches and lazy imports first
            predict(row)
        return [min(_time_ms(predict, row) for _ in range(3)) for row in rows]


def _checked_holdout(frame: pd.DataFrame, spec: ModelSpec) -> Holdout:
    """The holdout's features and label, or InvalidInputError naming what is missing."""
    missing = [c for c in (*spec.feature_names, spec.label) if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"the holdout lacks the columns {missing}")
    if frame.empty:
        raise InvalidInputError("the holdout has no rows")
    label = frame[spec.label]
    if not spec.is_regression:
        return Holdout(frame[list(spec.feature_names)], label.astype(str))
    values = pd.to_numeric(label, errors="coerce")
    if values.isna().any():
        raise InvalidInputError(f"the holdout's {spec.label!r} is not a number on every row")
    return Holdout(frame[list(spec.feature_names)], values.astype(float))


def _predictor(scorer: Scorer, spec: ModelSpec) -> Predict:
    return scorer.predict_values if spec.is_regression else scorer.predict_proba


def _time_ms(predict: Predict, row: pd.DataFrame) -> float:
    started = time.perf_counter()
    predict(row)
    return (time.perf_counter() - started) * 1000


def _correct(probabilities: np.ndarray, truth: pd.Series, spec: ModelSpec) -> Any:
    """Which holdout rows the probabilities (in ``spec.classes`` order) classify correctly."""
    predicted = np.asarray(spec.classes)[np.argmax(probabilities, axis=1)]
    return predicted == truth.to_numpy()
