"""The ``flywheel`` command line: bring the local stack up and down, run one service."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from pathlib import Path

import typer

from flywheel import features_cli, gpu, models_cli, report
from flywheel.demo import DemoConfig, run_demos
from flywheel.demo_models import demo_models
from flywheel.infra import (
    SERVICES,
    ComponentStatus,
    InfraConfig,
    InfraError,
    infra_status,
    service_ports_from_env,
    services_status,
    start_infra,
    start_services,
    stop_infra,
    stop_services,
)
from flywheel.infra.admin_token import admin_token_path, read_admin_token
from flywheel.infra.aio import run_sync
from flywheel.infra.kafka import operator_connection
from flywheel.loop import announce
from shared.catalog import ModelCatalog
from shared.datasets import generate_customers, load_batch, reference_to, write_batch
from shared.errors import FlywheelError
from shared.mlflow_specs import MlflowSpecSource
from shared.settings import BaseServiceSettings
from shared.spec import ModelSpec, load_spec

HELP = "Flywheel: bring the local stack (Kafka, Redis, MLflow, five services) up and down."
app = typer.Typer(no_args_is_help=True, add_completion=False, help=HELP)
infra_app = typer.Typer(no_args_is_help=True, help="Kafka, Redis and MLflow only.")
app.add_typer(infra_app, name="infra")


def _print_table(rows: Iterable[tuple[str, ...]]) -> None:
    """Print rows as left-aligned columns."""
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        typer.echo(line.rstrip())


def _print_status(statuses: Iterable[ComponentStatus]) -> None:
    """Print component states as a table."""
    header = ("COMPONENT", "STATE", "PID", "ADDRESS")
    body = [(s.name, s.state, str(s.pid or "-"), s.address) for s in statuses]
    _print_table([header, *body])


# --- stack ------------------------------------------------------------------------------------


@app.command()
def up() -> None:
    """Start Kafka, Redis, MLflow and the five services; print their URLs."""
    config = InfraConfig.from_env()
    endpoints = start_infra(config)
    urls = start_services(endpoints, service_ports_from_env())
    rows = [("kafka", endpoints.kafka_bootstrap), ("redis", endpoints.redis_url)]
    rows += [("mlflow", endpoints.mlflow_uri), *urls.items()]
    _print_table([("COMPONENT", "URL"), *rows])
    if admin_token_path(config.run_dir).exists():
        typer.echo(f"Admin token for promote/rollback: {admin_token_path(config.run_dir)}")


@app.command()
def down() -> None:
    """Stop the services, then the infrastructure (safe to repeat)."""
    config = InfraConfig.from_env()
    stopped = stop_services(config.run_dir) + stop_infra(config)
    typer.echo(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing was running.")


@app.command()
def status() -> None:
    """Show each component's state, pid and address."""
    config = InfraConfig.from_env()
    _print_status(infra_status(config) + services_status(config.run_dir, service_ports_from_env()))


# --- infrastructure only ----------------------------------------------------------------------


@infra_app.command("up")
def infra_up() -> None:
    """Start Kafka, Redis and MLflow; print their endpoints."""
    endpoints = start_infra(InfraConfig.from_env())
    rows = [("kafka", endpoints.kafka_bootstrap), ("redis", endpoints.redis_url)]
    _print_table([("COMPONENT", "URL"), *rows, ("mlflow", endpoints.mlflow_uri)])


@infra_app.command("down")
def infra_down() -> None:
    """Stop Kafka, Redis and MLflow (safe to repeat)."""
    stopped = stop_infra(InfraConfig.from_env())
    typer.echo(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing was running.")


@infra_app.command("status")
def infra_status_command() -> None:
    """Show the infrastructure's state."""
    _print_status(infra_status(InfraConfig.from_env()))


# --- one service ------------------------------------------------------------------------------


@app.command()
def service(name: str = typer.Argument(..., help=f"One of: {', '.join(SERVICES)}.")) -> None:
    """Run one service in the foreground (its settings come from the environment)."""
    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}")
    importlib.import_module(f"services.{name}.app").main()


