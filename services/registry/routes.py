"""HTTP: read-only views of registered model versions."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict

from services.registry.ports import ModelRegistry
from shared.errors import InvalidInputError, NotFoundError


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


def versions_router(models: ModelRegistry) -> APIRouter:
    """Routes under ``/v1/models``."""
    router = APIRouter(prefix="/v1/models", tags=["models"])

    @router.get("/{name}/versions", summary="Versions with aliases and gate results")
    async def list_versions(name: str) -> VersionsView:
        try:
            versions = await asyncio.to_thread(models.list_versions, name)
        except NotFoundError as error:
            raise HTTPException(status_code=404, detail=str(error)) from error
        except InvalidInputError as error:
            raise HTTPException(status_code=422, detail=str(error)) from error
        return VersionsView(
            model_name=name,
            versions=[
                VersionView(
                    version=v.version,
                    run_id=v.run_id,
                    aliases=list(v.aliases),
                    gates={k: t for k, t in v.tags.items() if k.startswith("gate.")},
                    tags=v.tags,
                    created_at_ms=v.created_at_ms,
                )
                for v in versions
            ],
        )

    return router
