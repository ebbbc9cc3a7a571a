"""Turns of the loop, one per model, driven from outside as a user would: Kafka events and HTTP.

``flywheel demo`` registers the demo's models (customer-segment and card-fraud)
and runs one loop per model side by side, each line prefixed with its model;
the end-to-end tests run the same steps and assert on what they return.

On a used stack (the router already has a routing table for the model) a loop
starts from the champion that serves instead of training a first model: a first
batch would become a challenger, and the experiment it opens holds the
monitor's drift alarm that the next step waits for. Its generated data then
comes from other seeds, since the trainer skips content it has seen.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pandas as pd

from flywheel.demo_experiment import (
    ExperimentRun,
    approval_in_turn,
    drive_to_verdict,
    open_experiment,
    render_report,
    scores,
)
from flywheel.demo_models import DemoModel
from flywheel.gateway_client import ModelGateway
from flywheel.loop import EventTap, announce, current_routing
from shared.datasets import write_batch
from shared.events import (
    DataArrived,
    DriftDetected,
    Event,
    ExperimentUpdated,
    ModelApproved,
    ModelTrained,
)
from shared.kafka_security import KafkaConnection, KafkaSecurity
from shared.spec import ModelSpec

Say = Callable[[str], None]
E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class DemoConfig:
    """Where the stack is and how much traffic to send."""

    kafka_bootstrap: str
    gateway_url: str
    data_dir: Path
    training_rows: int = 4000
    normal_requests: int = 200
    shifted_requests: int = 1200
    covariate_shift: float = 2.0
    seed: int = 7
    step_timeout_s: float = 180.0
    max_shift_rounds: int = 12
    #: Router base URL: when set, the demo goes on to an experiment's verdict and its report.
    router_url: str | None = None
    concept_rows: int = 3000
    customers_per_round: int = 200
    max_experiment_rounds: int = 60
    #: How the demo authenticates to Kafka (the operator's credentials on the local stack).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: Registry base URL and admin token: when set, the demo registers its models first.
    registry_url: str | None = None
    admin_token: str | None = None

    def concept_batch_rows(self, spec: ModelSpec) -> int:
        """Rows of the batch labelled under the changed concept, for a model of ``spec``.

        The trainer fits the challenger on its window, the first batch and this one
        together, and nothing in the features tells the two concepts apart, so a
        regressor learns their mix. The registry gates it on its own holdout, on MAE as
        well as RMSE: the champion's MAE is small on the old rows, and the mix only
        beats it there when the new rows outnumber the old (here 3 to 2).

        >>> from flywheel.demo_models import customer_value_model, demo_models
        >>> config = DemoConfig("kafka:9092", "http://gateway", Path("data"), training_rows=3000)
        >>> config.concept_batch_rows(customer_value_model().spec)
        4500
        >>> config.concept_batch_rows(demo_models()[1].spec)
        3000
        """
        if spec.is_regression:
            return max(self.concept_rows, 3 * self.training_rows // 2)
        return self.concept_rows

    @property
    def kafka(self) -> KafkaConnection:
        """The broker and how the demo reaches it."""
        return KafkaConnection(self.kafka_bootstrap, self.kafka_security)


@dataclass
class LoopRun:
    """What one turn of one model's loop produced, for printing and for assertions."""

    model: str = ""
    announced: DataArrived | None = None
    first_trained: ModelTrained | None = None
    champion: ModelApproved | None = None
    first_experiment: ExperimentUpdated | None = None
    first_prediction: dict[str, Any] = field(default_factory=dict)
    drift: DriftDetected | None = None
    retrained: ModelTrained | None = None
    challenger: ModelApproved | None = None
    experiment: ExperimentUpdated | None = None
    verdict: ExperimentRun | None = None
    #: On a used stack: the routing table the demo found and started from.
    started_from: ExperimentUpdated | None = None


class ExperimentStillRunningError(RuntimeError):
    """An experiment from an earlier run still runs: the drift step could never succeed."""


def refuse_a_running_experiment(table: ExperimentUpdated | None) -> None:
    """Stop at once, saying what to do, when ``table`` is a running experiment."""
    if table is None or table.status != "running":
        return
    raise ExperimentStillRunningError(
        f"experiment {table.experiment_id[:8]} (challenger {table.challenger_version} against "
        f"champion {table.champion_version}) is still running from an earlier run, and the "
        "monitor holds drift alarms while an experiment runs, so the demo's drift step "
        f"would wait in vain. End it first: `flywheel promote {table.model_name} "
        f"{table.champion_version}` keeps the champion, `flywheel promote {table.model_name} "
        f"{table.challenger_version}` promotes the challenger."
    )


def config_for_stack(config: DemoConfig, table: ExperimentUpdated | None) -> DemoConfig:
    """``config`` on a fresh stack; on a used one, seeds no earlier run used."""
    if table is None:
        return config
    version = table.champion_version
    offset = int(version) if version.isdigit() else len(version)
    return replace(config, seed=config.seed + 1000 * offset)


