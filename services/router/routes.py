"""HTTP routes of the router: the current routing table."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from redis.exceptions import RedisError

from services.router.ports import ExperimentStore
from shared.events import ExperimentUpdated


def experiments_router(store: ExperimentStore) -> APIRouter:
    """Routes reading the experiment store."""
    router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

    @router.get("/current", summary="The routing table the gateway follows")
    async def current() -> ExperimentUpdated:
        try:
            table = await store.routing_table()
        except (RedisError, OSError) as error:
            raise HTTPException(503, f"routing state unavailable: {error}") from error
        if table is None:
            raise HTTPException(404, "no routing table yet: no model has been approved")
        return table

    return router
