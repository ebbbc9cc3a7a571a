"""HTTP: models and their specs, versions with their gates, lineage of a version, and the
token-protected admin routes (register a model or change its spec, promote, rollback)."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.registry.admin import RegistryAdmin
from services.registry.auth import admin_guard
from services.registry.core import IncompatibleSpecError, SpecChange, trigger_chain
from services.registry.importing import HoldoutFile, HoldoutFormat, ModelImporter
from services.registry.ports import ModelRegistry, VersionInfo
from services.registry.specs import ModelSpecs
from shared.aliases import CHALLENGER, CHAMPION
from shared.catalog import ModelCatalog
from shared.errors import InvalidInputError, NotFoundError
from shared.events import ModelMetrics, ModelPromoted, ModelRolledBack
from shared.spec import ModelSpec


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


class ModelSummaryView(BaseModel):
    """One model in the list: its spec revision and where its aliases point."""

    name: str
    spec_revision: int | None = Field(
        description="Current spec revision; 0: the deployment's default model, served from "
        "FLYWHEEL_MODEL_SPEC and not registered yet (deprecated); null: no spec registered."
    )
    champion: str | None
    challenger: str | None
    aliases: dict[str, str]


class ModelsView(BaseModel):
    """Every registered model, sorted by name."""

    models: list[ModelSummaryView]


class ModelView(BaseModel):
    """One model: its spec, the spec's revision and its aliases."""

    name: str
    spec_revision: int
    spec: ModelSpec
    aliases: dict[str, str]


class CreateModelRequest(BaseModel):
    """A model to register, or a new spec for one (same spec again: nothing changes)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    spec: ModelSpec = Field(description="The model spec; its name must equal ``name``.")
    requested_by: str = Field("admin", min_length=1, description="Who asks (the CLI sends $USER).")


class ModelRegisteredView(BaseModel):
    """What registering did: created (201), changed or unchanged (200)."""

    name: str
    spec_revision: int
    change: SpecChange


class RefusedView(BaseModel):
    """A spec change refused, with every reason."""

    detail: str
    reasons: list[str]


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


def models_router(models: ModelRegistry, catalog: ModelCatalog) -> APIRouter:
    """The models and their specs: ``GET /v1/models`` and ``GET /v1/models/{name}``."""
    router = APIRouter(prefix="/v1/models", tags=["models"])

    @router.get("", summary="Registered models with spec revision and aliases")
    async def list_models() -> ModelsView:
        aliases = {m.name: m.aliases for m in await asyncio.to_thread(models.model_summaries)}
        with_spec = set(await catalog.names())  # reads every spec once; registered() is cached
        views = []
        for name in sorted(set(aliases) | with_spec):
            revision = (await catalog.registered(name)).revision if name in with_spec else None
            views.append(_summary_view(name, revision, aliases.get(name, {})))
        return ModelsView(models=views)

    @router.get(
        "/{name}",
        summary="A model's spec, spec revision and aliases",
        responses={404: {"description": "No such model; the answer names the known ones"}},
    )
    async def show_model(name: str) -> ModelView:
        registered = await catalog.registered(name)
        aliases = await asyncio.to_thread(models.all_aliases, name)
        return ModelView(
            name=name, spec_revision=registered.revision, spec=registered.spec, aliases=aliases
        )

    return router


def _summary_view(name: str, revision: int | None, aliases: dict[str, str]) -> ModelSummaryView:
    return ModelSummaryView(
        name=name,
        spec_revision=revision,
        champion=aliases.get(CHAMPION),
        challenger=aliases.get(CHALLENGER),
        aliases=aliases,
    )


def versions_router(models: ModelRegistry) -> APIRouter:
    """Read-only routes under ``/v1/models/{name}/versions``.

    Errors are answered by ``shared.http_errors`` (404 unknown, 422 bad input, 503 MLflow down).
    """
    router = APIRouter(prefix="/v1/models", tags=["models"])

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


def models_admin_router(specs: ModelSpecs, token: str | None) -> APIRouter:
    """``POST /v1/models``: register a model or change its spec (bearer ``token``)."""
    router = APIRouter(
        prefix="/v1/models", tags=["admin"], dependencies=[Depends(admin_guard(token))]
    )

    @router.post(
        "",
        summary="Register a model with its spec, or change the spec",
        status_code=201,
        response_model=ModelRegisteredView,
        responses={
            200: {"description": "The spec changed compatibly, or is the same (unchanged)"},
            409: {"model": RefusedView, "description": "A change served models cannot take"},
            **_ADMIN_ERRORS,
        },
    )
    async def create_model(
        request: CreateModelRequest, response: Response
    ) -> ModelRegisteredView | JSONResponse:
        try:
            done = await specs.register(request.name, request.spec, request.requested_by)
        except IncompatibleSpecError as error:
            refused = RefusedView(detail=str(error), reasons=error.reasons)
            return JSONResponse(refused.model_dump(), status_code=409)
        response.status_code = 201 if done.change == "created" else 200
        return ModelRegisteredView(
            name=done.name, spec_revision=done.spec_revision, change=done.change
        )

    return router


class HoldoutUpload(BaseModel):
    """A holdout file, sent whole: the spec's features and label, one row each."""

    format: HoldoutFormat = Field(description="How to read the file: parquet or csv.")
    content_base64: str = Field(min_length=1, description="The file's bytes, base64-encoded.")


