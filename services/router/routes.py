"""HTTP routes of the router: the routing table, the experiments and their reports."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException
from redis.exceptions import RedisError

from services.router.core import Experiment
from services.router.core.report import ExperimentReport, build_report
from services.router.ports import ExperimentStore, OutcomeTally
from shared.events import ExperimentUpdated

T = TypeVar("T")


async def _read(call: Awaitable[T]) -> T:
    try:
        return await call
    except (RedisError, OSError) as error:
        raise HTTPException(503, f"experiment state unavailable: {error}") from error


# Every status a route answers is documented: clients (and schemathesis) check them.
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "Experiment state (Redis) unavailable: retry"}
}


def experiments_router(store: ExperimentStore, tally: OutcomeTally) -> APIRouter:
    """Routes reading the experiment store and the outcome tallies."""
    router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

    @router.get("", summary="Every experiment, newest first", responses=_UNAVAILABLE)
    async def experiments() -> list[Experiment]:
        return await _read(store.all())

    @router.get(
        "/current",
        summary="The routing table the gateway follows",
        responses={404: {"description": "No routing table yet"}, **_UNAVAILABLE},
    )
    async def current() -> ExperimentUpdated:
        table = await _read(store.routing_table())
        if table is None:
            raise HTTPException(404, "no routing table yet: no model has been approved")
        return table

    @router.get(
        "/{experiment_id}/report",
        summary="The A/B report: estimates, always-valid intervals, guardrails, SRM, decision",
        responses={404: {"description": "No experiment with this id"}, **_UNAVAILABLE},
    )
    async def report(experiment_id: str) -> ExperimentReport:
        experiment = await _read(store.get(experiment_id))
        if experiment is None:
            raise HTTPException(
                404, f"no experiment {experiment_id!r}; GET /v1/experiments lists them"
            )
        stats = await _read(tally.stats(experiment_id))
        history = await _read(tally.history(experiment_id))
        return build_report(experiment, stats, history)

    return router
