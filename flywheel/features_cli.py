"""``flywheel features load FILE``: fill the online feature store the gateway reads by entity."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer
from redis import Redis

from shared.settings import BaseServiceSettings
from shared.spec import ModelSpec, load_spec

PREFIX = "flywheel:features:"


def feature_hashes(
    frame: pd.DataFrame, spec: ModelSpec, id_column: str
) -> dict[str, dict[str, str]]:
    """One hash of the spec's features per entity; the id from ``id_column`` or the row number."""
    missing = [name for name in spec.feature_names if name not in frame.columns]
    if missing:
        raise typer.BadParameter(f"the file lacks features {missing}")
    ids = (
        frame[id_column].astype(str)
        if id_column in frame.columns
        else ("customer-" + frame.index.astype(str))
    )
    columns = frame[list(spec.feature_names)].astype(str)
    return {
        entity: dict(zip(spec.feature_names, values, strict=True))
        for entity, values in zip(ids, columns.itertuples(index=False), strict=True)
    }


def load_into(redis: Redis, hashes: dict[str, dict[str, str]], prefix: str = PREFIX) -> int:
    """Write every entity's hash in pipelined batches; return how many were written."""
    with redis.pipeline(transaction=False) as pipe:
        for entity, fields in hashes.items():
            pipe.delete(prefix + entity)
            pipe.hset(prefix + entity, mapping=fields)  # type: ignore[arg-type]
        pipe.execute()
    return len(hashes)


def register(app: typer.Typer) -> None:
    """Add ``flywheel features load`` to the command line."""
    features_app = typer.Typer(no_args_is_help=True, help="The online feature store (Redis).")
    app.add_typer(features_app, name="features")

    @features_app.command("load")
    def load(
        file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV or Parquet."),
        id_column: str = typer.Option(
            "customer_id", help="Entity id column (else customer-<row>)."
        ),
    ) -> None:
        """Store each row's features under its entity id, for entity-only predictions."""
        settings = BaseServiceSettings()
        frame = pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file)
        hashes = feature_hashes(frame, load_spec(settings.model_spec_path), id_column)
        count = load_into(Redis.from_url(settings.redis_url), hashes)
        typer.echo(f"{count} entities stored under {PREFIX}<entity_id> at {settings.redis_url}")
