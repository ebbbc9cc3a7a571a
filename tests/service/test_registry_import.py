"""``POST /v1/models/{name}/imports`` and ``flywheel models import`` with in-memory stores."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from _registry_fakes import FakeSpecStore
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.linear_model import LinearRegression, LogisticRegression
from typer.testing import CliRunner

from flywheel.cli import app as cli
from services.registry.importing import ImportRecord, ImportScorer, ModelImporter
from services.registry.routes import imports_router
from shared.catalog import ModelCatalog, RegisteredSpec
from shared.errors import NotFoundError
from shared.events import ModelTrained
from shared.http_errors import install_error_handlers
from shared.scoring import UnusableModelError
from shared.spec import ModelSpec
from shared.testing import RecordingPublisher

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FRAUD = ModelSpec.model_validate(
    {
        "name": "fraud",
        "label": "is_fraud",
        "classes": ["legit", "fraud"],
        "features": [
            {"name": "amount", "type": "numeric", "min": 0},
            {"name": "channel", "type": "categorical", "categories": ["web", "pos"]},
        ],
    }
)
PRICE = ModelSpec.model_validate(
    {
        "name": "price",
        "label": "price",
        "task": "regression",
        "features": [{"name": "area", "type": "numeric"}],
    }
)


def _fraud_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.exponential(100, n)
    fraud = (amount + rng.normal(0, 40, n)) > 150
    return pd.DataFrame(
        {
            "amount": amount,
            "channel": rng.choice(["web", "pos"], n),
            "is_fraud": np.where(fraud, "fraud", "legit"),
        }
    )


class Classifier:
    """An 'external' model: logistic regression on the amount, answering in spec order."""

    flavor = "lightgbm"

    def __init__(self) -> None:
        rows = _fraud_rows(500, seed=1)
        self.model = LogisticRegression().fit(rows[["amount"]], rows["is_fraud"])

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        order = [list(self.model.classes_).index(c) for c in FRAUD.classes]
        return np.asarray(self.model.predict_proba(frame[["amount"]])[:, order])

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        raise AssertionError("not a regressor")


class Regressor:
    flavor = "pyfunc"

    def __init__(self) -> None:
        self.model = LinearRegression().fit(pd.DataFrame({"area": [1.0, 2.0]}), [2.0, 4.0])

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        raise AssertionError("not a classifier")

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict(frame[["area"]]))


@dataclass
class FakeImports:
    """Source runs' holdouts by model URI; the import runs logged."""

    holdouts: dict[str, pd.DataFrame] = field(default_factory=dict)
    logged: list[ImportRecord] = field(default_factory=list)

    def source_holdout(self, model_uri: str) -> pd.DataFrame | None:
        return self.holdouts.get(model_uri)

    def log_import(self, record: ImportRecord) -> str:
        self.logged.append(record)
        return f"import-run-{len(self.logged)}"


MODELS: dict[str, ImportScorer] = {
    "runs:/ext/model": Classifier(),
    "runs:/ext-price/model": Regressor(),
}


def _load(model_uri: str, spec: ModelSpec) -> ImportScorer:
    if model_uri == "runs:/onnx/model":
        raise UnusableModelError("unknown-flavour", "logged as ['onnx'], none of [...]")
    if model_uri not in MODELS:
        raise NotFoundError(f"no model at {model_uri}")
    return MODELS[model_uri]


@dataclass
class Registry:
    client: httpx.AsyncClient
    imports: FakeImports
    publisher: RecordingPublisher

    async def post(self, name: str, body: dict[str, Any], **options: Any) -> httpx.Response:
        headers = options.pop("headers", AUTH)
        return await self.client.post(f"/v1/models/{name}/imports", json=body, headers=headers)

    def trained(self) -> list[ModelTrained]:
        return [e for e in self.publisher.events if isinstance(e, ModelTrained)]


def _app(imports: FakeImports, publisher: RecordingPublisher) -> FastAPI:
    store = FakeSpecStore({"fraud": RegisteredSpec(1, FRAUD), "price": RegisteredSpec(1, PRICE)})
    importer = ModelImporter(ModelCatalog(store), imports, _load, publisher)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(imports_router(importer, TOKEN))
    return app


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    imports, publisher = FakeImports(), RecordingPublisher()
    transport = httpx.ASGITransport(app=_app(imports, publisher))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        yield Registry(client, imports, publisher)