# --- demo and data ------------------------------------------------------------------------------

data_app = typer.Typer(no_args_is_help=True, help="Generate dataset batches and announce them.")
app.add_typer(data_app, name="data")


@app.command()
def demo() -> None:
    """Start the stack (idempotent), run one turn of each demo model's loop, leave it running."""
    # aiokafka logs transient leader elections of freshly created topics as errors; it retries.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    config = InfraConfig.from_env()
    endpoints = start_infra(config)
    urls = start_services(endpoints, service_ports_from_env())
    demo_config = DemoConfig(
        kafka_bootstrap=endpoints.kafka_bootstrap,
        kafka_security=endpoints.kafka.security,
        gateway_url=urls["gateway"],
        data_dir=endpoints.run_dir / "data",
        router_url=urls["router"],
        registry_url=urls["registry"],
        admin_token=read_admin_token(endpoints.run_dir),
    )
    run_sync(run_demos(demo_config, demo_models(), say=typer.echo))
    typer.echo("\nThe stack keeps running (flywheel down stops it):")
    rows = [("mlflow", endpoints.mlflow_uri), ("gateway docs", f"{urls['gateway']}/docs")]
    rows += [(name, f"{url}/metrics") for name, url in urls.items()]
    _print_table([("WHAT", "URL"), *rows])


@data_app.command("generate")
def data_generate(
    out: Path = typer.Argument(..., help="Parquet file to write."),
    rows: int = typer.Option(5000, min=1, help="Number of rows."),
    seed: int = typer.Option(0, help="Random seed."),
    drift: float = typer.Option(0.0, help="Covariate shift of spend and visits, in sigmas."),
    concept_drift: bool = typer.Option(False, help="Change how features map to segments."),
) -> None:
    """Write a generated, labelled customer-segment batch."""
    frame = generate_customers(rows, seed, covariate_shift=drift, concept_drift=concept_drift)
    ref = write_batch(frame, out)
    typer.echo(f"{ref.rows} rows → {ref.uri} (sha256 {ref.sha256})")


@data_app.command("push")
def data_push(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV or Parquet file."),
    model: str | None = typer.Option(
        None, "--model", help="The registered model it is for (default: FLYWHEEL_MODEL_NAME)."
    ),
) -> None:
    """Check FILE against its model's registered spec and announce it with data-arrived."""
    settings = BaseServiceSettings()
    name = model or settings.model_name
    ref = reference_to(file)
    try:
        load_batch(ref, _registered_spec(name, settings))
    except FlywheelError as error:
        typer.secho(f"{file} does not fit the spec of {name}: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    kafka = operator_connection(settings, InfraConfig.from_env())
    event = run_sync(announce(kafka, ref, model_name=name))
    typer.echo(
        f"data-arrived {event.event_id} for {ref.rows} rows of {name} "
        f"(correlation {event.correlation_id})"
    )


def _registered_spec(name: str, settings: BaseServiceSettings) -> ModelSpec:
    """``name``'s spec as the services read it: registered in MLflow, or the configured
    default model's (deprecated). Unknown models exit 1 naming the known ones."""
    catalog = ModelCatalog(
        MlflowSpecSource(settings.mlflow_tracking_uri),
        settings.model_name,
        load_spec(settings.model_spec_path),
    )
    try:
        return run_sync(catalog.spec(name))
    except FlywheelError as error:
        typer.secho(f"no spec for {name}: {error}", fg="red", err=True)
        raise typer.Exit(1) from error


gpu.register(app)
models_cli.register(app)
report.register(app)
features_cli.register(app)


def main() -> None:
    """Entry point: run the command line; infrastructure errors print one sentence, exit 1."""
    try:
        app()
    except InfraError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        if error.detail:
            typer.echo(error.detail, err=True)
        raise SystemExit(1) from None
