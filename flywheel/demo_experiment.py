"""The demo's last act: labels under a changed concept → a better challenger → ramp → verdict.

Customers keep coming (one row per customer, so each stays on one variant) and
their true labels (a regressor's true values) come back as feedback. The router
ramps the challenger's share stage by stage and decides with always-valid
statistics (a regressor's by its loss); the demo only drives traffic and prints
what the router publishes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flywheel.demo_models import DemoModel
from flywheel.gateway_client import ModelGateway
from flywheel.loop import EventTap, announce
from flywheel.report import fetch_report, write_report
from shared.datasets import write_batch
from shared.events import (
    Event,
    ExperimentUpdated,
    ModelApproved,
    ModelMetrics,
    ModelPromoted,
    ModelRejected,
    ModelRolledBack,
    ModelTrained,
)
from shared.kafka_security import KafkaConnection

Done = Callable[[str], None]


@dataclass
class ExperimentRun:
    """What the experiment act produced."""

    trained: ModelTrained | None = None
    challenger: ModelApproved | None = None
    opened: ExperimentUpdated | None = None
    updates: list[ExperimentUpdated] = field(default_factory=list)
    verdict: ModelPromoted | ModelRolledBack | None = None
    requests: int = 0
    report_path: Path | None = None


class CandidateRejectedError(RuntimeError):
    """The registry rejected the model the step waited to see approved."""


async def approval_in_turn(tap: EventTap, turn: str, wait: float) -> ModelApproved:
    """The approval in the turn of the loop ``turn``; its rejection raises at once.

    A rejected candidate would leave the step waiting for an approval that never
    comes: the error names the gates that failed instead.
    """

    def verdict(event: Event) -> bool:
        return event.correlation_id == turn and isinstance(event, ModelApproved | ModelRejected)

    event = await tap.wait_for(Event, verdict, wait)
    if isinstance(event, ModelRejected):
        failed = "; ".join(f"{r.name}: {r.detail}" for r in event.reasons if not r.passed)
        raise CandidateRejectedError(
            f"{event.model_name} version {event.version} was rejected: {failed or event.reasons}"
        )
    assert isinstance(event, ModelApproved)
    return event


def scores(metrics: ModelMetrics) -> str:
    """A trained model's headline validation metrics, for its task.

    >>> scores(ModelMetrics(accuracy=0.91, macro_f1=0.9, validation_rows=10))
    'accuracy 0.910'
    >>> scores(ModelMetrics(rmse=61.04, mae=48.5, r2=0.97, validation_rows=10))
    'rmse 61.0, mae 48.5'
    """
    if metrics.is_regression:
        return f"rmse {metrics.rmse:.1f}, mae {metrics.mae:.1f}"
    return f"accuracy {metrics.accuracy:.3f}"


async def _customers(
    gateway: ModelGateway, frame: pd.DataFrame, model: DemoModel, prefix: str, parallel: int = 16
) -> None:
    """One request per customer, then its true label (or value) as feedback."""
    gate = asyncio.Semaphore(parallel)
    label = model.spec.label
    regression = model.spec.is_regression
    truths = frame[label].astype(float if regression else str).tolist()
    rows = frame.drop(columns=[label]).to_dict(orient="records")

    async def one(i: int) -> None:
        async with gate:
            row = {str(k): v for k, v in rows[i].items()}
            answer = await gateway.predict_one(row, f"{prefix}-{i}")
            if regression:
                await gateway.feedback_value(answer["request_id"], truths[i])
            else:
                await gateway.feedback(answer["request_id"], truths[i])

    await asyncio.gather(*(one(i) for i in range(len(rows))))


def _mine(model_name: str, experiment_ids: set[str]) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        if isinstance(event, ExperimentUpdated):
            return event.experiment_id in experiment_ids
        if isinstance(event, ModelPromoted | ModelRolledBack):
            return event.model_name == model_name
        return False

    return match


async def open_experiment(
    tap: EventTap,
    kafka: KafkaConnection | str,
    model: DemoModel,
    data_dir: Path,
    rows: int,
    seed: int,
    wait: float,
    done: Done,
) -> ExperimentRun:
    """Announce labelled data under a changed concept and wait for its experiment to open."""
    run = ExperimentRun()
    frame = model.generate(rows, seed, 0.0, True)
    path = data_dir / f"demo-{model.name}-concept-{uuid.uuid4().hex[:8]}.parquet"
    ref = await asyncio.to_thread(write_batch, frame, path)
    event = await announce(kafka, ref, model_name=model.name)
    turn = event.correlation_id
    done(f"data-arrived: {ref.rows} labelled rows after the concept changed [{turn[:8]}]")
    run.trained = await tap.wait_for(ModelTrained, lambda e: e.correlation_id == turn, wait)
    done(f"model-trained: {scores(run.trained.metrics)} [{turn[:8]}]")
    run.challenger = await approval_in_turn(tap, turn, wait)
    done(f"model-approved: version {run.challenger.version} is {run.challenger.alias}")
    run.opened = await tap.wait_for(
        ExperimentUpdated, lambda e: e.correlation_id == turn and e.status == "running", wait
    )
    done(
        f"experiment-updated: {run.opened.experiment_id[:8]} opens, challenger "
        f"{run.opened.challenger_version} gets {run.opened.challenger_share:.0%} [{turn[:8]}]"
    )
    return run


async def drive_to_verdict(
    run: ExperimentRun,
    tap: EventTap,
    gateway: ModelGateway,
    model: DemoModel,
    *,
    seed: int,
    round_size: int,
    max_rounds: int,
    done: Done,
) -> ExperimentRun:
    """Send customers and their feedback round by round until the router decides."""
    assert run.opened is not None
    ids = {run.opened.experiment_id}
    seen: set[str] = set()
    for round_ in range(max_rounds):
        frame = model.generate(round_size, seed + round_, 0.0, True)
        await _customers(gateway, frame, model, f"{model.name}-{seed}-{round_}")
        run.requests += round_size
        await asyncio.sleep(1.0)  # let the router count the round's outcomes
        for event in [e for e in tap.events if _mine(model.name, ids)(e)]:
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
            _report_event(run, event, done)
            if isinstance(event, ExperimentUpdated) and event.status == "superseded":
                ids |= _successors(tap, event)
        if run.verdict is not None:
            return run
    raise TimeoutError(f"no verdict after {run.requests} customers")


def _successors(tap: EventTap, superseded: ExperimentUpdated) -> set[str]:
    # A newer challenger (e.g. retrained on concept drift) replaces the experiment: follow it.
    return {
        e.experiment_id
        for e in tap.events
        if isinstance(e, ExperimentUpdated)
        and e.model_name == superseded.model_name
        and e.occurred_at >= superseded.occurred_at
    }


def _report_event(run: ExperimentRun, event: Event, done: Done) -> None:
    turn = f"[{event.correlation_id[:8]}]"
    if isinstance(event, ExperimentUpdated):
        run.updates.append(event)
        looked = f"{event.decision}: {event.reason}" if event.decision else "no look yet"
        held = f", held: {event.hold_cause}" if event.hold_cause else ""
        done(
            f"experiment-updated: {event.status}, challenger {event.challenger_version} at "
            f"{event.challenger_share:.0%} (stage {event.stage}, {looked}{held}) "
            f"after {run.requests} customers {turn}"
        )
    elif isinstance(event, ModelPromoted):
        run.verdict = event
        done(f"model-promoted: version {event.version} is champion ({event.reason}) {turn}")
    elif isinstance(event, ModelRolledBack):
        run.verdict = event
        done(f"model-rolled-back: {event.rolled_back_version} dropped ({event.reason}) {turn}")


def render_report(run: ExperimentRun, router_url: str, out_dir: Path, done: Done) -> Path:
    """Fetch the concluded experiment's report from the router and render it with its plot."""
    last = run.updates[-1] if run.updates else run.opened
    assert last is not None
    report = fetch_report(router_url, last.experiment_id)
    run.report_path = write_report(report, out_dir, "md")
    done(
        f"A/B report: {run.report_path} (plot {run.report_path.with_suffix('.png').name}); "
        f"again with: flywheel report ab {last.experiment_id} --router-url {router_url}"
    )
    return run.report_path
