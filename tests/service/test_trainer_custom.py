"""A model whose spec names the team's own trainer, through the trainer's handlers.

Same in-memory broker and fakes as test_trainer_handlers; the trainers the specs
name are functions of this module.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from test_trainer_handlers import MODEL, Harness, _batch, _drift, _harness, _send

from services.trainer.core import build_pipeline
from shared.events import DataArrived, ModelRegistered, RetrainModel
from shared.spec import ModelSpec, load_spec

TEAM = "team-segment"
"""A model registered with a spec naming a trainer."""


def raising(train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec) -> Pipeline:
    raise ValueError("learning rate must be positive")


def logistic(
    train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec
) -> tuple[Pipeline, dict[str, float]]:
    pipeline = build_pipeline(spec, LogisticRegression(max_iter=500))
    pipeline.fit(train[list(spec.feature_names)], train[spec.label])
    return pipeline, {"team_score": 0.5}


async def _register(h: Harness, trainer: str) -> None:
    spec = load_spec().model_copy(update={"name": TEAM, "trainer": trainer})
    event = ModelRegistered(producer="registry", model_name=TEAM, spec_revision=1, spec=spec)
    await _send(h.broker, event)


async def test_a_raising_trainer_is_rejected_with_its_error(tmp_path: Path) -> None:
    h = _harness()
    await _register(h, f"{__name__}:raising")
    arrived = DataArrived(producer="t", model_name=TEAM, dataset=_batch(tmp_path, 1))
    await _send(h.broker, arrived)
    assert await h.after_window(TEAM)

    [rejected] = h.rejected(TEAM)
    assert rejected.causation_id == arrived.event_id
    assert rejected.producer == "trainer"
    [reason] = rejected.reasons
    assert reason.name == "trainer"
    assert reason.detail == (
        f"{__name__}:raising raised ValueError: learning rate must be positive"
    )
    assert h.trained(TEAM) == []
    assert h.store.logged == []
    assert h.count("flywheel_trainer_trainings_total", TEAM, trigger="data", outcome="failed") == 1
    assert h.pending.items[TEAM] == []  # rejected, not retried: the arrival is answered


async def test_a_trainer_that_is_not_installed_is_rejected_naming_the_installed_ones(
    tmp_path: Path,
) -> None:
    h = _harness()
    await _register(h, "catboost")
    await h.history.record(TEAM, _batch(tmp_path, 1))
    drift = _drift(TEAM)
    await _send(h.broker, drift)

    [rejected] = h.rejected(TEAM)
    assert rejected.causation_id == drift.event_id
    [reason] = rejected.reasons
    assert reason.name == "trainer"
    assert "no entry point of that name in group flywheel.trainers" in reason.detail
    assert "lightgbm" in reason.detail
    assert h.count("flywheel_trainer_trainings_total", TEAM, trigger="drift", outcome="failed") == 1


async def test_a_custom_trainer_trains_on_drift_and_on_request(tmp_path: Path) -> None:
    h = _harness()
    await _register(h, f"{__name__}:logistic")
    await h.history.record(TEAM, _batch(tmp_path, 1))
    drift = _drift(TEAM)
    command = RetrainModel(producer="cli", model_name=TEAM, reason="new code")
    await _send(h.broker, drift, command)

    by_drift, by_command = h.trained(TEAM)
    assert (by_drift.causation_id, by_drift.trigger) == (drift.event_id, "drift")
    assert (by_command.causation_id, by_command.trigger) == (command.event_id, "manual")
    assert by_drift.algorithm == f"custom:{__name__}:logistic"
    assert by_drift.metrics.validation_rows == 120  # measured by Flywheel on its split
    assert (by_drift.metrics.model_extra or {})["team_score"] == 0.5
    logged, context = h.store.logged[0]
    assert logged.algorithm == by_drift.algorithm
    assert context.event_id == drift.event_id
    assert h.rejected() == []


async def test_a_model_without_a_trainer_beside_it_keeps_flywheels_candidates(
    tmp_path: Path,
) -> None:
    h = _harness()
    await _register(h, f"{__name__}:raising")
    await h.history.record(MODEL, _batch(tmp_path, 1))
    await h.history.record(TEAM, _batch(tmp_path, 2))
    await _send(h.broker, _drift(MODEL), _drift(TEAM))

    [trained] = h.trained()
    assert (trained.model_name, trained.algorithm) == (MODEL, "logistic_regression")
    assert [r.model_name for r in h.rejected()] == [TEAM]