class Steps:
    """Prints numbered steps with the time since the start, each line under its model."""

    def __init__(self, say: Say, model: str = "") -> None:
        self._say = say
        self._prefix = f"[{model}] " if model else ""
        self._started = time.monotonic()
        self._count = 0

    def done(self, text: str) -> None:
        """Report a finished step."""
        self._count += 1
        elapsed = time.monotonic() - self._started
        self._say(f"[{elapsed:6.1f}s] {self._prefix}{self._count:>2}. {text}")


def rows_of(frame: pd.DataFrame, label: str) -> list[dict[str, Any]]:
    """Feature rows as JSON-ready dicts (without the label)."""
    return [
        {str(k): v for k, v in row.items()}
        for row in frame.drop(columns=[label]).to_dict(orient="records")
    ]


async def register_models(config: DemoConfig, models: Sequence[DemoModel], say: Say) -> None:
    """Register each model with its spec (the registry answers 200 for one it already has)."""
    if config.registry_url is None:
        return
    headers = {"Authorization": f"Bearer {config.admin_token}"} if config.admin_token else {}
    async with httpx.AsyncClient(base_url=config.registry_url, timeout=60) as client:
        for model in models:
            body = {
                "name": model.name,
                "spec": model.spec.model_dump(mode="json"),
                "requested_by": "flywheel demo",
            }
            response = await client.post("/v1/models", json=body, headers=headers)
            response.raise_for_status()
            revision = response.json().get("spec_revision")
            say(
                f"[{model.name}] registered: {len(model.spec.features)} features, "
                f"{predicts(model)} (spec revision {revision})"
            )


def predicts(model: DemoModel) -> str:
    """What ``model`` predicts, in words.

    >>> from flywheel.demo_models import customer_value_model, demo_models
    >>> predicts(demo_models()[1]), predicts(customer_value_model())
    ('classes legit, fraud', 'a value (annual_value, squared loss)')
    """
    spec = model.spec
    if spec.is_regression:
        return f"a value ({spec.label}, {spec.loss} loss)"
    return f"classes {', '.join(spec.classes)}"


async def run_demos(
    config: DemoConfig, models: Sequence[DemoModel], say: Say = print
) -> list[LoopRun]:
    """Register ``models`` and run one loop per model, side by side."""
    await register_models(config, models, say)
    async with (
        EventTap(config.kafka) as tap,
        httpx.AsyncClient(base_url=config.gateway_url, timeout=30) as client,
    ):
        loops = (_one_loop(config, model, tap, client, say) for model in models)
        return list(await asyncio.gather(*loops))


async def run_demo(config: DemoConfig, model: DemoModel, say: Say = print) -> LoopRun:
    """One model's turn of the loop: data → champion → traffic → drift → challenger → verdict."""
    return (await run_demos(config, [model], say))[0]


@dataclass
class ModelLoop:
    """One model's turn of the loop: what its steps share, and what they produced."""

    config: DemoConfig
    model: DemoModel
    tap: EventTap
    gateway: ModelGateway
    steps: Steps
    run: LoopRun

    @property
    def wait(self) -> float:
        """How long one step may wait for its event."""
        return self.config.step_timeout_s

    def rows(self, count: int, seed: int, shift: float = 0.0) -> list[dict[str, Any]]:
        """``count`` generated feature rows of this model."""
        frame = self.model.generate(count, seed, shift, False)
        return rows_of(frame, self.model.spec.label)


async def _one_loop(
    config: DemoConfig, model: DemoModel, tap: EventTap, client: httpx.AsyncClient, say: Say
) -> LoopRun:
    table = await current_routing(config.router_url, model.name)
    refuse_a_running_experiment(table)
    loop = ModelLoop(
        config_for_stack(config, table),
        model,
        tap,
        ModelGateway(client, model.name),
        Steps(say, model.name),
        LoopRun(model=model.name),
    )
    await first_model(loop, table)
    await _drift_and_retrain(loop)
    if config.router_url is not None:
        loop.run.verdict = await _experiment_to_verdict(loop)
    return loop.run


async def _experiment_to_verdict(loop: ModelLoop) -> ExperimentRun:
    """New labels under a changed concept, a better challenger, its ramp and verdict."""
    config = loop.config
    assert config.router_url is not None
    experiment = await open_experiment(
        loop.tap,
        config.kafka,
        loop.model,
        config.data_dir,
        config.concept_batch_rows(loop.model.spec),
        config.seed + 50,
        loop.wait,
        loop.steps.done,
    )
    await drive_to_verdict(
        experiment,
        loop.tap,
        loop.gateway,
        loop.model,
        seed=config.seed + 100,
        round_size=config.customers_per_round,
        max_rounds=config.max_experiment_rounds,
        done=loop.steps.done,
    )
    reports = config.data_dir.parent / "reports"
    await asyncio.to_thread(render_report, experiment, config.router_url, reports, loop.steps.done)
    return experiment


