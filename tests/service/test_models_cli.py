"""``flywheel models``, ``promote``, ``rollback`` and ``retrain`` against an in-process registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _registry_fakes import FakeModelRegistry, FakeSpecStore
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from flywheel import models_cli
from flywheel.cli import app as cli
from services.registry.admin import RegistryAdmin
from services.registry.ports import VersionInfo
from services.registry.routes import admin_router, models_admin_router, models_router
from services.registry.specs import ModelSpecs
from shared.catalog import ModelCatalog
from shared.events import Event, RetrainModel
from shared.http_errors import install_error_handlers
from shared.spec import load_spec
from shared.testing import RecordingPublisher

TOKEN = "s3cret"
DEFAULT = load_spec().name
FRAUD: dict[str, Any] = {
    "name": "fraud",
    "label": "is_fraud",
    "classes": ["legit", "fraud"],
    "features": [
        {"name": "amount", "type": "numeric", "min": 0, "max": 100000},
        {"name": "channel", "type": "categorical", "categories": ["web", "pos"]},
    ],
}


class Stack:
    def __init__(self) -> None:
        self.store, self.models = FakeSpecStore(), FakeModelRegistry()
        self.publisher = RecordingPublisher()
        catalog = ModelCatalog(self.store, DEFAULT, load_spec())
        specs = ModelSpecs(self.store, catalog, self.publisher, (DEFAULT, load_spec()))
        app = FastAPI()
        install_error_handlers(app)
        app.include_router(models_router(self.models, catalog))
        app.include_router(models_admin_router(specs, TOKEN))
        app.include_router(admin_router(RegistryAdmin(self.models, self.publisher), TOKEN))
        self.client = TestClient(app)
        self.runner = CliRunner()

    def run(self, *args: str) -> Any:
        return self.runner.invoke(cli, [*args], env={"REGISTRY_ADMIN_TOKEN": TOKEN})

    def versions(self, name: str, count: int, **aliases: str) -> None:
        self.models.versions[name] = [VersionInfo(str(i), f"run-{i}") for i in range(1, count + 1)]
        self.models.aliases[name] = dict(aliases)


def _untimed(send: Any) -> Any:
    """``send`` without ``timeout``, which TestClient ignores (and warns about)."""
    return lambda url, timeout=None, **options: send(url, **options)


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    built = Stack()
    # The CLI's module-level httpx calls reach the in-process app, whatever the URL.
    monkeypatch.setattr(httpx, "get", _untimed(built.client.get))
    monkeypatch.setattr(httpx, "post", _untimed(built.client.post))
    with built.client:
        yield built


def _spec_file(tmp_path: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_create_then_again_then_a_refused_change(stack: Stack, tmp_path: Path) -> None:
    path = _spec_file(tmp_path, FRAUD)
    created = stack.run("models", "create", "fraud", "--spec", str(path))
    again = stack.run("models", "create", "fraud", "--spec", str(path))
    broken = _spec_file(tmp_path, {**FRAUD, "classes": ["fraud", "legit"]}, "broken.yaml")
    refused = stack.run("models", "create", "fraud", "--spec", str(broken))

    assert created.exit_code == 0, created.output
    assert created.output.strip() == "fraud: registered (spec revision 1)"
    assert again.output.strip() == "fraud: unchanged, the spec is the same (spec revision 1)"
    assert refused.exit_code == 1
    assert "registration refused (409)" in refused.output
    assert "  - classes changed: ['legit', 'fraud'] -> ['fraud', 'legit']" in refused.output
    assert [w[:2] for w in stack.store.writes] == [("fraud", 1)]


def test_an_invalid_spec_file_or_another_name_is_refused(stack: Stack, tmp_path: Path) -> None:
    invalid = _spec_file(tmp_path, {**FRAUD, "classes": ["legit"]})
    bad = stack.run("models", "create", "fraud", "--spec", str(invalid))
    other = stack.run("models", "create", "churn", "--spec", str(_spec_file(tmp_path, FRAUD)))

    assert bad.exit_code == 1
    assert "is not a valid model spec" in bad.output
    assert "classes" in bad.output
    assert other.exit_code == 1
    assert "(422): spec.name 'fraud' differs from the model name 'churn'" in other.output
    assert stack.store.writes == []


def test_list_and_show(stack: Stack, tmp_path: Path) -> None:
    stack.run("models", "create", "fraud", "--spec", str(_spec_file(tmp_path, FRAUD)))
    stack.versions("fraud", 2, champion="1", challenger="2")
    listed = stack.run("models", "list")
    shown = stack.run("models", "show", "fraud")
    unknown = stack.run("models", "show", "churn")

    assert listed.exit_code == 0, listed.output
    lines = [line.split() for line in listed.output.splitlines()]
    assert lines == [
        ["MODEL", "SPEC", "REVISION", "CHAMPION", "CHALLENGER"],
        [DEFAULT, "0", "-", "-"],
        ["fraud", "1", "1", "2"],
    ]
    assert "fraud (spec revision 1)" in shown.output
    assert "classes: legit, fraud" in shown.output
    assert "aliases: challenger v2, champion v1" in shown.output
    assert [line.split()[:2] for line in shown.output.splitlines()[-2:]] == [
        ["amount", "numeric"],
        ["channel", "categorical"],
    ]
    assert "[0, 100000]" in shown.output
    assert unknown.exit_code == 1
    assert "registered models: customer-segment, fraud" in unknown.output


def test_promote_and_rollback_name_the_model_in_every_form(stack: Stack) -> None:
    stack.versions("fraud", 3, champion="1", challenger="2")
    stack.versions(DEFAULT, 3, champion="1", challenger="3")

    named = stack.run("promote", "fraud")  # the challenger
    versioned = stack.run("promote", "fraud", "3")
    older = stack.run("promote", "1", "--model", "fraud")
    back = stack.run("rollback", "fraud")
    default = stack.run("promote", "2")  # the default model's version 2, as before

    assert named.output.strip() == "fraud v2 is champion (was v1)", named.output
    assert versioned.output.strip() == "fraud v3 is champion (was v2)"
    assert older.output.strip() == "fraud v1 is champion (was v3)"
    assert back.output.strip() == "fraud v3 is champion again (v1 rolled back)"
    assert default.output.strip() == f"{DEFAULT} v2 is champion (was v1)"
    events = [(e.type_name(), getattr(e, "model_name", "")) for e in stack.publisher.events]
    promoted, rolled_back = "model-promoted", "model-rolled-back"
    assert events == [(promoted, "fraud")] * 3 + [(rolled_back, "fraud"), (promoted, DEFAULT)]
    disagree = stack.run("rollback", "fraud", "--model", "churn")
    assert disagree.exit_code == 2
    assert "disagree" in disagree.output


def test_retrain_names_the_model(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Event] = []

    async def publish(kafka: Any, event: Event) -> None:
        sent.append(event)

    monkeypatch.setattr(models_cli, "publish_event", publish)
    monkeypatch.setattr(models_cli, "operator_connection", lambda *_: "kafka:9092")
    named = stack.run("retrain", "fraud", "--reason", "bad week")
    stack.run("retrain", "--model", "churn")
    stack.run("retrain")

    assert named.exit_code == 0, named.output
    commands = [e for e in sent if isinstance(e, RetrainModel)]
    assert len(commands) == len(sent) == 3
    assert [(c.model_name, c.reason) for c in commands] == [
        ("fraud", "bad week"),
        ("churn", "manual"),
        (DEFAULT, "manual"),
    ]
    assert "sent for fraud" in named.output
