"""``flywheel models create/list/show/import``, ``flywheel retrain``, ``promote`` and ``rollback``.

Every command names its model: ``flywheel promote fraud 4``. The older form, the
``--model`` option (default ``FLYWHEEL_MODEL_NAME``), keeps working for one release,
and ``flywheel promote 4`` still promotes version 4 of that default model.
"""

from __future__ import annotations

import base64
import getpass
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import typer
import yaml
from pydantic import ValidationError

from flywheel.infra.admin_token import admin_token_path, read_admin_token
from flywheel.infra.aio import run_sync
from flywheel.infra.config import InfraConfig
from flywheel.infra.kafka import operator_connection
from flywheel.loop import publish_event
from shared.events import RetrainModel
from shared.settings import SERVICE_PORTS, BaseServiceSettings
from shared.spec import ModelSpec, load_spec

DEFAULT_REGISTRY = f"http://127.0.0.1:{SERVICE_PORTS['registry']}"

RegistryUrl = typer.Option(DEFAULT_REGISTRY, envvar="REGISTRY_URL", help="Registry base URL.")
Token = typer.Option(
    "",
    envvar="REGISTRY_ADMIN_TOKEN",
    help="The registry's admin token (default: the one `flywheel up` wrote into the run dir).",
    show_default=False,
)
ModelArgument = typer.Argument(
    None, help="Registered model (default: FLYWHEEL_MODEL_NAME).", show_default=False
)
ModelOption = typer.Option(
    None, "--model", help="The model, older form of NAME (deprecated).", show_default=False
)

models_app = typer.Typer(
    no_args_is_help=True, help="Register models with their specs; list and show them."
)


# --- which model ------------------------------------------------------------------------------


def model_of(name: str | None, option: str | None, default: str) -> str:
    """The model a command acts on: NAME, else ``--model``, else the deployment default.

    >>> model_of("fraud", None, "segment"), model_of(None, "churn", "segment")
    ('fraud', 'churn')
    >>> model_of(None, None, "segment")
    'segment'
    """
    if name and option and name != option:
        raise typer.BadParameter(f"NAME {name!r} and --model {option!r} disagree; give one")
    return name or option or default


def promotion_target(
    name: str | None, version: str | None, option: str | None, default: str
) -> tuple[str, str | None]:
    """The model and version ``flywheel promote`` means, its older forms included.

    ``promote NAME [VERSION]``; ``promote VERSION --model NAME`` and, for the default
    model, ``promote VERSION`` (a lone number is a version, as it was).

    >>> promotion_target("fraud", "4", None, "seg"), promotion_target("fraud", None, None, "seg")
    (('fraud', '4'), ('fraud', None))
    >>> promotion_target("4", None, "fraud", "seg"), promotion_target("4", None, None, "seg")
    (('fraud', '4'), ('seg', '4'))
    """
    if option is not None and version is None and name is not None and name != option:
        return option, name
    if option is None and version is None and name is not None and name.isdigit():
        return default, name
    return model_of(name, option, default), version


def _default_model() -> str:
    return BaseServiceSettings().model_name


# --- retrain, promote, rollback ---------------------------------------------------------------


def retrain(
    name: str | None = ModelArgument,
    model: str | None = ModelOption,
    reason: str = typer.Option("manual", help="Why: recorded with the training run."),
) -> None:
    """Ask the trainer to retrain NAME now on its recent batches (publishes retrain-model)."""
    settings = BaseServiceSettings()
    command = RetrainModel(
        producer="cli",
        model_name=model_of(name, model, settings.model_name),
        reason=reason,
        requested_by=getpass.getuser(),
    )
    kafka = operator_connection(settings, InfraConfig.from_env())
    run_sync(publish_event(kafka, command))
    typer.echo(
        f"retrain-model {command.event_id} sent for {command.model_name} "
        f"(correlation {command.correlation_id})"
    )


def promote(
    name: str | None = ModelArgument,
    version: str | None = typer.Argument(None, help="Version to promote (default: challenger)."),
    model: str | None = ModelOption,
    reason: str = typer.Option("manual promotion", help="Why: published with model-promoted."),
    registry_url: str = RegistryUrl,
    token: str = Token,
) -> None:
    """Make a version of NAME champion; the replaced champion stays one rollback away."""
    target, chosen = promotion_target(name, version, model, _default_model())
    body = _admin_post(
        registry_url,
        token,
        f"/v1/models/{target}/promote",
        "promote",
        {"version": chosen, "reason": reason, "requested_by": getpass.getuser()},
    )
    typer.echo(
        f"{body['model_name']} v{body['version']} is champion "
        f"(was v{body.get('previous_champion') or '-'})"
    )


