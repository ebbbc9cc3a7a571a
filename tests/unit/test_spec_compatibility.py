"""Which spec changes a served model survives (``serving_incompatibilities``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.spec import FeatureSpec, ModelSpec, serving_incompatibilities


def _spec(*features: FeatureSpec, **changes: Any) -> ModelSpec:
    fields: dict[str, Any] = {
        "name": "churn",
        "label": "churned",
        "classes": ("no", "yes"),
        "features": features or _FEATURES,
    }
    return ModelSpec.model_validate({**fields, **changes})


def _num(name: str, **changes: Any) -> FeatureSpec:
    return FeatureSpec.model_validate({"name": name, "type": "numeric", **changes})


def _cat(name: str, *categories: str) -> FeatureSpec:
    return FeatureSpec(name=name, type="categorical", categories=categories)


_FEATURES = (_num("age", min=0, max=150), _num("spend"), _cat("plan", "basic", "plus"))
BASE = _spec()


def test_descriptions_bounds_and_new_categories_are_allowed() -> None:
    changed = _spec(
        _num("age", min=-1, description="years"),  # bounds widened, max dropped, described
        _num("spend", max=10.0),
        _cat("plan", "plus", "basic", "premium"),  # reordered and one more
    )
    assert serving_incompatibilities(BASE, changed) == []


def test_a_removed_an_added_and_a_renamed_feature_are_each_named() -> None:
    removed = _spec(_num("age"), _cat("plan", "basic", "plus"))
    added = _spec(*_FEATURES, _num("visits"))
    renamed = _spec(_num("years"), _num("spend"), _cat("plan", "basic", "plus"))
    assert serving_incompatibilities(BASE, removed) == ["feature 'spend' removed"]
    assert serving_incompatibilities(BASE, added) == ["feature 'visits' added"]
    assert serving_incompatibilities(BASE, renamed) == ["feature 'age' renamed to 'years'"]


def test_reordered_features_and_a_changed_type_are_refused() -> None:
    reordered = _spec(_num("spend"), _num("age"), _cat("plan", "basic", "plus"))
    retyped = _spec(_num("age"), _cat("spend", "low", "high"), _cat("plan", "basic", "plus"))
    assert serving_incompatibilities(BASE, reordered) == [
        "features reordered: ['age', 'spend', 'plan'] -> ['spend', 'age', 'plan']"
    ]
    assert serving_incompatibilities(BASE, retyped) == [
        "feature 'spend' type changed: numeric -> categorical"
    ]


def test_label_classes_and_removed_categories_are_refused_with_every_reason() -> None:
    changed = _spec(
        _num("age"),
        _num("spend"),
        _cat("plan", "plus", "gold"),
        label="left",
        classes=("yes", "no"),
    )
    assert serving_incompatibilities(BASE, changed) == [
        "label changed: 'churned' -> 'left'",
        "classes changed: ['no', 'yes'] -> ['yes', 'no']",
        "feature 'plan' categories removed: ['basic']",
    ]


def test_another_name_is_a_reason() -> None:
    assert serving_incompatibilities(BASE, _spec(name="fraud")) == [
        "name changed: 'churn' -> 'fraud'"
    ]


_names = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, unique=True)


@given(_names, _names)
def test_only_the_same_features_in_the_same_order_are_compatible(
    old: list[str], new: list[str]
) -> None:
    before = _spec(*(_num(n) for n in old))
    after = _spec(*(_num(n) for n in new))
    reasons = serving_incompatibilities(before, after)
    assert (reasons == []) == (old == new)
    assert serving_incompatibilities(before, before) == []
