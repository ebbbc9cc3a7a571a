"""The model spec: which features (and types) a model takes, its label and classes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class ModelSpec(BaseModel):
    """Features, label and classes of the model Flywheel trains and serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    label: str
    classes: tuple[str, ...] = Field(min_length=2)
    features: tuple[FeatureSpec, ...] = Field(min_length=1)

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
