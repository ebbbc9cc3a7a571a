"""The model spec: which features (and types) a model takes, its task, label and classes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class FeatureSpec(BaseModel):
    """One input feature; a numeric one may declare the bounds a served value must keep to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: Literal["numeric", "categorical"]
    categories: tuple[str, ...] = ()
    description: str = ""
    min: float | None = Field(None, allow_inf_nan=False, description="Smallest value accepted.")
    max: float | None = Field(None, allow_inf_nan=False, description="Largest value accepted.")

    @model_validator(mode="after")
    def _categories_only_for_categorical(self) -> FeatureSpec:
        if (self.type == "categorical") != bool(self.categories):
            raise ValueError(f"{self.name}: categories are required for, and only for, categorical")
        return self

    @model_validator(mode="after")
    def _bounds_only_for_numeric(self) -> FeatureSpec:
        if self.type == "categorical" and (self.min is not None or self.max is not None):
            raise ValueError(f"{self.name}: min and max are for numeric features only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{self.name}: min {self.min} is above max {self.max}")
        return self

    def out_of_bounds(self, value: float) -> bool:
        """Whether ``value`` falls outside the declared bounds (an undeclared one is open).

        >>> age = FeatureSpec(name="age", type="numeric", min=0, max=150)
        >>> age.out_of_bounds(150.0), age.out_of_bounds(151.0), age.out_of_bounds(-1e308)
        (False, True, True)
        """
        return (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        )


#: What a model predicts: one of the spec's classes, or a real number.
Task = Literal["classification", "regression"]

#: How a regression model's error on one outcome is scored: the experiments' primary metric.
RegressionLoss = Literal["squared", "absolute"]

#: A trainer reference: ``package.module:function``, or a name in this entry-point group.
TRAINER_ENTRY_POINT_GROUP = "flywheel.trainers"


class ModelSpec(BaseModel):
    """Features, task, label and classes of a model Flywheel trains (or imports) and serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    label: str
    task: Task = "classification"
    classes: tuple[str, ...] = Field(
        (),
        validate_default=True,
        description="Classification: the label's values, at least two. Regression: none.",
    )
    features: tuple[FeatureSpec, ...] = Field(min_length=1)
    loss: RegressionLoss = Field(
        "squared",
        description="Regression: the per-outcome loss experiments compare (squared or "
        "absolute error). Ignored for classification.",
    )
    trainer: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w.-]*(:[A-Za-z_]\w*)?$",
        description="The team's own training code: ``package.module:function``, or the name "
        f"of an entry point in group ``{TRAINER_ENTRY_POINT_GROUP}``. None: Flywheel's "
        "candidates.",
    )

    @field_validator("classes")
    @classmethod
    def _classes_match_the_task(
        cls, classes: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        # ``task`` is declared first, so it is validated (and in ``info.data``) by now.
        task = info.data.get("task", "classification")
        if task == "classification" and len(classes) < 2:
            raise ValueError("a classification spec needs at least two classes")
        if task == "regression" and classes:
            raise ValueError("a regression spec has no classes: its label is a number")
        return classes

    @property
    def is_regression(self) -> bool:
        """Whether the model predicts a number rather than a class."""
        return self.task == "regression"

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature names in model input order."""
        return tuple(f.name for f in self.features)

    @property
    def numeric_features(self) -> tuple[str, ...]:
        """Names of the numeric features."""
        return tuple(f.name for f in self.features if f.type == "numeric")

    @property
    def categorical_features(self) -> tuple[str, ...]:
        """Names of the categorical features."""
        return tuple(f.name for f in self.features if f.type == "categorical")

    def feature(self, name: str) -> FeatureSpec:
        """The spec of feature ``name`` (KeyError when unknown)."""
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)


def load_spec(path: Path | None = None) -> ModelSpec:
    """Load the spec from ``path``, or the packaged default."""
    text = (
        path.read_text()
        if path is not None
        else resources.files("shared").joinpath("model_spec.yaml").read_text()
    )
    return ModelSpec.model_validate(yaml.safe_load(text))


def serving_incompatibilities(old: ModelSpec, new: ModelSpec) -> list[str]:
    """Why a model trained and served under ``old`` cannot be served under ``new``.

    One reason per break; an empty list means the change is safe. A served model
    takes its features by name, type and position and answers in the spec's
    classes in order (a class id is its position), so all of those must stay.
    Descriptions, numeric bounds and new categories may change: they only widen
    or document what is served.

    Examples
    --------
    >>> spec = load_spec()
    >>> serving_incompatibilities(spec, spec)
    []
    >>> wider = spec.model_copy(update={"classes": (*spec.classes, "churned")})
    >>> serving_incompatibilities(spec, wider)
    ["classes changed: ['at_risk', 'steady', 'high_value'] -> \
['at_risk', 'steady', 'high_value', 'churned']"]
    """
    reasons = []
    if old.task != new.task:
        reasons.append(f"task changed: {old.task} -> {new.task}")
    if old.name != new.name:
        reasons.append(f"name changed: {old.name!r} -> {new.name!r}")
    if old.label != new.label:
        reasons.append(f"label changed: {old.label!r} -> {new.label!r}")
    if old.classes != new.classes:
        reasons.append(f"classes changed: {list(old.classes)} -> {list(new.classes)}")
    reasons += _feature_set_changes(old.feature_names, new.feature_names)
    for name in old.feature_names:
        if name in new.feature_names:
            reasons += _feature_changes(old.feature(name), new.feature(name))
    return reasons


def _feature_set_changes(old: tuple[str, ...], new: tuple[str, ...]) -> list[str]:
    """Features renamed (same position, both names new to the other side), removed, added,
    or kept in another order."""
    removed = [n for n in old if n not in new]
    added = [n for n in new if n not in old]
    renamed = [
        (before, after)
        for before, after in zip(old, new, strict=False)
        if before in removed and after in added
    ]
    reasons = [f"feature {before!r} renamed to {after!r}" for before, after in renamed]
    reasons += [f"feature {n!r} removed" for n in removed if n not in dict(renamed)]
    renamed_to = {after for _, after in renamed}
    reasons += [f"feature {n!r} added" for n in added if n not in renamed_to]
    kept_old, kept_new = [n for n in old if n in new], [n for n in new if n in old]
    if kept_old != kept_new:
        reasons.append(f"features reordered: {kept_old} -> {kept_new}")
    return reasons


def _feature_changes(old: FeatureSpec, new: FeatureSpec) -> list[str]:
    if old.type != new.type:
        return [f"feature {old.name!r} type changed: {old.type} -> {new.type}"]
    gone = [c for c in old.categories if c not in new.categories]
    return [f"feature {old.name!r} categories removed: {gone}"] if gone else []
