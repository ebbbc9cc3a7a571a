"""Prometheus rules (promtool), the Grafana dashboard, and the metrics they rely on."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "flywheel.json"
SERVICES = ("gateway", "router", "registry", "trainer", "monitor")
#: Series Prometheus makes itself, not a service.
BUILTIN = {"up"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip


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
    assert tested == set(_alerts())


def test_the_issue_s_alerts_are_all_defined() -> None:
    required = {
        "HighInferenceLatency", "HighErrorRate", "RequestRateDrop", "ModelAccuracyDrop",
        "DataDriftDetected", "ConsumerLagHigh", "ServiceDown", "DeadLettersIncreasing",
    }  # fmt: skip
    assert required <= set(_alerts())


def test_the_dashboard_has_the_panels_operators_need() -> None:
    titles = " | ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
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


def test_metric_names_follow_prometheus_conventions() -> None:
    for service in SERVICES:
        for family in _registry(service).collect():
            assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name), family.name
            assert family.type == "counter" or not family.name.endswith("_total"), family.name
            if re.search(r"latency|duration", family.name):
                assert family.name.endswith("_seconds"), f"{family.name}: base unit missing"


def _alerts() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "rules/flywheel.yml").read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def _expressions() -> Iterator[str]:
    groups = yaml.safe_load((PROMETHEUS / "rules/flywheel.yml").read_text())["groups"]
    yield from (rule["expr"] for group in groups for rule in group["rules"])
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        yield from (target["expr"] for target in panel.get("targets", []))


def _metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: not functions, keywords, labels or durations."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    tokens = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr)
    return {name for name, call in tokens if not call and name.lower() not in PROMQL_WORDS}


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
