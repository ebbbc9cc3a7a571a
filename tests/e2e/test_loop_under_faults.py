"""Kill -9 of each service in turn during an experiment: one verdict, no lost feedback.

Named to run after test_loop.py, on the infrastructure that module has warmed: started
first on a freshly installed machine, five cold service starts saturated the two cores
(load ~50), the broker timed out requests, and the monitor restarted after its kill was
not ready within 120 s (its consumer group still rebalancing).

The five services run as processes on a real Kafka, Redis and MLflow. A champion
is trained, a better challenger opens an experiment, and customers with their
feedback keep coming while each service in turn is SIGKILLed (its whole process
group, no shutdown hook) and started again. The client retries what a dead
gateway could not answer and remembers every feedback the gateway accepted.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from flywheel.demo import Steps
from flywheel.demo_experiment import open_experiment
from flywheel.demo_models import DemoModel, demo_models
from flywheel.gateway_client import ModelGateway
from flywheel.infra import Endpoints
from flywheel.infra.processes import port_bindable, port_open
from flywheel.infra.stack import SERVICES, crash_service, start_services, stop_services
from flywheel.loop import EventTap, announce
from shared.datasets import generate_customers, write_batch
from shared.events import (
    ExperimentUpdated,
    FeedbackReceived,
    ModelApproved,
    ModelPromoted,
    ModelRolledBack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

#: The router last: once it is back, the verdict must still come from the same experiment.
KILL_ORDER = ("trainer", "registry", "monitor", "gateway", "router")
ROUTER_ENV = {
    # The first stage needs 300 customers: the five kills, at 40 customers each, all fall in it.
    "ROUTER_RAMP_SHARES": "[0.1, 0.5]",
    "ROUTER_STAGE_MIN_LABELLED": "30",
    "ROUTER_LOOK_EVERY": "20",
    "ROUTER_MIN_LABELLED_PER_ARM": "60",
    "ROUTER_MIN_CORRECT_PER_ARM": "10",
    "ROUTER_MIN_WRONG_PER_ARM": "10",
    "ROUTER_N_STAR": "600",
    "ROUTER_OUTCOME_WINDOW_S": "5",
    "ROUTER_OUTCOME_GRACE_S": "2",
    "ROUTER_LOOK_INTERVAL_S": "1",
    # A restarting service's CPU on a 2-core box must not look like the challenger's latency.
    "ROUTER_LATENCY_SLOWDOWN": "5.0",
}
KILL_ROUND, ROUND, MAX_ROUNDS = 40, 100, 20
#: How long a customer's call may keep failing (a service restarts in well under this).
RETRY_S = 90.0
#: Failures that mean "the gateway is down or restarting": retry them.
DOWN = (httpx.TransportError,)
RETRY_STATUS = {502, 503, 504}


def _free_ports() -> dict[str, int]:
    """Free ports below the ephemeral range (32768 up on Linux).

    A killed service's port must stay free until it restarts: an ephemeral one
    can be taken meanwhile by any process's outgoing connection.
    """
    rng, ports = random.Random(), dict[str, int]()
    while len(ports) < len(SERVICES):
        port = rng.randrange(20000, 32000)
        if port not in ports.values() and port_bindable(port) and not port_open(port):
            ports[SERVICES[len(ports)]] = port
    return ports


@dataclass
class Stack:
    """The running services, and how to start one again."""

    infra: Endpoints
    ports: dict[str, int]
    urls: dict[str, str]

    async def crash_and_restart(self, name: str) -> None:
        """SIGKILL ``name``'s process group, then start it again and wait until it is ready."""
        port = self.ports[name]
        assert await asyncio.to_thread(crash_service, self.infra.run_dir, name, port), name
        await asyncio.to_thread(
            # A restarted consumer waits for its group to drop the killed member (session
            # timeout) and rebalance; on a saturated broker that took over 120 s once.
            start_services,
            self.infra,
            ports=self.ports,
            names=[name],
            timeout=240,
        )


@pytest.fixture(scope="module")
def stack(infra: Endpoints) -> Iterator[Stack]:
    """The five services on free ports, with small experiment sizes and a fresh model name."""
    ports = _free_ports()
    # A Redis database of its own: the routing table is one key per deployment, and
    # this stack's would otherwise be the next e2e module's starting point.
    infra = infra.with_redis_db(1)
    with pytest.MonkeyPatch.context() as patch:
        # The deployment's default model (deprecated, kept for one release), on the old routes.
        patch.setenv("FLYWHEEL_MODEL_NAME", f"faults-{uuid.uuid4().hex[:8]}")
        patch.setenv("TRAINER_CANDIDATES", '["logistic_regression"]')
        for name, value in ROUTER_ENV.items():
            patch.setenv(name, value)
        try:
            # The env stays patched while the test restarts services: they get the same.
            yield Stack(infra, ports, start_services(infra, ports=ports, timeout=180))
        finally:
            stop_services(infra.run_dir)


