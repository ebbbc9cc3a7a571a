"""Property-based API tests of the router and the registry against real Redis and MLflow.

Each app is built by its own ``create_app`` and driven in-process; its stores are the
real ones, so whatever a hostile path parameter does to Redis or MLflow is what the
client sees. Schemathesis generates requests from the OpenAPI document (examples,
boundary values, random valid and invalid requests) and runs its default checks on
every answer; a 5xx fails the test. Example counts are bounded so CI stays quick.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import mlflow
import pytest
import schemathesis
from _support import register_champion
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.schemas import BaseSchema
from starlette.types import ASGIApp

from flywheel.infra import Endpoints
from services.registry.app import create_app as registry_app
from services.registry.settings import Settings as RegistrySettings
from services.router.app import create_app as router_app
from services.router.settings import Settings as RouterSettings
from shared.testing import without_lifespan

pytestmark = pytest.mark.integration

#: Examples per operation and generation phase (see tests/service/test_schemathesis_gateway.py).
EXAMPLES = 30

bounded = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


async def _answers(*_: Any, **__: Any) -> bool:
    return True


def _broker_up(app: FastAPI) -> FastAPI:
    """Kafka answers readiness (the lifespan that would connect it does not run); Redis
    and MLflow are the session's real ones."""
    runtime = app.state.runtime
    runtime.broker_started.set()
    runtime.broker.ping = _answers
    return app


def _document(app: FastAPI) -> BaseSchema:
    # /readyz takes no input; its 503 says a dependency is down (here: the state the
    # router rebuilds in its lifespan, which does not run), a server's answer by design.
    return schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(app)).exclude(
        path="/readyz"
    )


def _built_apart(build: Callable[[], FastAPI]) -> FastAPI:
    """An app built for its document alone, the process left as it was: MLflow's client
    writes its tracking URI (and the services their HTTP knobs) into os.environ, where the
    session's ``infra`` fixture would take them for an MLflow to use."""
    saved = dict(os.environ)
    try:
        return build()
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets it, env included
        os.environ.clear()
        os.environ.update(saved)


# Documents are read when the module is collected, from apps that connect nothing yet
# (schemathesis's fixture-based loader relies on Node._nodeid, gone in pytest 9.2); each
# test calls an app of its own, built on the session's infrastructure, passed as ``app``.
router_schema = _document(_built_apart(lambda: router_app(RouterSettings(), name="router-schema")))
registry_schema = _document(
    _built_apart(lambda: registry_app(RegistrySettings(), name="registry-schema"))
)


@pytest.fixture
def router(infra_env: Endpoints) -> ASGIApp:
    app = router_app(RouterSettings(), name=f"router-st-{uuid.uuid4().hex[:8]}")
    return without_lifespan(_broker_up(app))


@pytest.fixture(scope="module")
def registered_model(infra_env: Endpoints) -> str:
    """A model with a champion, so the registry's listings have something in them."""
    name = f"st-{uuid.uuid4().hex[:8]}"
    register_champion(infra_env, name)
    return name


@pytest.fixture
def registry(infra_env: Endpoints, registered_model: str) -> ASGIApp:
    app = registry_app(RegistrySettings(), name=f"registry-st-{uuid.uuid4().hex[:8]}")
    return without_lifespan(_broker_up(app))


@router_schema.parametrize()
@bounded
def test_the_router_answers_every_request_without_a_5xx(
    case: schemathesis.Case[Any], router: ASGIApp
) -> None:
    case.call_and_validate(app=router)


@registry_schema.parametrize()
@bounded
def test_the_registry_answers_every_request_without_a_5xx(
    case: schemathesis.Case[Any], registry: ASGIApp
) -> None:
    case.call_and_validate(app=registry)


@pytest.mark.parametrize("name", ["a:b", "a%2Fb", "%20"])
async def test_a_model_name_mlflow_refuses_is_a_404_not_a_500(registry: ASGIApp, name: str) -> None:
    # Found by the test above: MLflow's INVALID_PARAMETER_VALUE went through as a 500.
    transport = httpx.ASGITransport(app=registry)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        versions = await client.get(f"/v1/models/{name}/versions")
        lineage = await client.get(f"/v1/models/{name}/versions/1/lineage")
        shown = await client.get(f"/v1/models/{name}")
    assert (versions.status_code, lineage.status_code) == (404, 404), versions.text
    assert shown.status_code == 404, shown.text
