"""Prometheus rules (promtool), the Grafana dashboard, and the metrics they rely on.

One deployment serves many models: whatever is about a model keeps its ``model_name`` label
from the service's metric through every aggregation to the alert and the dashboard legend.
Which series are about a model is read from the services' own collectors, so a metric that
gains the label makes every rule and panel on it subject to these checks.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "flywheel.json"
SERVICES = ("gateway", "router", "registry", "trainer", "monitor")
#: Series Prometheus makes itself, not a service.
BUILTIN = {"up"}
#: Labels every scraped series gets from the scrape configs (prometheus*.yml).
TARGET_LABELS = frozenset({"job", "instance", "service"})
MODEL = "model_name"
#: The dashboard's model selector, as a label matcher.
MODEL_MATCHER = 'model_name=~"$model"'
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip
#: Aggregation operators, each followed by its grouping (prefix form) and its argument.
_AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|group|stddev|stdvar|count|count_values|bottomk|topk|quantile)\s*"
    r"(?:(by|without)\s*\(([^)]*)\))?\s*\("
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=PROMETHEUS)


def test_rules_and_config_pass_promtool_check(promtool: str) -> None:
    rules = _promtool(promtool, "check", "rules", "rules/flywheel.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = _promtool(promtool, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_passes_its_promtool_unit_tests(promtool: str) -> None:
    result = _promtool(promtool, "test", "rules", "tests/flywheel_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(
        re.findall(r"alertname: (\w+)", (PROMETHEUS / "tests/flywheel_test.yml").read_text())
    )
    assert tested == {rule["alert"] for rule in _alert_rules()}


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses rule expressions only: each query becomes a recording rule.
    queries = [_concrete(expr) for expr in _dashboard_expressions()]
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(queries)]
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_issue_s_alerts_are_all_defined() -> None:
    required = {
        "HighInferenceLatency", "HighErrorRate", "RequestRateDrop", "ModelAccuracyDrop",
        "ModelLossRise", "DataDriftDetected", "ConsumerLagHigh", "ServiceDown",
        "DeadLettersIncreasing",
    }  # fmt: skip
    assert required <= {rule["alert"] for rule in _alert_rules()}


def test_the_dashboard_has_the_panels_operators_need() -> None:
    titles = " | ".join(p["title"].lower() for p in _panels())
    for needed in (
        "prediction rate per model version",
        "latency distribution",
        "traffic share per variant",
        "drift score per feature",
        "accuracy per variant",
        "experiment lift",
    ):
        assert needed in titles


def test_every_metric_in_rules_and_dashboard_is_exported_by_a_service() -> None:
    exported = set().union(*(_exported(service) for service in SERVICES))
    referenced = {name for expr in _expressions() for name in _metric_names(expr)}
    assert referenced, "no metric names found: the parser is broken"
    assert referenced - exported - BUILTIN == set()


def test_every_label_in_rules_and_dashboard_is_one_the_series_carry() -> None:
    problems = {expr: found for expr in _expressions() if (found := _label_problems(expr))}
    assert problems == {}


def test_metric_names_follow_prometheus_conventions() -> None:
    for service in SERVICES:
        for family in _registry(service).collect():
            assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name), family.name
            assert family.type == "counter" or not family.name.endswith("_total"), family.name
            if re.search(r"latency|duration", family.name):
                assert family.name.endswith("_seconds"), f"{family.name}: base unit missing"


def test_the_services_export_metrics_about_models() -> None:
    # Positive control for the per-model checks below: without such series they check nothing.
    assert {"ml_predictions_total", "router_state_lost_total"} <= _per_model_series()


def test_every_alert_about_a_model_fires_per_model_and_names_it() -> None:
    problems = {rule["alert"]: found for rule in _alert_rules() if (found := _alert_problems(rule))}
    assert problems == {}


def test_a_per_model_alert_that_loses_model_name_fails_the_check() -> None:
    per_model = "router_state_lost_total"
    named = {"summary": "{{ $labels.model_name }} lost its state"}

    def alert(expr: str, annotations: dict[str, str] = named) -> dict[str, Any]:
        return {"alert": "Probe", "expr": expr, "annotations": annotations}

    good = f"sum by (model_name) (increase({per_model}[5m])) > 0"
    assert _alert_problems(alert(good)) == []
    assert _alert_problems(alert(good, {"summary": "a state was lost"}))
    for bad in (
        f"sum(increase({per_model}[5m])) > 0",
        f"sum by (job) (increase({per_model}[5m])) > 0",
        f"sum without (model_name) (increase({per_model}[5m])) > 0",
        f"increase({per_model}[5m]) > 0",  # fires per replica: no aggregation at all
        f"{good} and on (job) ({per_model} > 0)",
        f"{good} / scalar(sum by (model_name) ({per_model}))",
    ):
        assert _alert_problems(alert(bad)), bad
    # An alert about no model (the series has no model_name) need not name one.
    assert _alert_problems(alert('up{job="gateway"} == 0', {"summary": "down"})) == []


def test_the_dashboard_selects_models_and_every_per_model_panel_follows_the_selection() -> None:
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    model = variables["model"]
    assert re.fullmatch(r"label_values\((\w+\s*,\s*)?model_name\)", _query_of(model))
    assert model["multi"] is True
    assert model["includeAll"] is True
    problems = {
        f"{panel['title']}: {target['expr']}": found
        for panel in _panels()
        for target in panel.get("targets", [])
        if (found := _panel_target_problems(panel, target))
    }
    assert problems == {}


def test_a_panel_that_ignores_the_model_selection_fails_the_check() -> None:
    per_model = "ml_predictions_total"
    good = {"expr": f"sum by (model_name) (rate({per_model}{{{MODEL_MATCHER}}}[5m]))"}
    panel: dict[str, Any] = {"title": "Probe"}
    assert _panel_target_problems(panel, {**good, "legendFormat": "{{model_name}}"}) == []
    assert _panel_target_problems(panel, {**good, "legendFormat": "rows"})
    assert (
        _panel_target_problems({**panel, "repeat": "model"}, {**good, "legendFormat": "rows"}) == []
    )
    for bad in (
        f"sum by (model_name) (rate({per_model}[5m]))",
        f'sum by (model_name) (rate({per_model}{{model_name="churn"}}[5m]))',
        f"sum(rate({per_model}{{{MODEL_MATCHER}}}[5m]))",
    ):
        assert _panel_target_problems(panel, {"expr": bad, "legendFormat": "{{model_name}}"}), bad


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "rules/flywheel.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return panels


def _query_of(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def _expressions() -> Iterator[str]:
    yield from (rule["expr"] for rule in _rules())
    yield from _dashboard_expressions()


def _dashboard_expressions() -> Iterator[str]:
    for panel in _panels():
        yield from (target["expr"] for target in panel.get("targets", []))


def _concrete(expr: str) -> str:
    """A dashboard query as Grafana sends it with "All" models selected."""
    return expr.replace("$model", ".+")


def _alert_problems(rule: dict[str, Any]) -> list[str]:
    """Why an alert about a model would not fire once per model, naming it."""
    expr = rule["expr"]
    if not _metric_names(expr) & _per_model_series():
        return []
    problems = _model_kept_problems(expr)
    if not _AGGREGATION.search(expr):
        problems.append("aggregates nothing: one alert per replica, not per model")
    if "$labels.model_name" not in rule.get("annotations", {}).get("summary", ""):
        problems.append("its summary does not name the model ({{ $labels.model_name }})")
    return problems


def _panel_target_problems(panel: dict[str, Any], target: dict[str, Any]) -> list[str]:
    """Why a panel's query about a model ignores the selection or blurs models together."""
    expr = target["expr"]
    per_model = _per_model_series()
    if not _metric_names(expr) & per_model:
        return []
    problems = _model_kept_problems(expr)
    for name, matchers in _SELECTOR.findall(expr):
        if name in per_model and MODEL_MATCHER not in re.sub(r"\s+", "", matchers):
            problems.append(f"{name} does not follow the model selector ({MODEL_MATCHER})")
    unfiltered = set(_metric_names(_SELECTOR.sub("", expr))) & per_model
    problems += [f"{name} does not follow the model selector" for name in sorted(unfiltered)]
    # A panel repeated per selected model shows one model; any other must tell them apart.
    if panel.get("repeat") != "model" and "{{model_name}}" not in target.get("legendFormat", ""):
        problems.append("its legend does not name the model ({{model_name}})")
    return problems


