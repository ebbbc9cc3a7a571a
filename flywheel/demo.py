"""One turn of the loop, driven from outside as a user would: Kafka events and HTTP calls.

``flywheel demo`` prints each step with its time; the end-to-end test runs the
same steps and asserts on what they return.

On a used stack (the router already has a routing table) the demo starts from
the champion that serves instead of training a first model: a first batch would
become a challenger, and the experiment it opens holds the monitor's drift
alarm that the next step waits for. Its generated data then comes from other
seeds, since the trainer skips content it has seen.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from flywheel.demo_experiment import ExperimentRun, drive_to_verdict, open_experiment, render_report
from flywheel.loop import EventTap, announce, current_routing
from shared.datasets import generate_customers, write_batch
from shared.events import (
    DataArrived,
    DriftDetected,
    ExperimentUpdated,
    ModelApproved,
    ModelTrained,
)
from shared.kafka_security import KafkaConnection, KafkaSecurity

Say = Callable[[str], None]


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

    @property
    def kafka(self) -> KafkaConnection:
        """The broker and how the demo reaches it."""
        return KafkaConnection(self.kafka_bootstrap, self.kafka_security)


@dataclass
class LoopRun:
    """What one turn of the loop produced, for printing and for assertions."""

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
        f"would wait in vain. End it first: `flywheel promote {table.champion_version}` keeps "
        f"the champion, `flywheel promote {table.challenger_version}` promotes the challenger."
    )


def config_for_stack(config: DemoConfig, table: ExperimentUpdated | None) -> DemoConfig:
    """``config`` on a fresh stack; on a used one, seeds no earlier run used."""
    if table is None:
        return config
    version = table.champion_version
    offset = int(version) if version.isdigit() else len(version)
    return replace(config, seed=config.seed + 1000 * offset)


class Steps:
    """Prints numbered steps with the time since the start."""

    def __init__(self, say: Say) -> None:
        self._say = say
        self._started = time.monotonic()
        self._count = 0

    def done(self, text: str) -> None:
        """Report a finished step."""
        self._count += 1
        self._say(f"[{time.monotonic() - self._started:6.1f}s] {self._count:>2}. {text}")


def rows_of(frame: pd.DataFrame, label: str = "segment") -> list[dict[str, Any]]:
    """Feature rows as JSON-ready dicts (without the label)."""
    return [
        {str(k): v for k, v in row.items()}
        for row in frame.drop(columns=[label]).to_dict(orient="records")
    ]


async def send_traffic(
    client: httpx.AsyncClient, rows: list[dict[str, Any]], batch: int = 100
) -> list[dict[str, Any]]:
    """POST ``rows`` to /v1/predict in batches; return the responses."""
    answers = []
    for start in range(0, len(rows), batch):
        response = await client.post("/v1/predict", json={"instances": rows[start : start + batch]})
        response.raise_for_status()
        answers.append(response.json())
    return answers


async def wait_until_serving(
    client: httpx.AsyncClient, version: str, variant: str, within_s: float
) -> None:
    """Poll /v1/models until ``variant`` serves ``version``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        models = (await client.get("/v1/models")).json().get("models", {})
        if models.get(variant, {}).get("version") == version:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the gateway did not load {variant} version {version} in {within_s:.0f} s")


async def run_demo(config: DemoConfig, say: Say = print) -> LoopRun:
    """Drive one turn of the loop: data → champion → traffic → drift → retrained challenger."""
    steps, run = Steps(say), LoopRun()
    table = await current_routing(config.router_url)
    refuse_a_running_experiment(table)
    config = config_for_stack(config, table)
    async with (
        EventTap(config.kafka) as tap,
        httpx.AsyncClient(base_url=config.gateway_url, timeout=30) as client,
    ):
        await first_model(config, tap, client, steps, run, table)
        await _drift_and_retrain(config, tap, client, steps, run)
        if config.router_url is not None:
            run.verdict = await _experiment_to_verdict(config, tap, client, steps)
    return run


async def _experiment_to_verdict(
    config: DemoConfig, tap: EventTap, client: httpx.AsyncClient, steps: Steps
) -> ExperimentRun:
    """New labels under a changed concept, a better challenger, its ramp and verdict."""
    assert config.router_url is not None
    experiment = await open_experiment(
        tap,
        config.kafka,
        config.data_dir,
        config.concept_rows,
        config.seed + 50,
        config.step_timeout_s,
        steps.done,
    )
    await drive_to_verdict(
        experiment,
        tap,
        client,
        seed=config.seed + 100,
        round_size=config.customers_per_round,
        max_rounds=config.max_experiment_rounds,
        done=steps.done,
    )
    reports = config.data_dir.parent / "reports"
    await asyncio.to_thread(render_report, experiment, config.router_url, reports, steps.done)
    return experiment


