"""``flywheel report ab ID``: an experiment's A/B report as Markdown or HTML, with a PNG plot.

The numbers come from the router's ``GET /v1/experiments/{id}/report``; this
module only lays them out and draws the lift with its interval over the looks.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import httpx
import typer

from shared.settings import SERVICE_PORTS

Report = dict[str, Any]

DEFAULT_ROUTER = f"http://127.0.0.1:{SERVICE_PORTS['router']}"


def fetch_report(router_url: str, experiment_id: str) -> Report:
    """The report JSON of one experiment from the router."""
    response = httpx.get(f"{router_url}/v1/experiments/{experiment_id}/report", timeout=30)
    if response.status_code == 404:
        raise typer.BadParameter(f"the router knows no experiment {experiment_id!r}")
    response.raise_for_status()
    report: Report = response.json()
    return report


def plot_lift(report: Report, path: Path) -> Path:
    """Draw the difference (challenger − champion) and its intervals at each look, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = report["history"]
    looks = [p["n_champion"] + p["n_challenger"] for p in history]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    # A proportion's difference lies in [−1, 1]; a loss's or reward's has no such bound.
    bound = 1.0 if report["config"]["decision"]["metric"] == "accuracy" else math.inf
    if history:
        low = [max(p["ci_low"], -bound) for p in history]
        high = [min(p["ci_high"], bound) for p in history]
        ax.fill_between(looks, low, high, alpha=0.25, label="always-valid interval (running)")
        ax.plot(looks, [p["fixed_ci_low"] for p in history], "k:", lw=0.8)
        ax.plot(looks, [p["fixed_ci_high"] for p in history], "k:", lw=0.8, label="fixed-horizon")
        ax.plot(looks, [p["diff"] for p in history], "o-", ms=3, label="difference")
    ax.axhline(0.0, color="grey", lw=0.8)
    minimum = report["config"]["decision"]["practical_minimum"]
    if minimum:
        ax.axhline(minimum, color="green", lw=0.8, ls="--", label="practical minimum")
    metric = report["config"]["decision"]["metric"]
    ax.set(xlabel="labelled outcomes (both arms)", ylabel=f"{metric}: challenger − champion")
    ax.set_title(f"Experiment {report['experiment_id'][:8]}: {report['decision'] or 'no look yet'}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _interval(pair: Any) -> str:
    return "–" if pair is None else f"[{_num(pair[0])}, {_num(pair[1])}]"


def _is_loss(report: Report) -> bool:
    return report.get("primary_metric") in ("squared_error", "absolute_error")


def _arm_header(report: Report) -> list[str]:
    if _is_loss(report):  # a regressor: its per-outcome loss, lower is better
        size = "RMSE" if report["primary_metric"] == "squared_error" else "MAE"
        return ["arm", "version", "assigned", "outcomes", "label rate", "mean loss", size, "p95 ms"]
    return ["arm", "version", "assigned", "labelled", "label rate", "accuracy", "p95 ms"]


def _loss_arm_rows(report: Report) -> list[list[str]]:
    size = "rmse" if report["primary_metric"] == "squared_error" else "mae"
    return [
        [
            name,
            _num(arm["version"]),
            str(arm["assigned"]),
            str(arm["loss_outcomes"]),
            _num(arm["label_rate"]),
            _num(arm["mean_loss"]),
            _num(arm[size]),
            _num(arm["p95_latency_ms"]),
        ]
        for name, arm in report["arms"].items()
    ]


def _arm_rows(report: Report) -> list[list[str]]:
    if _is_loss(report):
        return _loss_arm_rows(report)
    rows = []
    for name, arm in report["arms"].items():
        rows.append(
            [
                name,
                _num(arm["version"]),
                str(arm["assigned"]),
                str(arm["labelled"]),
                _num(arm["label_rate"]),
                _num(arm["accuracy"]),
                _num(arm["p95_latency_ms"]),
            ]
        )
    return rows


def _primary_rows(report: Report) -> list[list[str]]:
    p = report["primary"]
    if p is None:
        return [["primary metric", "not enough outcomes yet"]]
    lower = " (lower is better)" if p.get("lower_is_better") else ""
    return [
        ["metric", p["name"] + lower],
        ["champion / challenger", f"{_num(p['champion'])} / {_num(p['challenger'])}"],
        ["difference (decision scale)", _num(p["diff"])],
        ["always-valid interval (running)", _interval(p["always_valid_ci"])],
        ["always-valid p (running minimum)", _num(p["always_valid_p"])],
        ["e-value", _num(p["e_value"])],
        [
            "relative lift (delta method)",
            f"{_num(p['relative_lift'])} {_interval(p['relative_lift_ci'])}",
        ],
        [f"effect size ({p['effect_size_kind']})", _num(p["effect_size"])],
        ["minimum detectable difference (80 % power)", _num(p["minimum_detectable_effect"])],
        ["required n per arm (80 % power)", _num(p["required_n_per_arm"])],
        [
            "fixed-horizon p and interval",
            f"{_num(p['fixed_horizon_p'])} {_interval(p['fixed_horizon_ci'])} — "
            f"{p['fixed_horizon_note']}",
        ],
    ]


def _guardrail_rows(report: Report) -> list[list[str]]:
    return [
        [
            g["name"],
            _num(g["deterioration"]),
            _interval((g["lower"], g["upper"])),
            _num(g["margin"]),
            "harmed" if g["harmed"] else ("non-inferior" if g["non_inferior"] else "open"),
        ]
        for g in report["guardrails"]
    ]


def _sections(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    srm = report["srm"]
    return [
        ("Arms", _arm_header(report), _arm_rows(report)),
        ("Primary metric", ["", "value"], _primary_rows(report)),
        (
            "Guardrails (one-sided; deterioration > 0 is worse)",
            ["guardrail", "deterioration", "always-valid interval", "margin", "state"],
            _guardrail_rows(report),
        ),
        (
            "Sample ratio",
            ["check", "value"],
            [
                ["expected challenger share", _num(srm["expected_challenger_share"])],
                ["χ² p on assigned units (per period, summed)", _num(srm["assigned_p"])],
                ["periods tested (df)", _num(srm.get("chi_square_df"))],
                ["mismatch (p < 0.001 → hold)", str(srm["mismatch"])],
            ],
        ),
    ]


def _summary(report: Report) -> str:
    return (
        f"model {report['model_name']}: champion {report['champion_version']} vs challenger "
        f"{report['challenger_version']} — status **{report['status']}**, decision "
        f"**{report['decision'] or 'none yet'}** ({', '.join(report['reasons']) or 'no reasons'}) "
        f"after {report['looks']} looks; stage {report['stage']}, "
        f"share {report['challenger_share']:.0%}"
    )


def render_markdown(report: Report, plot_name: str) -> str:
    """The report as Markdown, the plot linked by file name."""
    lines = [f"# A/B report — experiment {report['experiment_id']}", "", _summary(report), ""]
    lines += [f"![lift over time]({plot_name})", ""]
    for title, header, rows in _sections(report):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |"]
        lines += ["|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += [""]
    lines += [
        "Every number above is recomputable from `sufficient_statistics` in the JSON report.",
        "",
    ]
    return "\n".join(lines)


def render_html(report: Report, plot_name: str) -> str:
    """The report as a standalone HTML page, the plot linked by file name."""
    esc = html.escape
    body = [f"<h1>A/B report — experiment {esc(report['experiment_id'])}</h1>"]
    body += [f"<p>{esc(_summary(report)).replace('**', '')}</p>", f'<img src="{esc(plot_name)}">']
    for title, header, rows in _sections(report):
        body += [f"<h2>{esc(title)}</h2><table>"]
        body += ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        body += ["</table>"]
    style = (
        "body{font-family:sans-serif;max-width:60em}td,th{border:1px solid #ccc;padding:2px 6px}"
    )
    head = f"<head><meta charset='utf-8'><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(body)}</body></html>"


def write_report(report: Report, out_dir: Path, fmt: str) -> Path:
    """Write the rendered report and its plot into ``out_dir``; return the report's path."""
    stem = f"ab-{report['experiment_id']}"
    plot = plot_lift(report, out_dir / f"{stem}.png")
    render = render_html if fmt == "html" else render_markdown
    path = out_dir / f"{stem}.{'html' if fmt == 'html' else 'md'}"
    path.write_text(render(report, plot.name), encoding="utf-8")
    return path


def register(app: typer.Typer) -> None:
    """Add ``flywheel report ab`` to the command line."""
    report_app = typer.Typer(no_args_is_help=True, help="Reports of experiments.")
    app.add_typer(report_app, name="report")

    @report_app.command("ab")
    def ab(
        experiment_id: str = typer.Argument(..., help="Experiment id (GET /v1/experiments)."),
        router_url: str = typer.Option(
            DEFAULT_ROUTER, envvar="ROUTER_URL", help="Router base URL."
        ),
        fmt: str = typer.Option("md", "--format", help="md or html."),
        out: Path = typer.Option(Path("reports"), help="Directory for the report and its plot."),
    ) -> None:
        """Render an experiment's A/B report (Markdown or HTML) with a plot of the lift."""
        path = write_report(fetch_report(router_url, experiment_id), out, fmt)
        typer.echo(f"report: {path} (plot {path.with_suffix('.png')})")