def rollback(
    name: str | None = ModelArgument,
    model: str | None = ModelOption,
    reason: str = typer.Option("manual rollback", help="Why: published with model-rolled-back."),
    registry_url: str = RegistryUrl,
    token: str = Token,
) -> None:
    """Give NAME's champion alias back to its previous champion."""
    target = model_of(name, model, _default_model())
    body = _admin_post(
        registry_url,
        token,
        f"/v1/models/{target}/rollback",
        "rollback",
        {"reason": reason, "requested_by": getpass.getuser()},
    )
    typer.echo(
        f"{body['model_name']} v{body['version']} is champion again "
        f"(v{body['rolled_back_version']} rolled back)"
    )


# --- models create / list / show --------------------------------------------------------------


@models_app.command("create")
def create(
    name: str = typer.Argument(..., help="The model's name (the spec's `name` must be the same)."),
    spec_file: Path = typer.Option(
        ..., "--spec", exists=True, dir_okay=False, help="The model spec (YAML or JSON)."
    ),
    registry_url: str = RegistryUrl,
    token: str = Token,
) -> None:
    """Register NAME with its spec, or change its spec (a change served models cannot take
    is refused with the reasons; the same spec again changes nothing)."""
    spec = _read_spec(spec_file)
    body = _admin_post(
        registry_url,
        token,
        "/v1/models",
        "registration",
        {"name": name, "spec": spec.model_dump(mode="json"), "requested_by": getpass.getuser()},
    )
    said = {
        "created": "registered",
        "changed": "spec changed",
        "unchanged": "unchanged, the spec is the same",
    }
    typer.echo(f"{name}: {said[body['change']]} (spec revision {body['spec_revision']})")


@models_app.command("list")
def list_models(registry_url: str = RegistryUrl) -> None:
    """Every registered model with its spec revision, champion and challenger."""
    models = _get(registry_url, "/v1/models")["models"]
    rows = [("MODEL", "SPEC REVISION", "CHAMPION", "CHALLENGER")]
    rows += [
        (
            m["name"],
            "-" if m["spec_revision"] is None else str(m["spec_revision"]),
            m["champion"] or "-",
            m["challenger"] or "-",
        )
        for m in models
    ]
    _print_table(rows)


@models_app.command("show")
def show(
    name: str = typer.Argument(..., help="The model."), registry_url: str = RegistryUrl
) -> None:
    """NAME's spec (features, label, classes), its revision and its aliases."""
    body = _get(registry_url, f"/v1/models/{name}")
    spec = ModelSpec.model_validate(body["spec"])
    aliases = ", ".join(f"{a} v{v}" for a, v in sorted(body["aliases"].items())) or "none"
    typer.echo(f"{name} (spec revision {body['spec_revision']})")
    typer.echo(f"label:   {spec.label}")
    typer.echo(f"classes: {', '.join(spec.classes)}")
    typer.echo(f"aliases: {aliases}")
    rows = [("FEATURE", "TYPE", "ACCEPTS")]
    rows += [(f.name, f.type, _accepts(f.categories, f.min, f.max)) for f in spec.features]
    _print_table(rows)


#: Suffixes ``--holdout`` reads, and as what.
HOLDOUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
#: An import loads and scores the model and logs a run before answering.
IMPORT_TIMEOUT_S = 600.0


@models_app.command("import")
def import_model(
    name: str = typer.Argument(..., help="The registered model the import is a version of."),
    model_uri: str = typer.Option(
        ..., "--model-uri", help="MLflow URI of the model (runs:/…, models:/…)."
    ),
    holdout: Path | None = typer.Option(
        None,
        "--holdout",
        exists=True,
        dir_okay=False,
        help="Held-out rows with the spec's features and label (Parquet or CSV). Default: "
        "the holdout Flywheel logged with the model's run, if it did.",
    ),
    registry_url: str = RegistryUrl,
    token: str = Token,
) -> None:
    """Import a model trained elsewhere (sklearn, lightgbm, xgboost or pyfunc flavour) as a
    candidate version of NAME: the registry scores it on the holdout, logs the run and puts
    it through the same gates, experiment and promotion as Flywheel's own."""
    body: dict[str, object] = {"model_uri": model_uri, "requested_by": getpass.getuser()}
    if holdout is not None:
        body["holdout"] = holdout_upload(holdout)
    answer = _admin_post(
        registry_url, token, f"/v1/models/{name}/imports", "import", body, IMPORT_TIMEOUT_S
    )
    typer.echo(
        f"{name}: imported {answer['source_model_uri']} ({answer['flavor']}) as run "
        f"{answer['run_id']}; {_metrics_line(answer['metrics'])}"
    )
    typer.echo(f"the gates follow: `flywheel models show {name}` shows its alias once approved")


