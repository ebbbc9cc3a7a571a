"""Models and their specs registered through the registry, stored in real MLflow, read back
through the catalog every service uses; announced on the real broker; the CLI over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from _support import free_port
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from flywheel.cli import app as cli
from flywheel.demo_models import card_fraud_spec, generate_transactions
from flywheel.infra import Endpoints
from flywheel.loop import EventTap
from services.registry.app import create_app
from services.registry.settings import Settings
from shared.catalog import ModelCatalog, RegisteredSpec
from shared.datasets import write_batch
from shared.events import DataArrived, ModelRegistered
from shared.mlflow_specs import CHUNK_CHARS, MlflowSpecSource
from shared.spec import FeatureSpec, ModelSpec, load_spec

pytestmark = pytest.mark.integration

TOKEN = "it-models-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _named(spec: ModelSpec, name: str) -> ModelSpec:
    return spec.model_copy(update={"name": name})


def _body(spec: ModelSpec) -> dict[str, Any]:
    return {"name": spec.name, "spec": spec.model_dump(mode="json"), "requested_by": "it"}


@dataclass
class Registry:
    url: str
    default: str
    client: httpx.AsyncClient
    mlflow_uri: str

    def fresh_catalog(self) -> ModelCatalog:
        """A catalog with nothing cached: what a service that just started reads."""
        return ModelCatalog(MlflowSpecSource(self.mlflow_uri))


@pytest.fixture
async def registry(
    infra_env: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Registry]:
    """The registry app on a free port (real Kafka and MLflow), its default model fresh."""
    default = _unique("it-default")
    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", default)
    monkeypatch.setenv("REGISTRY_ADMIN_TOKEN", TOKEN)
    port = free_port()
    app = create_app(Settings(port=port), name=_unique("registry-it"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield Registry(url, default, client, infra_env.mlflow_uri)
    finally:
        server.should_exit = True
        await task


async def test_two_models_with_different_specs_are_stored_announced_and_read_back(
    registry: Registry, infra_env: Endpoints
) -> None:
    fraud = _named(card_fraud_spec(), _unique("it-fraud"))
    segment = _named(load_spec(), _unique("it-segment"))
    async with EventTap(infra_env.kafka) as tap:
        created = [
            await registry.client.post("/v1/models", json=_body(s), headers=AUTH)
            for s in (fraud, segment)
        ]
        announced = await tap.wait_for(ModelRegistered, lambda e: e.model_name == fraud.name, 60)

    assert [c.status_code for c in created] == [201, 201], created[0].text
    assert (announced.spec_revision, announced.spec) == (1, fraud)
    catalog = registry.fresh_catalog()
    assert await catalog.registered(fraud.name) == RegisteredSpec(1, fraud)
    assert await catalog.registered(segment.name) == RegisteredSpec(1, segment)
    assert {fraud.name, segment.name} <= set(await catalog.names())
    listed = (await registry.client.get("/v1/models")).json()["models"]
    revisions = {m["name"]: m["spec_revision"] for m in listed}
    assert (revisions[fraud.name], revisions[segment.name]) == (1, 1)
    shown = (await registry.client.get(f"/v1/models/{fraud.name}")).json()
    assert ModelSpec.model_validate(shown["spec"]) == fraud


async def test_an_incompatible_change_is_refused_and_a_compatible_one_keeps_the_old_revision(
    registry: Registry,
) -> None:
    fraud = _named(card_fraud_spec(), _unique("it-fraud"))
    await registry.client.post("/v1/models", json=_body(fraud), headers=AUTH)
    merchant = fraud.feature("merchant")
    narrower = fraud.model_copy(
        update={
            "features": tuple(
                f.model_copy(update={"categories": merchant.categories[1:]}) if f is merchant else f
                for f in fraud.features
            )
        }
    )
    wider = fraud.model_copy(
        update={
            "features": tuple(
                f.model_copy(update={"categories": (*merchant.categories, "pharmacy")})
                if f is merchant
                else f
                for f in fraud.features
            )
        }
    )
    refused = await registry.client.post("/v1/models", json=_body(narrower), headers=AUTH)
    changed = await registry.client.post("/v1/models", json=_body(wider), headers=AUTH)

    assert refused.status_code == 409, refused.text
    assert refused.json()["reasons"] == ["feature 'merchant' categories removed: ['grocery']"]
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"name": fraud.name, "spec_revision": 2, "change": "changed"}
    assert await registry.fresh_catalog().registered(fraud.name) == RegisteredSpec(2, wider)
    tags = MlflowClient(registry.mlflow_uri).get_registered_model(fraud.name).tags
    assert tags["flywheel.spec_revision"] == "2"
    assert tags["flywheel.spec.r1.chunks"] == "1"  # the first revision stays


async def test_a_spec_far_over_one_tag_round_trips(registry: Registry) -> None:
    name = _unique("it-wide")
    categories = tuple(f"merchant_{i:04d}" for i in range(2000))
    wide = ModelSpec(
        name=name,
        label="outcome",
        classes=("legit", "fraud"),
        features=(
            FeatureSpec(name="amount", type="numeric", min=0),
            FeatureSpec(name="merchant", type="categorical", categories=categories),
        ),
    )
    assert len(wide.model_dump_json()) > 5 * CHUNK_CHARS
    created = await registry.client.post("/v1/models", json=_body(wide), headers=AUTH)

    assert created.status_code == 201, created.text
    tags = MlflowClient(registry.mlflow_uri).get_registered_model(name).tags
    assert int(tags["flywheel.spec.r1.chunks"]) > 5
    assert all(len(v) <= CHUNK_CHARS for v in tags.values())
    assert await registry.fresh_catalog().spec(name) == wide


async def test_the_default_model_is_registered_at_start(registry: Registry) -> None:
    source = MlflowSpecSource(registry.mlflow_uri)
    for _ in range(240):
        found = await asyncio.to_thread(source.registered_spec, registry.default)
        if found is not None:
            break
        await asyncio.sleep(0.25)
    # The configured spec's own name never had to be the model's; the registered one's is.
    assert found == RegisteredSpec(1, _named(load_spec(), registry.default))
    model = MlflowClient(registry.mlflow_uri).get_registered_model(registry.default)
    assert model.tags["flywheel.spec.r1.requested_by"].startswith("registry")


async def test_the_cli_registers_shows_and_pushes_data_for_a_model(
    registry: Registry, infra_env: Endpoints, tmp_path: Path
) -> None:
    fraud = _named(card_fraud_spec(), _unique("it-fraud"))
    spec_file = tmp_path / "fraud.yaml"
    spec_file.write_text(yaml.safe_dump(fraud.model_dump(mode="json")))
    batch = tmp_path / "fraud.parquet"
    write_batch(generate_transactions(200, 1), batch)
    runner = CliRunner(env={"REGISTRY_URL": registry.url, "REGISTRY_ADMIN_TOKEN": TOKEN})

    def run(*args: str) -> Any:
        return runner.invoke(cli, list(args))

    created = await asyncio.to_thread(run, "models", "create", fraud.name, "--spec", str(spec_file))
    shown = await asyncio.to_thread(run, "models", "show", fraud.name)
    async with EventTap(infra_env.kafka) as tap:
        pushed = await asyncio.to_thread(run, "data", "push", str(batch), "--model", fraud.name)
        assert pushed.exit_code == 0, pushed.output
        event_id = pushed.output.split()[1]
        arrived = await tap.wait_for(DataArrived, lambda e: e.event_id == event_id, 60)
    wrong = await asyncio.to_thread(run, "data", "push", str(batch))
    unknown = await asyncio.to_thread(run, "data", "push", str(batch), "--model", "nope")

    assert created.exit_code == 0, created.output
    assert f"{fraud.name}: registered (spec revision 1)" in created.output
    assert "classes: legit, fraud" in shown.output
    assert arrived.model_name == fraud.name
    assert arrived.dataset.rows == 200
    assert wrong.exit_code == 1  # checked against the default model's spec
    assert f"does not fit the spec of {registry.default}" in wrong.output
    assert unknown.exit_code == 1
    assert "unknown model 'nope'" in unknown.output
    assert fraud.name in unknown.output