async def first_model(loop: ModelLoop, table: ExperimentUpdated | None) -> None:
    """A first champion trained from a new batch, or on a used stack the one that serves."""
    if table is None:
        await _train_first_champion(loop)
    else:
        loop.run.started_from = table
        loop.steps.done(
            f"a used stack: version {table.champion_version} serves as champion "
            f"(experiment-updated: {table.status}); the demo starts from it"
        )
        await loop.gateway.wait_until_serving(table.champion_version, "champion", loop.wait)
    await _normal_traffic(loop)


async def _train_first_champion(loop: ModelLoop) -> None:
    config, model, run, done = loop.config, loop.model, loop.run, loop.steps.done
    frame = model.generate(config.training_rows, config.seed, 0.0, False)
    path = config.data_dir / f"demo-{model.name}-{uuid.uuid4().hex[:8]}.parquet"
    ref = await asyncio.to_thread(write_batch, frame, path)
    run.announced = await announce(config.kafka, ref, model_name=model.name)
    done(f"data-arrived: {ref.rows} rows at {ref.uri} (sha256 {ref.sha256[:12]}…)")
    turn = run.announced.correlation_id
    run.first_trained = await _in_turn(loop, ModelTrained, turn)
    done(f"model-trained: run {run.first_trained.run_id[:8]}, {scores(run.first_trained.metrics)}")
    run.champion = await approval_in_turn(loop.tap, turn, loop.wait)
    done(f"model-approved: version {run.champion.version} is {run.champion.alias}")
    run.first_experiment = await _in_turn(loop, ExperimentUpdated, turn)
    done(f"experiment-updated: {run.first_experiment.status}")
    await loop.gateway.wait_until_serving(run.champion.version, run.champion.alias, loop.wait)


async def _in_turn(loop: ModelLoop, event_type: type[E], turn: str) -> E:
    """The first ``event_type`` of the turn of the loop ``turn`` (a correlation id)."""
    return await loop.tap.wait_for(event_type, lambda e: e.correlation_id == turn, loop.wait)


async def _normal_traffic(loop: ModelLoop) -> None:
    normal = loop.rows(loop.config.normal_requests, loop.config.seed + 1)
    answers = await loop.gateway.predict(normal)
    loop.run.first_prediction = answers[0]
    loop.steps.done(
        f"POST /v1/models/{loop.model.name}/predict x{len(normal)}: first row → "
        f"{answered(answers[0]['predictions'][0])} by version {answers[0]['model_version']}"
    )


def answered(row: dict[str, Any]) -> str:
    """One answered row: a regressor's value, or a classifier's class and confidence.

    >>> answered({"value": 1234.567}), answered({"predicted_class": "fraud", "confidence": 0.91})
    ('1234.57', 'fraud (0.91)')
    """
    if "value" in row:
        return f"{row['value']:.2f}"
    return f"{row['predicted_class']} ({row['confidence']:.2f})"


async def _shift_until_drift(loop: ModelLoop) -> DriftDetected:
    """Send shifted traffic until the monitor reports drift for this model.

    One round is usually enough; on a stack that already reported drift the
    monitor is in its cool-down, and the alarm comes once that has passed.
    """
    config, name = loop.config, loop.model.name
    for round_ in range(config.max_shift_rounds):
        rows = loop.rows(config.shifted_requests, config.seed + 2 + round_, config.covariate_shift)
        await loop.gateway.predict(rows)
        note = " (more: the monitor is cooling down after an earlier alarm)" if round_ else ""
        loop.steps.done(f"POST /v1/models/{name}/predict x{len(rows)}, inputs shifted{note}")
        last = round_ == config.max_shift_rounds - 1
        try:
            return await loop.tap.wait_for(
                DriftDetected,
                lambda e: e.model_name == name,
                within_s=loop.wait if last else 10.0,
            )
        except TimeoutError:
            if last:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _drift_and_retrain(loop: ModelLoop) -> None:
    run, done = loop.run, loop.steps.done
    run.drift = await _shift_until_drift(loop)
    drifted = ", ".join(f.feature for f in run.drift.features if f.drifted)
    done(f"drift-detected: {drifted} (reference version {run.drift.reference_version})")
    turn = run.drift.correlation_id
    run.retrained = await _in_turn(loop, ModelTrained, turn)
    done(f"model-trained (trigger {run.retrained.trigger}) in the drift's turn {turn[:8]}")
    run.challenger = await approval_in_turn(loop.tap, turn, loop.wait)
    done(f"model-approved: version {run.challenger.version} is {run.challenger.alias}")
    run.experiment = await loop.tap.wait_for(
        ExperimentUpdated, lambda e: e.correlation_id == turn and e.status == "running", loop.wait
    )
    done(
        f"experiment-updated: {run.experiment.status}, challenger "
        f"{run.experiment.challenger_version} gets {run.experiment.challenger_share:.0%}"
    )
    chain = " ← ".join(e.type_name() for e in loop.tap.chain(run.experiment))
    done(f"causation chain: {chain}")
