"""Sticky routing, feature validation and row scoring of the gateway."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel
from sklearn.linear_model import LogisticRegression

from services.gateway.core import (
    BatchTooLargeError,
    FeatureValidationError,
    bucket_of,
    choose_variant,
    row_scorer,
    rows_from_probabilities,
    validate_instances,
)
from services.gateway.pool import LoadedModel, ModelPool, RoutingTable, ServingSnapshot
from services.gateway.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
)
from shared.datasets import generate_customers
from shared.spec import FeatureSpec, load_spec

SPEC = load_spec()
ENTITIES = [f"customer-{i}" for i in range(10_000)]


def good_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "age": 41,
        "tenure_months": 18.5,
        "monthly_spend": 62.3,
        "visits_per_month": 7,
        "support_tickets": 1,
        "discount_rate": 0.2,
        "days_since_last_purchase": 9.5,
        "plan": "plus",
    }
    row.update(overrides)
    return row


def challengers(share: float, experiment_id: str = "exp-1") -> set[str]:
    rng = random.Random(0)
    return {e for e in ENTITIES if choose_variant(share, experiment_id, e, rng) == "challenger"}


def test_same_entity_always_gets_the_same_variant() -> None:
    rng = random.Random(1)
    for entity in ENTITIES[:500]:
        first = choose_variant(0.5, "exp-1", entity, rng)
        assert all(choose_variant(0.5, "exp-1", entity, rng) == first for _ in range(5))


def test_raising_the_share_keeps_challenger_entities_on_the_challenger() -> None:
    at_10, at_30, at_60 = challengers(0.1), challengers(0.3), challengers(0.6)
    assert at_10 < at_30 < at_60


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5])
def test_split_proportion_matches_the_share(share: float) -> None:
    # 10k entities: the standard error is at most 0.005, so 0.02 is four of them.
    assert len(challengers(share)) / len(ENTITIES) == pytest.approx(share, abs=0.02)


def test_without_entity_the_split_is_random_by_the_share() -> None:
    rng = random.Random(7)
    picks = [choose_variant(0.2, "exp-1", None, rng) for _ in range(10_000)]
    assert picks.count("challenger") / len(picks) == pytest.approx(0.2, abs=0.02)


def test_buckets_are_reshuffled_per_experiment() -> None:
    overlap = len(challengers(0.5, "exp-a") & challengers(0.5, "exp-b")) / len(ENTITIES)
    assert overlap == pytest.approx(0.25, abs=0.03)


def test_no_share_or_no_experiment_means_champion() -> None:
    rng = random.Random(0)
    assert {choose_variant(0.0, "exp-1", e, rng) for e in ENTITIES[:200]} == {"champion"}
    assert {choose_variant(0.9, None, e, rng) for e in ENTITIES[:200]} == {"champion"}


def test_bucket_is_the_first_eight_bytes_of_sha256() -> None:
    import hashlib

    digest = hashlib.sha256(b"exp-1:alice").digest()
    assert bucket_of("exp-1", "alice") == int.from_bytes(digest[:8], "big") / 2**64


def test_valid_rows_become_a_frame_in_spec_order() -> None:
    frame = validate_instances([good_row(), good_row(age=30)], SPEC, max_batch=10)
    assert list(frame.columns) == list(SPEC.feature_names)
    assert frame["age"].tolist() == [41.0, 30.0]
    assert frame["age"].dtype == float


def test_unknown_feature_lists_the_expected_ones() -> None:
    with pytest.raises(FeatureValidationError) as caught:
        validate_instances([good_row(favourite_colour="red")], SPEC, max_batch=10)
    (problem,) = caught.value.problems
    assert "favourite_colour" in problem
    assert all(name in problem for name in SPEC.feature_names)
    assert caught.value.expected == SPEC.feature_names


def test_each_missing_or_ill_typed_field_is_named() -> None:
    row = good_row(age="forty", plan="gold", visits_per_month=True)
    del row["discount_rate"]
    with pytest.raises(FeatureValidationError) as caught:
        validate_instances([good_row(), row], SPEC, max_batch=10)
    problems = caught.value.problems
    assert len(problems) == 4
    assert any(p.startswith("instances[1].age: expected a number") for p in problems)
    assert any(p.startswith("instances[1].plan: expected one of") for p in problems)
    assert any(p.startswith("instances[1].visits_per_month:") for p in problems)
    assert "instances[1].discount_rate: missing" in problems


def test_non_finite_numbers_are_rejected() -> None:
    with pytest.raises(FeatureValidationError, match=r"instances\[0\]\.age: expected a finite"):
        validate_instances([good_row(age=float("nan"))], SPEC, max_batch=10)


def test_an_integer_no_float_can_hold_is_rejected_not_raised() -> None:
    with pytest.raises(FeatureValidationError, match=r"instances\[0\]\.age: expected a finite"):
        validate_instances([good_row(age=10**400)], SPEC, max_batch=10)


@pytest.mark.parametrize(
    ("feature", "value"), [("age", 151), ("age", -0.5), ("discount_rate", 1.01)]
)
def test_numbers_outside_the_spec_bounds_are_rejected(feature: str, value: float) -> None:
    with pytest.raises(
        FeatureValidationError, match=rf"instances\[0\]\.{feature}: expected a number in"
    ):
        validate_instances([good_row(**{feature: value})], SPEC, max_batch=10)


def test_open_bounds_accept_anything_finite_on_their_side() -> None:
    spec = SPEC.model_copy(update={"features": (FeatureSpec(name="age", type="numeric", min=18),)})
    validate_instances([{"age": 1e300}], spec, max_batch=1)
    with pytest.raises(FeatureValidationError, match="expected a number ≥ 18, got 17"):
        validate_instances([{"age": 17}], spec, max_batch=1)


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "plan", "type": "categorical", "categories": ["a"], "max": 1},
        {"name": "age", "type": "numeric", "min": 10, "max": 1},
        {"name": "age", "type": "numeric", "max": float("inf")},
    ],
)
def test_a_spec_with_impossible_bounds_does_not_load(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"numeric features only|is above max|finite number"):
        FeatureSpec.model_validate(bad)


def test_batches_beyond_the_limit_are_refused() -> None:
    with pytest.raises(BatchTooLargeError, match="at most 3"):
        validate_instances([good_row()] * 4, SPEC, max_batch=3)


def test_rows_report_the_argmax_class_and_every_probability() -> None:
    rows = rows_from_probabilities(("a", "b", "c"), np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]))
    assert [(r.predicted_class, r.class_id) for r in rows] == [("b", 1), ("a", 0)]
    assert rows[0].confidence == pytest.approx(0.7)
    assert rows[1].probabilities == {"a": 0.5, "b": 0.2, "c": 0.3}


class _Model:
    classes_ = np.array(["x", "y"])

    def predict_proba(self, frame: Any) -> np.ndarray:
        return np.full((len(frame), 2), 0.5)


def test_pool_swaps_whole_snapshots() -> None:
    pool = ModelPool()
    before = pool.snapshot
    champion = LoadedModel("m", "1", _Model())
    pool.swap(ServingSnapshot(champion=champion, routing=RoutingTable("exp", 0.2)))
    assert before.champion is None
    assert pool.snapshot.describe() == {"champion": {"name": "m", "version": "1"}}
    assert pool.snapshot.loaded_version("1") is champion
    assert champion.classes == ("x", "y")


@pytest.mark.parametrize(
    "schema", [PredictRequest, PredictResponse, FeedbackRequest, FeedbackResponse]
)
def test_every_openapi_example_is_a_valid_body(schema: type[BaseModel]) -> None:
    extra = schema.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    examples = extra["examples"]
    assert isinstance(examples, list)
    assert examples
    for example in examples:
        schema.model_validate(example)


def test_the_predict_examples_fit_the_model_spec() -> None:
    extra = PredictRequest.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    for example in extra["examples"]:  # type: ignore[union-attr]
        rows = PredictRequest.model_validate(example).rows
        if rows is not None:
            validate_instances(rows, load_spec(), max_batch=10)


@pytest.mark.parametrize("algorithm", ["torch_mlp", "logistic_regression"])
def test_rows_scored_straight_match_the_pipeline_on_a_frame(algorithm: str) -> None:
    from services.trainer.core import TrainingConfig, train

    spec = load_spec()
    frame = generate_customers(1500, seed=21)
    model = train(frame, spec, TrainingConfig(candidates=(algorithm,), device="cpu"))
    pipeline = model.pipeline
    scorer = row_scorer(pipeline)
    assert scorer is not None, "the trainer's pipelines take the direct path"
    rows = [
        {str(k): v for k, v in r.items()}
        for r in frame[list(spec.feature_names)].head(40).to_dict("records")
    ]
    expected = pipeline.predict_proba(validate_instances(rows, spec, max_batch=100))
    np.testing.assert_allclose(scorer(rows), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scorer(rows[:1]), expected[:1], rtol=1e-6, atol=1e-7)


def test_other_models_are_given_a_frame() -> None:
    assert row_scorer(LogisticRegression()) is None


def test_class_ids_follow_the_specs_order_not_the_models() -> None:
    # scikit-learn sorts classes; the spec lists at_risk, steady, high_value.
    model_order = ("at_risk", "high_value", "steady")
    rows = rows_from_probabilities(
        model_order, np.array([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1]]), SPEC.classes
    )
    assert [(r.predicted_class, r.class_id) for r in rows] == [
        ("steady", SPEC.classes.index("steady")),
        ("high_value", SPEC.classes.index("high_value")),
    ]
    assert SPEC.classes.index("steady") != model_order.index("steady")  # the case that matters
