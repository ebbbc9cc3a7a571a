"""Composition root of the registry: settings, adapters, catalog, handlers, routes, the app."""

from __future__ import annotations

from fastapi import FastAPI

from services.registry.adapters import (
    MlflowCandidateLoader,
    MlflowModelImports,
    MlflowModelRegistry,
)
from services.registry.admin import RegistryAdmin
from services.registry.handlers import RegistryHandlers, register
from services.registry.importing import ModelImporter
from services.registry.metrics import MetricsFromRegistry, RegistryMetrics
from services.registry.packaging import BentoModelStore
from services.registry.routes import (
    admin_router,
    imports_router,
    models_admin_router,
    models_router,
    versions_router,
)
from services.registry.settings import Settings
from services.registry.specs import ModelSpecs
from shared.catalog import ModelCatalog
from shared.events import ModelApproved, ModelPromoted, ModelRolledBack, Topic
from shared.messaging import subscribe_broadcast
from shared.mlflow_specs import MlflowSpecSource
from shared.runtime import build_runtime, mlflow_check, serve, service_app
from shared.scoring import load_scorer
from shared.spec import load_spec


def create_app(settings: Settings | None = None, name: str = "registry") -> FastAPI:
    """Build the registry (connects nothing until the app starts).

    ``name`` names its consumer group and idempotency markers (tests use their own).
    """
    settings = settings or Settings()
    runtime = build_runtime(name, settings)
    models = MlflowModelRegistry(settings.mlflow_tracking_uri)
    store = MlflowSpecSource(settings.mlflow_tracking_uri)
    default_spec = load_spec(settings.model_spec_path)
    catalog = ModelCatalog(store, settings.model_name, default_spec)
    metrics = RegistryMetrics.create(runtime.registry)
    handlers = RegistryHandlers(
        models=models,
        loader=MlflowCandidateLoader(settings.mlflow_tracking_uri),
        catalog=catalog,
        publisher=runtime.publisher,
        metrics=metrics,
        policy=settings.to_config(),
        packager=_packager(settings),
    )
    register(runtime.consumer, handlers)
    specs = ModelSpecs(store, catalog, runtime.publisher, (settings.model_name, default_spec))
    synced = MetricsFromRegistry(models.list_versions, metrics, models.list_models)
    # Every replica keeps its own gauges current, so each needs every move.
    moved = synced.on_aliases_moved
    subscribe_broadcast(runtime.consumer, Topic.MODEL_PROMOTED, ModelPromoted, moved)
    subscribe_broadcast(runtime.consumer, Topic.MODEL_ROLLED_BACK, ModelRolledBack, moved)
    subscribe_broadcast(runtime.consumer, Topic.MODEL_APPROVED, ModelApproved, moved)
    admin = RegistryAdmin(models, runtime.publisher)
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    imports = MlflowModelImports(settings.mlflow_tracking_uri)
    importer = ModelImporter(catalog, imports, load_scorer, runtime.publisher)

    async def register_default_model() -> None:
        await specs.start(runtime.broker_started)

    app = service_app(
        runtime,
        checks={"mlflow": mlflow_check(settings.mlflow_tracking_uri)},
        routers=[
            models_router(models, catalog),
            versions_router(models),
            models_admin_router(specs, token),
            admin_router(admin, token),
            imports_router(importer, token),
        ],
        on_startup=[synced.start, register_default_model],
        on_shutdown=[specs.stop],
        description="Registers models and their specs, gates trained versions and assigns "
        "champion/challenger.",
    )
    return app


def _packager(settings: Settings) -> BentoModelStore | None:
    if not settings.bento_export:
        return None
    return BentoModelStore(settings.bento_home or settings.data_dir.resolve() / "bentoml")


def main() -> None:
    """Run the registry's HTTP server and consumer."""
    settings = Settings()
    serve(create_app(settings), settings)