@dataclass
class Customers:
    """What the client saw: feedback the gateway accepted, and what it could not send."""

    accepted: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    retries: int = 0


async def _call(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], seen: Customers
) -> httpx.Response:
    """POST until the gateway answers something other than 'down': it may be restarting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETRY_S
    while True:
        try:
            response = await client.post(path, json=body)
            if response.status_code not in RETRY_STATUS:
                return response
        except DOWN:
            pass
        if loop.time() > deadline:
            raise TimeoutError(f"{path} kept failing for {RETRY_S:.0f} s")
        seen.retries += 1
        await asyncio.sleep(0.5)


async def _customer(
    client: httpx.AsyncClient, row: dict[str, Any], label: str, entity: str, seen: Customers
) -> None:
    answer = await _call(client, "/v1/predict", {"features": row, "entity_id": entity}, seen)
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["request_id"]
    feedback = {"request_id": request_id, "true_label": label}
    response = await _call(client, "/v1/feedback", feedback, seen)
    if response.status_code == 404:
        # The gateway died before storing the prediction's record: nothing to label.
        seen.unknown.add(request_id)
        return
    assert response.status_code == 200, response.text
    seen.accepted.add(request_id)  # a duplicate answer too: an earlier attempt got through


async def _round(
    client: httpx.AsyncClient, size: int, seed: int, seen: Customers, parallel: int = 8
) -> None:
    frame = generate_customers(size, seed, concept_drift=True)
    labels = frame["segment"].astype(str).tolist()
    rows = frame.drop(columns=["segment"]).to_dict(orient="records")
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with gate:
            row = {str(k): v for k, v in rows[i].items()}
            await _customer(client, row, labels[i], f"c-{seed}-{i}", seen)

    await asyncio.gather(*(one(i) for i in range(size)))


def _verdicts(tap: EventTap, model: str) -> dict[str, ModelPromoted | ModelRolledBack]:
    """Verdicts on ``model`` by event id (a republished one is the same verdict)."""
    return {
        e.event_id: e
        for e in tap.events
        if isinstance(e, ModelPromoted | ModelRolledBack) and e.model_name == model
    }


def _updates(tap: EventTap, experiment_id: str) -> list[ExperimentUpdated]:
    return [
        e
        for e in tap.events
        if isinstance(e, ExperimentUpdated) and e.experiment_id == experiment_id
    ]


@dataclass
class FaultRun:
    """What the experiment under faults produced."""

    opened: ExperimentUpdated
    customers: Customers
    verdicts: dict[str, ModelPromoted | ModelRolledBack]
    updates: list[ExperimentUpdated]
    feedback: dict[str, FeedbackReceived]
    killed_before_verdict: list[str]
    experiments: list[dict[str, Any]]
    report: dict[str, Any]


def _default_model() -> DemoModel:
    """customer-segment as the deployment's default model."""
    return demo_models()[0].named(os.environ["FLYWHEEL_MODEL_NAME"])


async def _champion(stack: Stack, tap: EventTap, client: httpx.AsyncClient) -> None:
    frame = generate_customers(2000, 11)
    path = stack.infra.run_dir / "data" / f"faults-{uuid.uuid4().hex[:8]}.parquet"
    event = await announce(stack.infra.kafka, await asyncio.to_thread(write_batch, frame, path))
    turn = event.correlation_id
    champion = await tap.wait_for(ModelApproved, lambda e: e.correlation_id == turn, 180)
    assert champion.alias == "champion"
    gateway = ModelGateway(client, champion.model_name)
    await gateway.wait_until_serving(champion.version, "champion", 120)