def _upload(frame: pd.DataFrame, fmt: str = "parquet") -> dict[str, str]:
    buffer = io.BytesIO()
    if fmt == "csv":
        buffer.write(frame.to_csv(index=False).encode())
    else:
        frame.to_parquet(buffer, index=False)
    return {"format": fmt, "content_base64": base64.b64encode(buffer.getvalue()).decode()}


async def test_an_import_is_scored_logged_and_handed_to_the_gates(registry: Registry) -> None:
    holdout = _fraud_rows(400).assign(customer_id=range(400))
    body = {"model_uri": "runs:/ext/model", "holdout": _upload(holdout), "requested_by": "ana"}
    answer = await registry.post("fraud", body)

    assert answer.status_code == 202, answer.text
    [event] = registry.trained()
    [record] = registry.imports.logged
    view = answer.json()
    assert (view["run_id"], view["model_uri"]) == ("import-run-1", "runs:/import-run-1/model")
    assert (view["flavor"], view["source_model_uri"]) == ("lightgbm", "runs:/ext/model")
    assert "the gates follow" in view["detail"]
    assert (event.model_name, event.run_id, event.trigger) == ("fraud", "import-run-1", "import")
    assert (event.algorithm, event.model_uri) == ("imported:lightgbm", "runs:/import-run-1/model")
    # The metrics are the external model's on these 400 rows, not made up.
    model = Classifier().model
    accuracy = float(np.mean(model.predict(holdout[["amount"]]) == holdout["is_fraud"]))
    assert event.metrics.accuracy == pytest.approx(accuracy)
    assert 0.6 < accuracy < 1.0
    assert view["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert event.metrics.validation_rows == 400
    assert (record.source_uri, record.requested_by, record.holdout_source) == (
        "runs:/ext/model",
        "ana",
        "upload",
    )
    assert list(record.evaluation.holdout.columns) == ["amount", "channel", "is_fraud"]
    assert len(record.evaluation.reference) == len(record.evaluation.predictions) == 400
    assert record.data_version == event.data_version


async def test_a_regressor_is_imported_from_a_csv_holdout(registry: Registry) -> None:
    holdout = pd.DataFrame({"area": [1.0, 2.0, 3.0, 4.0], "price": [2.0, 4.0, 7.0, 8.0]})
    body = {"model_uri": "runs:/ext-price/model", "holdout": _upload(holdout, "csv")}
    answer = await registry.post("price", body)

    assert answer.status_code == 202, answer.text
    [event] = registry.trained()
    assert event.metrics.is_regression
    assert event.metrics.mae == pytest.approx(0.25)  # predicts 2, 4, 6, 8
    assert event.metrics.rmse == pytest.approx(0.5)
    assert event.algorithm == "imported:pyfunc"
    predictions = registry.imports.logged[0].evaluation.predictions["prediction"]
    assert predictions.tolist() == pytest.approx([2.0, 4.0, 6.0, 8.0])


async def test_an_unregistered_model_is_a_404_naming_the_known_ones(registry: Registry) -> None:
    body = {"model_uri": "runs:/ext/model", "holdout": _upload(_fraud_rows(10))}
    answer = await registry.post("churn", body)
    assert answer.status_code == 404
    assert "unknown model 'churn'; registered models: fraud, price" in answer.json()["detail"]
    assert registry.trained() == []
    assert registry.imports.logged == []


@pytest.mark.parametrize(
    ("model_uri", "status", "says"),
    [
        ("runs:/onnx/model", 422, "unknown-flavour model: logged as ['onnx']"),
        ("runs:/nothing/model", 404, "no model at runs:/nothing/model"),
    ],
)
async def test_a_model_that_cannot_serve_the_spec_is_refused(
    registry: Registry, model_uri: str, status: int, says: str
) -> None:
    body = {"model_uri": model_uri, "holdout": _upload(_fraud_rows(10))}
    answer = await registry.post("fraud", body)
    assert answer.status_code == status
    assert says in answer.json()["detail"]
    assert registry.trained() == []


@pytest.mark.parametrize(
    ("holdout", "says"),
    [
        (
            _fraud_rows(10).drop(columns=["is_fraud"]),
            "holdout: missing columns ['is_fraud']; the spec expects ['amount', 'channel', "
            "'is_fraud']",
        ),
        (_fraud_rows(10).assign(channel="app"), "holdout: channel: unknown categories ['app']"),
        (_fraud_rows(10).assign(is_fraud="maybe"), "is_fraud: unknown classes ['maybe']"),
    ],
)
async def test_a_holdout_that_does_not_fit_the_spec_is_a_422_naming_why(
    registry: Registry, holdout: pd.DataFrame, says: str
) -> None:
    answer = await registry.post(
        "fraud", {"model_uri": "runs:/ext/model", "holdout": _upload(holdout)}
    )
    assert answer.status_code == 422
    assert says in answer.json()["detail"]
    assert registry.trained() == []
    assert registry.imports.logged == []


async def test_without_a_holdout_the_source_run_s_is_used_or_the_missing_one_named(
    registry: Registry,
) -> None:
    missing = await registry.post("fraud", {"model_uri": "runs:/ext/model"})
    registry.imports.holdouts["runs:/ext/model"] = _fraud_rows(50)
    found = await registry.post("fraud", {"model_uri": "runs:/ext/model"})

    assert missing.status_code == 422
    assert missing.json()["detail"] == (
        "no holdout was given and the run of runs:/ext/model logged none; a holdout with "
        "columns amount, channel, is_fraud is needed to compute the reference and the "
        "gates' metrics; pass --holdout FILE"
    )
    assert found.status_code == 202, found.text
    assert found.json()["holdout_source"] == "source run of runs:/ext/model"
    assert registry.trained()[0].metrics.validation_rows == 50


async def test_bad_requests_are_refused(registry: Registry) -> None:
    unauthorised = await registry.post("fraud", {"model_uri": "runs:/ext/model"}, headers={})
    not_base64 = await registry.post(
        "fraud",
        {"model_uri": "runs:/ext/model", "holdout": {"format": "csv", "content_base64": "@@"}},
    )
    unreadable = await registry.post(
        "fraud",
        {
            "model_uri": "runs:/ext/model",
            "holdout": {"format": "parquet", "content_base64": "eA=="},
        },
    )
    assert unauthorised.status_code == 401
    assert not_base64.status_code == 422
    assert "holdout.content_base64: not base64" in not_base64.json()["detail"]
    assert unreadable.status_code == 422
    assert "not a readable parquet file" in unreadable.json()["detail"]
    assert registry.trained() == []


# --- flywheel models import -------------------------------------------------------------------


@pytest.fixture
def cli_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[FakeImports, RecordingPublisher]]:
    imports, publisher = FakeImports(), RecordingPublisher()
    client = TestClient(_app(imports, publisher))
    post = client.post
    monkeypatch.setattr(httpx, "post", lambda url, timeout=None, **options: post(url, **options))
    with client:
        yield imports, publisher


