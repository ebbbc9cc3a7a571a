"""HTTP: versions with their gates, lineage of a version, and token-protected promote/rollback."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from services.registry.admin import RegistryAdmin
from services.registry.auth import admin_guard
from services.registry.core import trigger_chain
from services.registry.ports import ModelRegistry, VersionInfo
from shared.errors import NotFoundError
from shared.events import ModelPromoted, ModelRolledBack


class VersionView(BaseModel):
    """One version as the API shows it."""

    model_config = ConfigDict(frozen=True)

    version: str
    run_id: str | None
    aliases: list[str]
    gates: dict[str, str]
    tags: dict[str, str]
    created_at_ms: int | None


class VersionsView(BaseModel):
    """Every version of one model, newest first."""

    model_name: str
    versions: list[VersionView]


class ModelsView(BaseModel):
    """Registered model names."""

    models: list[str]


class ChainLinkView(BaseModel):
    """One event of the trigger chain."""

    type: str
    event_ids: list[str]
    caused_by: str | None


class LineageView(BaseModel):
    """Where a version came from: run, data, code and the events that triggered it."""

    model_name: str
    version: str
    run_id: str | None
    data_version: str | None
    code_version: str | None
    trigger: str | None
    trigger_event_id: str | None
    trigger_event_ids: list[str]
    correlation_id: str | None
    chain: list[ChainLinkView] = Field(
        description="The turn of the loop: trigger event(s), model-trained, the registry's "
        "decision; each names the event that caused it."
    )
    algorithm: str | None
    device: str | None
    gates: dict[str, str]


class PromoteRequest(BaseModel):
    """Which version to promote (default: the challenger) and why."""

    version: str | None = None
    reason: str = Field("manual promotion", min_length=1)
    requested_by: str = Field("admin", min_length=1, description="Who asks (the CLI sends $USER).")


class RollbackRequest(BaseModel):
    """Why the champion is rolled back."""

    reason: str = Field("manual rollback", min_length=1)
    requested_by: str = Field("admin", min_length=1, description="Who asks (the CLI sends $USER).")


def _view(v: VersionInfo) -> VersionView:
    gates = {k: t for k, t in v.tags.items() if k.startswith("gate.")}
    return VersionView(
        version=v.version,
        run_id=v.run_id,
        aliases=list(v.aliases),
        gates=gates,
        tags=v.tags,
        created_at_ms=v.created_at_ms,
    )


# Every status a route answers is documented: clients (and schemathesis) check them.
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "MLflow unavailable: retry after Retry-After seconds"}
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such model, or no such version of it"},
    **_UNAVAILABLE,
}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not JSON"},
    401: {"description": "Missing or wrong bearer token"},
    422: {"description": "The body does not fit, or the move is impossible (e.g. no challenger)"},
    **_ERRORS,
}


def versions_router(models: ModelRegistry) -> APIRouter:
    """Read-only routes under ``/v1/models``.

    Errors are answered by ``shared.http_errors`` (404 unknown, 422 bad input, 503 MLflow down).
    """
    router = APIRouter(prefix="/v1/models", tags=["models"])

    @router.get("", summary="Registered models", responses=_UNAVAILABLE)
    async def list_models() -> ModelsView:
        return ModelsView(models=await asyncio.to_thread(models.list_models))

    @router.get(
        "/{name}/versions", summary="Versions with aliases and gate results", responses=_ERRORS
    )
    async def list_versions(name: str) -> VersionsView:
        versions = await asyncio.to_thread(models.list_versions, name)
        return VersionsView(model_name=name, versions=[_view(v) for v in versions])

    @router.get(
        "/{name}/versions/{version}/lineage",
        summary="Run, data, code and trigger chain",
        responses=_ERRORS,
    )
    async def lineage(name: str, version: str) -> LineageView:
        return await asyncio.to_thread(_lineage, models, name, version)

    return router


def _lineage(models: ModelRegistry, name: str, version: str) -> LineageView:
    found = [v for v in models.list_versions(name) if v.version == version]
    if not found:
        raise NotFoundError(f"{name} has no version {version}")
    info = found[0]
    run = models.run_tags(info.run_id) if info.run_id else {}
    ids = [i for i in run.get("flywheel.trigger_ids", "").split(",") if i]
    return LineageView(
        model_name=name,
        version=version,
        run_id=info.run_id,
        data_version=run.get("flywheel.data_version"),
        code_version=run.get("flywheel.code_version"),
        trigger=run.get("flywheel.trigger"),
        trigger_event_id=run.get("flywheel.event_id"),
        trigger_event_ids=ids,
        correlation_id=run.get("flywheel.correlation_id"),
        chain=[
            ChainLinkView(type=link.type, event_ids=list(link.event_ids), caused_by=link.caused_by)
            for link in trigger_chain(run, info.tags)
        ],
        algorithm=info.tags.get("flywheel.algorithm"),
        device=run.get("flywheel.device"),
        gates={k: t for k, t in info.tags.items() if k.startswith("gate.")},
    )


def admin_router(admin: RegistryAdmin, token: str | None) -> APIRouter:
    """Promote and rollback, each requiring ``Authorization: Bearer <token>``."""
    router = APIRouter(
        prefix="/v1/models", tags=["admin"], dependencies=[Depends(admin_guard(token))]
    )

    @router.post(
        "/{name}/promote",
        summary="Make a version (default: challenger) champion",
        responses=_ADMIN_ERRORS,
    )
    async def promote(name: str, request: PromoteRequest) -> ModelPromoted:
        return await admin.promote(name, request.version, request.reason, request.requested_by)

    @router.post(
        "/{name}/rollback",
        summary="Give champion back to the previous champion",
        responses=_ADMIN_ERRORS,
    )
    async def rollback(name: str, request: RollbackRequest) -> ModelRolledBack:
        return await admin.rollback(name, request.reason, request.requested_by)

    return router