async def _run_with_faults(stack: Stack, tap: EventTap, client: httpx.AsyncClient) -> FaultRun:
    steps = Steps(print)
    await _champion(stack, tap, client)
    steps.done("a champion serves")
    data = stack.infra.run_dir / "data"
    experiment = await open_experiment(
        tap, stack.infra.kafka, _default_model(), data, 2000, 61, 180, steps.done
    )
    assert experiment.opened is not None
    model, seen, killed = experiment.opened.model_name, Customers(), []
    for i, name in enumerate(KILL_ORDER):
        # Traffic keeps flowing while the service dies and comes back.
        await asyncio.gather(stack.crash_and_restart(name), _round(client, KILL_ROUND, i, seen))
        steps.done(f"{name} killed and back; {len(seen.accepted)} feedback accepted so far")
        if not _verdicts(tap, model):
            killed.append(name)
    for i in range(MAX_ROUNDS):
        if _verdicts(tap, model):
            break
        await _round(client, ROUND, 100 + i, seen)
        await asyncio.sleep(1.0)  # let the router count the round's outcomes
    steps.done(
        f"verdicts: {len(_verdicts(tap, model))} after {len(seen.accepted)} feedback "
        f"({seen.retries} retried calls, {len(seen.unknown)} predictions lost with the gateway)"
    )
    # Every accepted feedback reaches the topic promptly; a second verdict would come by now.
    await _wait_for_feedback(tap, seen.accepted, 30.0)
    await asyncio.sleep(3.0)
    async with httpx.AsyncClient(base_url=stack.urls["router"], timeout=30) as router:
        experiments = await router.get("/v1/experiments")
        report = await router.get(f"/v1/experiments/{experiment.opened.experiment_id}/report")
    return FaultRun(
        opened=experiment.opened,
        customers=seen,
        verdicts=_verdicts(tap, model),
        updates=_updates(tap, experiment.opened.experiment_id),
        feedback={e.request_id: e for e in tap.events if isinstance(e, FeedbackReceived)},
        killed_before_verdict=killed,
        experiments=experiments.json(),
        report=report.json(),
    )


async def _wait_for_feedback(tap: EventTap, request_ids: set[str], within_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        seen = {e.request_id for e in tap.events if isinstance(e, FeedbackReceived)}
        if request_ids <= seen:
            return
        await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
async def fault_run(stack: Stack) -> FaultRun:
    async with (
        EventTap(stack.infra.kafka) as tap,
        httpx.AsyncClient(base_url=stack.urls["gateway"], timeout=30) as client,
    ):
        return await _run_with_faults(stack, tap, client)


def test_every_service_was_killed_while_the_experiment_ran(fault_run: FaultRun) -> None:
    assert fault_run.killed_before_verdict == list(KILL_ORDER)
    # Positive control: the gateway's death was felt by the client, which retried.
    assert fault_run.customers.retries > 0


def test_the_experiment_ends_in_exactly_one_verdict(fault_run: FaultRun) -> None:
    verdicts = list(fault_run.verdicts.values())
    assert len(verdicts) == 1, [type(v).__name__ for v in verdicts]
    ended = [u for u in fault_run.updates if u.status in ("promoted", "rolled_back")]
    assert len({u.event_id for u in ended}) == 1, [(u.status, u.event_id) for u in ended]
    assert verdicts[0].causation_id == ended[0].event_id
    # The router carried the same experiment through every restart: no other one opened.
    assert not [u for u in fault_run.updates if u.status == "superseded"]
    mine = [e for e in fault_run.experiments if e["model_name"] == fault_run.opened.model_name]
    concluded = [e for e in mine if e["status"] in ("promoted", "rolled_back")]
    assert [e["experiment_id"] for e in concluded] == [fault_run.opened.experiment_id]
    assert concluded[0]["actions_pending"] is False


def test_no_feedback_the_gateway_accepted_is_lost(fault_run: FaultRun) -> None:
    accepted = fault_run.customers.accepted
    assert len(accepted) >= len(KILL_ORDER) * KILL_ROUND * 0.9
    missing = accepted - set(fault_run.feedback)
    assert not missing, f"{len(missing)} of {len(accepted)} accepted feedback never published"
    experiment = fault_run.opened.experiment_id
    published = {r for r, e in fault_run.feedback.items() if e.experiment_id == experiment}
    # Nothing the client did not get accepted was counted for the experiment either.
    assert published <= accepted
    # A router re-reading feedback after its restart counted none of it twice.
    assert "arms" in fault_run.report, fault_run.report  # the router still knows the experiment
    arms = fault_run.report["arms"].values()
    counted = sum(arm["labelled"] + arm["late"] for arm in arms)
    minimum = int(ROUTER_ENV["ROUTER_MIN_LABELLED_PER_ARM"])
    assert 2 * minimum <= counted <= len(published), (counted, len(published))
