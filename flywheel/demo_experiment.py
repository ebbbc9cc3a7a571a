"""The demo's last act: labels under a changed concept → a better challenger → ramp → verdict.

Customers keep coming (one row per customer, so each stays on one variant) and
their true segments come back as feedback. The router ramps the challenger's
share stage by stage and decides with always-valid statistics; the demo only
drives traffic and prints what the router publishes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from flywheel.loop import EventTap, announce
from flywheel.report import fetch_report, write_report
from shared.datasets import generate_customers, write_batch
from shared.events import (
    Event,
    ExperimentUpdated,
    ModelApproved,
    ModelPromoted,
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


async def _predict_and_label(
    client: httpx.AsyncClient, row: dict[str, Any], label: str, entity: str
) -> None:
    answer = await client.post("/v1/predict", json={"features": row, "entity_id": entity})
    answer.raise_for_status()
    feedback = {"request_id": answer.json()["request_id"], "true_label": label}
    for _ in range(10):  # another replica may not have stored the prediction's record yet
        response = await client.post("/v1/feedback", json=feedback)
        if response.status_code != 404:
            break
        await asyncio.sleep(0.2)
    response.raise_for_status()


async def _customers(
    client: httpx.AsyncClient, frame: pd.DataFrame, prefix: str, parallel: int = 16
) -> None:
    """One request per customer, then its true segment as feedback."""
    gate = asyncio.Semaphore(parallel)
    labels = frame["segment"].astype(str).tolist()
    rows = frame.drop(columns=["segment"]).to_dict(orient="records")

    async def one(i: int) -> None:
        async with gate:
            row = {str(k): v for k, v in rows[i].items()}
            await _predict_and_label(client, row, labels[i], f"{prefix}-{i}")

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
    data_dir: Path,
    rows: int,
    seed: int,
    wait: float,
    done: Done,
) -> ExperimentRun:
    """Announce labelled data under a changed concept and wait for its experiment to open."""
    run = ExperimentRun()
    frame = generate_customers(rows, seed, concept_drift=True)
    ref = await asyncio.to_thread(
        write_batch, frame, data_dir / f"demo-concept-{uuid.uuid4().hex[:8]}.parquet"
    )
    event = await announce(kafka, ref)
    turn = event.correlation_id
    done(f"data-arrived: {ref.rows} labelled rows after the concept changed [{turn[:8]}]")
    run.trained = await tap.wait_for(ModelTrained, lambda e: e.correlation_id == turn, wait)
    done(f"model-trained: accuracy {run.trained.metrics.accuracy:.3f} [{turn[:8]}]")
    run.challenger = await tap.wait_for(ModelApproved, lambda e: e.correlation_id == turn, wait)
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
    client: httpx.AsyncClient,
    *,
    seed: int,
    round_size: int,
    max_rounds: int,
    done: Done,
) -> ExperimentRun:
    """Send customers and their feedback round by round until the router decides."""
    assert run.opened is not None
    model = run.opened.model_name
    ids = {run.opened.experiment_id}
    seen: set[str] = set()
    for round_ in range(max_rounds):
        frame = generate_customers(round_size, seed + round_, concept_drift=True)
        await _customers(client, frame, f"customer-{seed}-{round_}")
        run.requests += round_size
        await asyncio.sleep(1.0)  # let the router count the round's outcomes
        for event in [e for e in tap.events if _mine(model, ids)(e)]:
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
