"""A real Prometheus scrapes a running gateway and monitor; its query counts the predictions."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from _support import free_port, register_champion

from flywheel.infra import Endpoints
from flywheel.infra.stack import start_services, stop_services
from shared.datasets import generate_customers
from shared.spec import load_spec

pytestmark = pytest.mark.integration

SPEC = load_spec()
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
DASHBOARD = (
    Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "flywheel.json"
)
REQUESTS = 37


@pytest.fixture(scope="module")
def model_name() -> str:
    return f"prom-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def services(
    infra: Endpoints, tmp_path_factory: pytest.TempPathFactory, model_name: str
) -> Iterator[dict[str, str]]:
    register_champion(infra, model_name)
    run_dir = tmp_path_factory.mktemp("prom-services")
    endpoints = dataclasses.replace(infra, run_dir=run_dir)
    ports = {"gateway": free_port(), "monitor": free_port()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLYWHEEL_MODEL_NAME", model_name)
        patch.setenv("MONITOR_REFERENCE_REFRESH_S", "1")
        try:
            yield start_services(endpoints, ports=ports, names=ports, timeout=120)
        finally:
            stop_services(run_dir, names=list(ports))


@pytest.fixture(scope="module")
def prometheus(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory, promtool: str
) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "the prometheus package provides no prometheus binary"
    home = tmp_path_factory.mktemp("prometheus")
    shutil.copy(DEPLOY / "prometheus.local.yml", home / "prometheus.yml")
    shutil.copytree(DEPLOY / "rules", home / "rules")
    (home / "targets").mkdir()
    targets = [
        {"targets": [url.removeprefix("http://")], "labels": {"job": job, "service": job}}
        for job, url in services.items()
    ]
    (home / "targets" / "flywheel.json").write_text(json.dumps(targets))
    port = free_port()
    argv = [
        binary,
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (home / "prometheus.log").open("w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _query(prometheus: str, expr: str) -> list[dict[str, object]]:
    try:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    except httpx.HTTPError:
        return []
    result: list[dict[str, object]] = answer.json()["data"]["result"]
    return result


def _eventually(check: Callable[[], object], timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def _value(prometheus: str, expr: str) -> float | None:
    result = _query(prometheus, expr)
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


def test_prometheus_counts_the_predictions_the_gateway_answered(
    services: dict[str, str], prometheus: str, model_name: str
) -> None:
    rows = generate_customers(REQUESTS, seed=12)[list(SPEC.feature_names)].to_dict("records")
    answered = 0
    for row in rows:
        response = httpx.post(
            f"{services['gateway']}/v1/predict", json={"features": row}, timeout=30
        )
        answered += response.status_code == 200
    assert answered == REQUESTS
    expr = 'sum(prediction_requests_total{job="gateway",status="200"})'
    assert _eventually(lambda: _value(prometheus, expr) == REQUESTS)
    assert _eventually(lambda: _value(prometheus, 'up{job="monitor"}') == 1)
    # The monitor consumed the same predictions from Kafka, in batches. Its model's only:
    # the session's other modules leave other models' predictions on the shared topic.
    counted = f'sum(monitor_observations_total{{model_name="{model_name}"}})'
    # A monitor joining after other modules catches up on their backlog first: 120 s.
    seen = _eventually(lambda: _value(prometheus, counted) == REQUESTS, timeout=120)
    assert seen, f"{counted} = {_value(prometheus, counted)}, not {REQUESTS}"


def test_the_monitor_exports_the_champion_s_validation_accuracy_and_every_rule_evaluates(
    services: dict[str, str], prometheus: str
) -> None:
    # The accuracy alert compares live accuracy with this gauge; the monitor sets it once it
    # loaded the champion's reference (at its first batch: the test above sent one).
    validation = 'ml_model_validation_accuracy{job="monitor"}'
    found = _eventually(lambda: _value(prometheus, validation))
    assert isinstance(found, float)
    assert 0.0 < found <= 1.0

    def rules() -> dict[str, str]:
        """Each rule's health once every rule was evaluated (never: "0001-01-01...")."""
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        listed = [rule for group in groups for rule in group["rules"]]
        if not listed or any(r["lastEvaluation"].startswith("0001") for r in listed):
            return {}
        return {str(r["name"]): str(r["health"]) for r in listed}

    health = _eventually(rules, timeout=90)
    assert isinstance(health, dict)
    assert "DeadLettersIncreasing" in health
    # A join that matches many-to-many, or a typo, shows as "err" here, not in promtool's tests.
    assert {name: state for name, state in health.items() if state != "ok"} == {}


def test_the_dashboard_s_model_selector_lists_the_model_and_its_panels_show_it(
    services: dict[str, str], prometheus: str, model_name: str
) -> None:
    # Grafana fills the model selector from the label's values (label_values(model_name)).
    def listed() -> bool:
        answer = httpx.get(f"{prometheus}/api/v1/label/model_name/values", timeout=5).json()
        return model_name in answer["data"]

    assert _eventually(listed)
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = {
        panel["title"]: [
            target["expr"].replace("$model", model_name) for target in panel["targets"]
        ]
        for panel in panels
    }
    for title, exprs in queries.items():
        for expr in exprs:
            answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
            assert answer.json()["status"] == "success", (title, expr, answer.text)
    # The predictions the first test sent show on the model's own line.
    rate = queries["Prediction rate per model version"][0]
    found = _eventually(lambda: _query(prometheus, rate))
    assert isinstance(found, list)
    assert {series["metric"]["model_name"] for series in found} == {model_name}
