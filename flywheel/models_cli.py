"""``flywheel retrain``, ``flywheel promote`` and ``flywheel rollback``."""

from __future__ import annotations

import getpass
from typing import Any

import httpx
import typer

from flywheel.infra.admin_token import admin_token_path, read_admin_token
from flywheel.infra.aio import run_sync
from flywheel.infra.config import InfraConfig
from flywheel.infra.kafka import operator_connection
from flywheel.loop import publish_raw
from shared.events import RetrainModel, topic_name
from shared.settings import SERVICE_PORTS, BaseServiceSettings

DEFAULT_REGISTRY = f"http://127.0.0.1:{SERVICE_PORTS['registry']}"

RegistryUrl = typer.Option(DEFAULT_REGISTRY, envvar="REGISTRY_URL", help="Registry base URL.")
Token = typer.Option(
    "",
    envvar="REGISTRY_ADMIN_TOKEN",
    help="The registry's admin token (default: the one `flywheel up` wrote into the run dir).",
    show_default=False,
)
ModelName = typer.Option(None, help="Registered model name (default: FLYWHEEL_MODEL_NAME).")


def retrain(
    model: str | None = ModelName,
    reason: str = typer.Option("manual", help="Why: recorded with the training run."),
) -> None:
    """Ask the trainer to retrain now on its recent batches (publishes retrain-model)."""
    settings = BaseServiceSettings()
    command = RetrainModel(
        producer="cli",
        model_name=model or settings.model_name,
        reason=reason,
        requested_by=getpass.getuser(),
    )
    payload = command.model_dump_json().encode()
    kafka = operator_connection(settings, InfraConfig.from_env())
    run_sync(publish_raw(kafka, topic_name(command.topic), payload))
    typer.echo(f"retrain-model {command.event_id} sent (correlation {command.correlation_id})")


def promote(
    version: str | None = typer.Argument(None, help="Version to promote (default: challenger)."),
    model: str | None = ModelName,
    reason: str = typer.Option("manual promotion", help="Why: published with model-promoted."),
    registry_url: str = RegistryUrl,
    token: str = Token,
) -> None:
    """Make a version champion; the replaced champion stays one rollback away."""
    body = _call(
        registry_url,
        token,
        model,
        "promote",
        {"version": version, "reason": reason, "requested_by": getpass.getuser()},
    )
    typer.echo(
        f"{body['model_name']} v{body['version']} is champion "
        f"(was v{body.get('previous_champion') or '-'})"
    )


def rollback(
    model: str | None = ModelName,
    reason: str = typer.Option("manual rollback", help="Why: published with model-rolled-back."),
    registry_url: str = RegistryUrl,
    token: str = Token,
) -> None:
    """Give the champion alias back to the previous champion."""
    body = _call(
        registry_url,
        token,
        model,
        "rollback",
        {"reason": reason, "requested_by": getpass.getuser()},
    )
    typer.echo(
        f"{body['model_name']} v{body['version']} is champion again "
        f"(v{body['rolled_back_version']} rolled back)"
    )


def _call(
    url: str, token: str, model: str | None, action: str, body: dict[str, object]
) -> dict[str, Any]:
    name = model or BaseServiceSettings().model_name
    token = _admin_token(token)
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/v1/models/{name}/{action}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as error:
        typer.secho(f"registry at {url} did not answer: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    if response.status_code != 200:
        detail = response.json().get("detail", response.text) if response.content else ""
        typer.secho(f"{action} refused ({response.status_code}): {detail}", fg="red", err=True)
        raise typer.Exit(1)
    result: dict[str, Any] = response.json()
    return result


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