class ImportRequest(BaseModel):
    """A model trained elsewhere, to import as a candidate version of the model."""

    model_uri: str = Field(
        min_length=1,
        description="MLflow URI of the model (runs:/…, models:/…): sklearn, "
        "lightgbm, xgboost or pyfunc flavour.",
    )
    holdout: HoldoutUpload | None = Field(
        None,
        description="Held-out labelled rows; without one, the holdout Flywheel logged with the "
        "model's own run.",
    )
    requested_by: str = Field("admin", min_length=1, description="Who asks (the CLI sends $USER).")


class ImportAcceptedView(BaseModel):
    """An import logged as a run and handed to the gates (``model-trained``)."""

    model_name: str
    run_id: str = Field(description="The import run: what the registered version points at.")
    model_uri: str = Field(description="The copy of the model in the import run.")
    source_model_uri: str
    flavor: str
    metrics: ModelMetrics = Field(description="Computed on the holdout.")
    holdout_source: str
    event_id: str = Field(description="The model-trained event published.")
    detail: str


def imports_router(importer: ModelImporter, token: str | None) -> APIRouter:
    """``POST /v1/models/{name}/imports``: bring a model trained elsewhere (bearer ``token``)."""
    router = APIRouter(
        prefix="/v1/models", tags=["admin"], dependencies=[Depends(admin_guard(token))]
    )

    @router.post(
        "/{name}/imports",
        summary="Import a model trained elsewhere as a candidate; the gates follow",
        status_code=202,
        responses=_ADMIN_ERRORS,
    )
    async def import_model(name: str, request: ImportRequest) -> ImportAcceptedView:
        holdout = _holdout_file(request.holdout)
        done = await importer.import_model(name, request.model_uri, holdout, request.requested_by)
        return ImportAcceptedView(
            model_name=name,
            run_id=done.event.run_id,
            model_uri=done.event.model_uri,
            source_model_uri=done.source_uri,
            flavor=done.flavor,
            metrics=done.event.metrics,
            holdout_source=done.holdout_source,
            event_id=done.event.event_id,
            detail=f"run {done.event.run_id} logged; the gates follow (model-trained "
            f"{done.event.event_id}): `flywheel models show {name}` shows where it lands",
        )

    return router


def _holdout_file(upload: HoldoutUpload | None) -> HoldoutFile | None:
    if upload is None:
        return None
    try:
        content = base64.b64decode(upload.content_base64, validate=True)
    except binascii.Error as error:
        raise InvalidInputError(f"holdout.content_base64: not base64 ({error})") from error
    return HoldoutFile(content, upload.format)
