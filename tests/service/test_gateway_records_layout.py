"""The compact feedback record: what feedback joins on survives, in far fewer bytes, and
records written by earlier gateways (the event's full JSON) are still read."""

from __future__ import annotations

import uuid

import pytest

from services.gateway.adapters import decode_record, encode_record
from shared.events import FeedbackReceived, PredictionLogged

#: What the feedback event takes from its prediction (services.gateway.feedback).
JOINED = (
    "event_id",
    "correlation_id",
    "request_id",
    "model_name",
    "version",
    "variant",
    "predicted_class",
    "predicted_value",
    "experiment_id",
    "challenger_share",
)


def _logged(**fields: object) -> PredictionLogged:
    request_id = str(uuid.uuid4())
    defaults: dict[str, object] = {
        "producer": "gateway",
        "correlation_id": request_id,
        "request_id": request_id,
        "model_name": "customer-segment",
        "version": "12",
        "variant": "challenger",
        "entity_id": "cust-000123",
        "features": {"age": 41.0, "plan": "premium"},
        "predicted_class": "steady",
        "confidence": 0.8734567,
        "latency_ms": 0.83412,
        "experiment_id": str(uuid.uuid4()),
        "challenger_share": 0.05,
    }
    return PredictionLogged.model_validate({**defaults, **fields})


def _joined(event: PredictionLogged) -> dict[str, object]:
    return {name: getattr(event, name) for name in JOINED}


def _round_trip(event: PredictionLogged) -> PredictionLogged:
    return decode_record(event.request_id, encode_record(event))


def test_a_classification_record_keeps_what_feedback_joins_on() -> None:
    event = _logged()
    assert _joined(_round_trip(event)) == _joined(event)


def test_a_regression_record_keeps_its_value() -> None:
    event = _logged(predicted_class=None, confidence=None, predicted_value=57.25)
    back = _round_trip(event)
    assert _joined(back) == _joined(event)
    assert (back.predicted_class, back.predicted_value) == (None, 57.25)
    whole = _round_trip(_logged(predicted_class=None, confidence=None, predicted_value=50.0))
    assert whole.predicted_value == 50.0


def test_batch_rows_and_ids_that_are_not_uuids_survive() -> None:
    batch = str(uuid.uuid4())
    row = _logged(correlation_id=batch, request_id=f"{batch}-7")
    plain = _logged(
        event_id="evt-1",
        correlation_id="turn-9",
        request_id="req-1",
        experiment_id="exp-A",
        variant="champion",
    )
    upper = _logged(event_id=str(uuid.uuid4()).upper(), experiment_id=None, challenger_share=None)
    for event in (row, plain, upper):
        assert _joined(_round_trip(event)) == _joined(event)


def test_the_record_is_a_sixth_of_the_events_json() -> None:
    event = _logged()
    compact = encode_record(event)
    full = event.model_dump_json(exclude={"features"}).encode()
    assert len(compact) <= 100
    assert len(compact) * 5 < len(full)
    # Nothing the join does not need: no feature, time, confidence or entity.
    for absent in (b"premium", b"0.873", b"cust-000123", b"occurred", event.request_id.encode()):
        assert absent not in compact


def test_a_record_of_an_earlier_gateway_is_still_read() -> None:
    event = _logged()
    earlier = event.model_dump_json(exclude={"features"}).encode()
    back = decode_record(event.request_id, earlier)
    assert _joined(back) == _joined(event)
    assert back.confidence == pytest.approx(0.8734567)


def test_feedback_built_from_a_recalled_record_is_caused_by_the_prediction() -> None:
    event = _logged()
    feedback = FeedbackReceived.caused_by(
        _round_trip(event),
        producer="gateway",
        request_id=event.request_id,
        model_name=event.model_name,
        version=event.version,
        variant=event.variant,
        true_label="steady",
    )
    assert (feedback.causation_id, feedback.correlation_id) == (
        event.event_id,
        event.correlation_id,
    )
