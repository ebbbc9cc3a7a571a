"""HTTP routes of the router: the routing tables, the experiments and their reports.

Redis outages reach the client as 503 and unknown ids as 404 through the shared
error mapping (``shared.http_errors``) every service installs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from services.router.core import Experiment
from services.router.core.report import ExperimentReport, build_report
from services.router.ports import ExperimentStore, OutcomeTally
from shared.errors import NotFoundError
from shared.events import ExperimentUpdated

# Every status a route answers is documented: clients (and schemathesis) check them.
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "Experiment state (Redis) unavailable: retry"}
}
_NO_TABLE: dict[int | str, dict[str, Any]] = {
    404: {"description": "No routing table yet for this model"},
    **_UNAVAILABLE,
}


def experiments_router(
    store: ExperimentStore, tally: OutcomeTally, default_model: str
) -> APIRouter:
    """Routes reading the experiment store and the outcome tallies.

    ``default_model`` answers the routes that name no model (deprecated with it).
    """
    router = APIRouter(tags=["experiments"])

    async def routing_table(model_name: str) -> ExperimentUpdated:
        table = await store.routing_table(model_name)
        if table is None:
            raise NotFoundError(
                f"no routing table yet for model {model_name!r}: none of its versions "
                "has been approved"
            )
        return table

    @router.get("/v1/experiments", summary="Every experiment, newest first", responses=_UNAVAILABLE)
    async def experiments(
        model: str | None = Query(None, description="Only this model's experiments."),
    ) -> list[Experiment]:
        return await store.all(model)

    @router.get(
        "/v1/experiments/current",
        summary="The routing table the gateway follows for a model (default: the default model)",
        responses=_NO_TABLE,
    )
    async def current(
        model: str | None = Query(None, description="The model; the default model if omitted."),
    ) -> ExperimentUpdated:
        return await routing_table(model or default_model)

    @router.get(
        "/v1/models/{name}/experiment",
        summary="The routing table the gateway follows for this model",
        responses=_NO_TABLE,
    )
    async def model_current(name: str) -> ExperimentUpdated:
        return await routing_table(name)

    @router.get(
        "/v1/experiments/{experiment_id}/report",
        summary="The A/B report: estimates, always-valid intervals, guardrails, SRM, decision",
        responses={404: {"description": "No experiment with this id"}, **_UNAVAILABLE},
    )
    async def report(experiment_id: str) -> ExperimentReport:
        experiment = await store.find(experiment_id)
        if experiment is None:
            raise NotFoundError(f"no experiment {experiment_id!r}; GET /v1/experiments lists them")
        model = experiment.model_name
        stats = await tally.stats(model, experiment_id)
        history = await tally.history(model, experiment_id)
        return build_report(experiment, stats, history)

    return router