def holdout_upload(path: Path) -> dict[str, str]:
    """The ``holdout`` of an import request: the file's format and its bytes in base64."""
    fmt = HOLDOUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(HOLDOUT_FORMATS))
        typer.secho(f"{path}: a holdout is a {known} file", fg="red", err=True)
        raise typer.Exit(1)
    return {"format": fmt, "content_base64": base64.b64encode(path.read_bytes()).decode()}


def _metrics_line(metrics: dict[str, Any]) -> str:
    """The holdout metrics an import computed, in one line.

    >>> _metrics_line({"accuracy": 0.91234, "macro_f1": 0.9, "log_loss": None,
    ...                "validation_rows": 200})
    'on 200 holdout rows: accuracy 0.9123, macro_f1 0.9000'
    """
    names = ("accuracy", "macro_f1", "log_loss", "rmse", "mae", "r2")
    shown = [f"{n} {metrics[n]:.4f}" for n in names if metrics.get(n) is not None]
    return f"on {metrics['validation_rows']} holdout rows: " + ", ".join(shown)


def _accepts(categories: tuple[str, ...], low: float | None, high: float | None) -> str:
    if categories:
        return ", ".join(categories)
    if low is None and high is None:
        return "any number"
    return f"[{'-inf' if low is None else low:g}, {'inf' if high is None else high:g}]"


def _read_spec(path: Path) -> ModelSpec:
    try:
        return load_spec(path)
    except (ValidationError, yaml.YAMLError) as error:
        typer.secho(f"{path} is not a valid model spec:\n{error}", fg="red", err=True)
        raise typer.Exit(1) from error


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --- HTTP -------------------------------------------------------------------------------------


def _get(url: str, path: str) -> dict[str, Any]:
    return _answer(url, "look-up", lambda: httpx.get(f"{url.rstrip('/')}{path}", timeout=30))


def _admin_post(
    url: str,
    token: str,
    path: str,
    action: str,
    body: dict[str, object],
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {_admin_token(token)}"}
    return _answer(
        url,
        action,
        lambda: httpx.post(
            f"{url.rstrip('/')}{path}", json=body, headers=headers, timeout=timeout_s
        ),
    )


def _answer(url: str, action: str, send: Any) -> dict[str, Any]:
    """The JSON of a 2xx answer; anything else prints why (every reason of a 409) and exits 1."""
    try:
        response: httpx.Response = send()
    except httpx.HTTPError as error:
        typer.secho(f"registry at {url} did not answer: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    if not response.is_success:
        answer = response.json() if response.content else {}
        detail = _detail(answer.get("detail", response.text))
        typer.secho(f"{action} refused ({response.status_code}): {detail}", fg="red", err=True)
        for reason in answer.get("reasons", []):
            typer.echo(f"  - {reason}", err=True)
        raise typer.Exit(1)
    result: dict[str, Any] = response.json()
    return result


def _detail(detail: Any) -> str:
    """A refusal's detail in one line: FastAPI's validation errors as ``field: message``.

    >>> _detail([{"loc": ["body", "spec", "classes"], "msg": "too short"}])
    'spec.classes: too short'
    """
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for error in detail:
        where = ".".join(str(p) for p in error.get("loc", [])[1:])
        parts.append(f"{where}: {error.get('msg', error)}")
    return "; ".join(parts)


def _admin_token(given: str) -> str:
    """The token to send: ``--token`` or REGISTRY_ADMIN_TOKEN, else the local stack's."""
    run_dir = InfraConfig.from_env().run_dir
    token = given.strip() or read_admin_token(run_dir, env={})
    if token is None:
        # An empty token made the header "Bearer ", which httpx refuses as an illegal value.
        typer.secho(
            "No admin token: set REGISTRY_ADMIN_TOKEN (or --token), or run `flywheel up`, "
            f"which writes one to {admin_token_path(run_dir)}.",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    return token


def register(app: typer.Typer) -> None:
    """Add the model commands to the ``flywheel`` CLI."""
    app.command()(retrain)
    app.command()(promote)
    app.command()(rollback)
    app.add_typer(models_app, name="models")
