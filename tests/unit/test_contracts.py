"""Event contracts: envelope, causality, topics and the committed AsyncAPI document."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared import asyncapi
from shared.events import (
    EVENT_TYPES,
    DataArrived,
    DatasetRef,
    ModelMetrics,
    ModelTrained,
    Topic,
    parse_event,
)

ROOT = Path(__file__).resolve().parents[2]
REF = DatasetRef(uri="file:///data/b.parquet", sha256="a" * 64, rows=5)


def test_events_are_frozen_and_carry_the_envelope() -> None:
    event = DataArrived(producer="cli", dataset=REF)
    assert event.type == "data-arrived"
    assert event.occurred_at.tzinfo is not None
    assert event.causation_id is None
    with pytest.raises(ValidationError):
        event.producer = "x"  # type: ignore[misc]


def test_caused_by_keeps_the_turn_and_points_at_the_cause() -> None:
    cause = DataArrived(producer="cli", dataset=REF)
    metrics = ModelMetrics(accuracy=0.9, macro_f1=0.8, validation_rows=10)
    trained = ModelTrained.caused_by(
        cause,
        producer="trainer",
        model_name="m",
        run_id="r",
        model_uri="runs:/r/model",
        algorithm="lr",
        metrics=metrics,
        data_version="v",
    )
    assert trained.correlation_id == cause.correlation_id
    assert trained.causation_id == cause.event_id
    assert trained.event_id != cause.event_id


def test_parse_event_dispatches_on_type_and_round_trips() -> None:
    event = DataArrived(producer="cli", dataset=REF)
    assert parse_event(event.model_dump_json()) == event


def test_unknown_fields_and_bad_hashes_are_refused() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        DatasetRef(uri="file:///x", sha256="nothex", rows=1)
    with pytest.raises(ValidationError, match="surprise"):
        DataArrived.model_validate({"producer": "x", "dataset": REF.model_dump(), "surprise": 1})


def test_every_event_has_its_own_topic() -> None:
    topics = [t.topic for t in EVENT_TYPES]
    assert len(set(topics)) == len(topics)
    assert set(topics) == set(Topic)


def test_committed_asyncapi_document_is_current() -> None:
    committed = (ROOT / "docs" / "asyncapi.json").read_text()
    assert committed == asyncapi.render(), "run: python -m shared.asyncapi > docs/asyncapi.json"