def _model_kept_problems(expr: str) -> list[str]:
    """Where an expression about models sums or matches them together."""
    problems = []
    for operator, modifier, labels in _AGGREGATION.findall(expr):
        names = _names(labels)
        if not (
            (modifier == "by" and MODEL in names) or (modifier == "without" and MODEL not in names)
        ):
            problems.append(f"{operator} {modifier or ''}({labels}) drops {MODEL}")
    for modifier, labels in _GROUPING.findall(expr):
        names = _names(labels)
        if (modifier == "on" and MODEL not in names) or (modifier == "ignoring" and MODEL in names):
            problems.append(f"{modifier} ({labels}) matches series of different models")
    if re.search(r"\bscalar\s*\(", expr):
        problems.append("scalar() is one number for every model")
    return problems


def _label_problems(expr: str) -> list[str]:
    """Labels an expression matches, groups or joins on that none of its series carries."""
    labels = _series_labels()
    names = _metric_names(expr) - BUILTIN
    carried = set(TARGET_LABELS).union(*(labels.get(name, frozenset()) for name in names))
    problems = [
        f"{name}{{{label}}}"
        for name, matchers in _SELECTOR.findall(expr)
        if name not in BUILTIN
        for label, _, _ in _MATCHER.findall(matchers)
        if label not in labels.get(name, frozenset()) | TARGET_LABELS
    ]
    for modifier, grouped in _GROUPING.findall(expr):
        problems += [f"{modifier} ({label})" for label in _names(grouped) - carried]
    return problems


def _names(labels: str) -> set[str]:
    return {label.strip() for label in labels.split(",") if label.strip()}


def _metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: not functions, keywords, labels or durations."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    tokens = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr)
    return {name for name, call in tokens if not call and name.lower() not in PROMQL_WORDS}


@functools.cache
def _registry(service: str) -> CollectorRegistry:
    app = importlib.import_module(f"services.{service}.app").create_app()
    registry: CollectorRegistry = app.state.runtime.registry
    return registry


def _exported(service: str) -> set[str]:
    names = set()
    for family in _registry(service).collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("_count", "_sum", "_created"),
        }.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


@functools.cache
def _series_labels() -> dict[str, frozenset[str]]:
    """Every series name the services export, with the label names it carries.

    Read from the collectors: ``collect()`` shows a label only on a series with a sample,
    and most have none before traffic. prometheus_client offers no public way to ask.
    """
    found: dict[str, frozenset[str]] = {}
    for service in SERVICES:
        for name, collector in _registry(service)._names_to_collectors.items():
            labels = frozenset(getattr(collector, "_labelnames", ()))
            bucket = frozenset({"le"}) if name.endswith("_bucket") else frozenset()
            found[name] = found.get(name, frozenset()) | labels | bucket
    return found


def _per_model_series() -> set[str]:
    return {name for name, labels in _series_labels().items() if MODEL in labels}