async def first_model(
    config: DemoConfig,
    tap: EventTap,
    client: httpx.AsyncClient,
    steps: Steps,
    run: LoopRun,
    table: ExperimentUpdated | None,
) -> None:
    """A first champion trained from a new batch, or on a used stack the one that serves."""
    if table is None:
        await _train_first_champion(config, tap, client, steps, run)
    else:
        run.started_from = table
        steps.done(
            f"a used stack: version {table.champion_version} serves as champion "
            f"(experiment-updated: {table.status}); the demo starts from it"
        )
        await wait_until_serving(client, table.champion_version, "champion", config.step_timeout_s)
    await _normal_traffic(config, client, steps, run)


async def _train_first_champion(
    config: DemoConfig, tap: EventTap, client: httpx.AsyncClient, steps: Steps, run: LoopRun
) -> None:
    frame = generate_customers(config.training_rows, config.seed)
    path = config.data_dir / f"demo-{uuid.uuid4().hex[:8]}.parquet"
    ref = await asyncio.to_thread(write_batch, frame, path)
    run.announced = await announce(config.kafka, ref)
    steps.done(f"data-arrived: {ref.rows} rows at {ref.uri} (sha256 {ref.sha256[:12]}…)")
    turn, wait = run.announced.correlation_id, config.step_timeout_s
    run.first_trained = await tap.wait_for(ModelTrained, lambda e: e.correlation_id == turn, wait)
    steps.done(
        f"model-trained: run {run.first_trained.run_id[:8]}, "
        f"accuracy {run.first_trained.metrics.accuracy:.3f}"
    )
    run.champion = await tap.wait_for(ModelApproved, lambda e: e.correlation_id == turn, wait)
    steps.done(f"model-approved: version {run.champion.version} is {run.champion.alias}")
    run.first_experiment = await tap.wait_for(
        ExperimentUpdated, lambda e: e.correlation_id == turn, wait
    )
    steps.done(f"experiment-updated: {run.first_experiment.status}")
    await wait_until_serving(client, run.champion.version, run.champion.alias, wait)


async def _normal_traffic(
    config: DemoConfig, client: httpx.AsyncClient, steps: Steps, run: LoopRun
) -> None:
    normal = rows_of(generate_customers(config.normal_requests, config.seed + 1))
    answers = await send_traffic(client, normal)
    run.first_prediction = answers[0]
    first = answers[0]["predictions"][0]
    steps.done(
        f"POST /v1/predict x{len(normal)}: first row → {first['predicted_class']} "
        f"({first['confidence']:.2f}) by version {answers[0]['model_version']}"
    )


async def _shift_until_drift(
    config: DemoConfig, tap: EventTap, client: httpx.AsyncClient, steps: Steps
) -> DriftDetected:
    """Send shifted traffic until the monitor reports drift.

    One round is usually enough; on a stack that already reported drift the
    monitor is in its cool-down, and the alarm comes once that has passed.
    """
    for round_ in range(config.max_shift_rounds):
        frame = generate_customers(
            config.shifted_requests,
            config.seed + 2 + round_,
            covariate_shift=config.covariate_shift,
        )
        await send_traffic(client, rows_of(frame))
        note = " (more: the monitor is cooling down after an earlier alarm)" if round_ else ""
        steps.done(f"POST /v1/predict x{len(frame)} with spend and visits shifted{note}")
        last = round_ == config.max_shift_rounds - 1
        try:
            return await tap.wait_for(
                DriftDetected, within_s=config.step_timeout_s if last else 10.0
            )
        except TimeoutError:
            if last:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _drift_and_retrain(
    config: DemoConfig, tap: EventTap, client: httpx.AsyncClient, steps: Steps, run: LoopRun
) -> None:
    wait = config.step_timeout_s
    run.drift = await _shift_until_drift(config, tap, client, steps)
    drifted = ", ".join(f.feature for f in run.drift.features if f.drifted)
    steps.done(f"drift-detected: {drifted} (reference version {run.drift.reference_version})")
    turn = run.drift.correlation_id
    run.retrained = await tap.wait_for(ModelTrained, lambda e: e.correlation_id == turn, wait)
    steps.done(f"model-trained (trigger {run.retrained.trigger}) in the drift's turn {turn[:8]}")
    run.challenger = await tap.wait_for(ModelApproved, lambda e: e.correlation_id == turn, wait)
    steps.done(f"model-approved: version {run.challenger.version} is {run.challenger.alias}")
    run.experiment = await tap.wait_for(
        ExperimentUpdated, lambda e: e.correlation_id == turn and e.status == "running", wait
    )
    steps.done(
        f"experiment-updated: {run.experiment.status}, challenger "
        f"{run.experiment.challenger_version} gets {run.experiment.challenger_share:.0%}"
    )
    chain = " ← ".join(e.type_name() for e in tap.chain(run.experiment))
    steps.done(f"causation chain: {chain}")
