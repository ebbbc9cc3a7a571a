"""``flywheel report ab``: Markdown and HTML with a PNG plot, from the router's JSON report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flywheel import report as report_cli
from flywheel.cli import app
from services.router.core import Experiment
from services.router.core.decision import ArmStats, DecisionConfig, ExperimentStats
from services.router.core.experiment import ExperimentPlan
from services.router.core.lifecycle import look
from services.router.core.report import build_report, look_point

OPENED = datetime(2026, 1, 1, tzinfo=UTC)


def _report() -> dict[str, Any]:
    plan = ExperimentPlan(shares=(0.5,), decision=DecisionConfig(practical_minimum=0.01))
    experiment = Experiment(
        experiment_id="exp-42",
        model_name="customer-segment",
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=0.5,
        opened_at=OPENED,
        plan=plan,
    )
    points = []
    for i, n in enumerate((200, 600, 1200), start=1):
        stats = ExperimentStats.single(
            ArmStats(assigned=n, closed=n, labelled=n, correct=round(0.8 * n)),
            ArmStats(assigned=n, closed=n, labelled=n, correct=round(0.88 * n)),
            0.5,
        )
        experiment = look(experiment, stats, OPENED + timedelta(minutes=i))
        point = look_point(experiment, stats, OPENED + timedelta(minutes=i))
        assert point is not None
        points.append(point)
    return build_report(experiment, stats, points).model_dump(mode="json")


def test_markdown_report_carries_the_decision_intervals_and_the_plot(tmp_path: Path) -> None:
    report = _report()
    path = report_cli.write_report(report, tmp_path, "md")
    text = path.read_text()
    assert path.name == "ab-exp-42.md"
    assert "decision **promote**" in text
    assert "always-valid interval (running)" in text
    assert "not valid under peeking" in text
    assert "![lift over time](ab-exp-42.png)" in text
    assert (tmp_path / "ab-exp-42.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_report_is_a_page_with_the_same_tables(tmp_path: Path) -> None:
    path = report_cli.write_report(_report(), tmp_path, "html")
    page = path.read_text()
    assert page.startswith("<!doctype html>")
    assert '<img src="ab-exp-42.png">' in page
    assert "<h2>Guardrails" in page


def test_cli_fetches_the_report_and_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str]] = []

    def fake_fetch(router_url: str, experiment_id: str) -> dict[str, Any]:
        asked.append((router_url, experiment_id))
        return _report()

    monkeypatch.setattr(report_cli, "fetch_report", fake_fetch)
    result = CliRunner().invoke(
        app, ["report", "ab", "exp-42", "--router-url", "http://r:1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert asked == [("http://r:1", "exp-42")]
    assert (tmp_path / "ab-exp-42.md").exists()