def test_the_cli_sends_the_holdout_file_and_prints_the_run(
    cli_registry: tuple[FakeImports, RecordingPublisher], tmp_path: Path
) -> None:
    imports, publisher = cli_registry
    path = tmp_path / "holdout.csv"
    _fraud_rows(120).to_csv(path, index=False)
    args = ["models", "import", "fraud", "--model-uri", "runs:/ext/model", "--holdout", str(path)]
    done = CliRunner().invoke(cli, args, env={"REGISTRY_ADMIN_TOKEN": TOKEN})

    assert done.exit_code == 0, done.output
    assert "fraud: imported runs:/ext/model (lightgbm) as run import-run-1" in done.output
    assert "on 120 holdout rows: accuracy" in done.output
    assert "`flywheel models show fraud`" in done.output
    assert imports.logged[0].evaluation.metrics.validation_rows == 120
    assert len(publisher.events) == 1


def test_the_cli_prints_why_an_import_is_refused(
    cli_registry: tuple[FakeImports, RecordingPublisher], tmp_path: Path
) -> None:
    path = tmp_path / "holdout.json"
    path.write_text("{}")
    wrong_suffix = CliRunner().invoke(
        cli,
        ["models", "import", "fraud", "--model-uri", "runs:/ext/model", "--holdout", str(path)],
        env={"REGISTRY_ADMIN_TOKEN": TOKEN},
    )
    no_holdout = CliRunner().invoke(
        cli,
        ["models", "import", "fraud", "--model-uri", "runs:/ext/model"],
        env={"REGISTRY_ADMIN_TOKEN": TOKEN},
    )
    assert wrong_suffix.exit_code == 1
    assert "a holdout is a .csv, .parquet, .pq file" in wrong_suffix.output
    assert no_holdout.exit_code == 1
    assert "import refused (422)" in no_holdout.output
    assert "pass --holdout FILE" in no_holdout.output
    assert cli_registry[1].events == []
