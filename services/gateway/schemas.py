"""HTTP request and response bodies of the gateway."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from services.gateway.core import ModelState
from shared.events import Variant

Instance = dict[str, Any]


def _present(value: Any) -> Any:
    """Refuse an explicit ``null`` for an optional field: the documented way to leave it
    out is to leave it out, so what the OpenAPI document calls invalid is refused."""
    if value is None:
        raise ValueError("null is not a value here: leave the field out")
    return value


def _only_one(*names: str) -> list[Any]:
    """JSON-schema branches saying exactly one of ``names`` is present."""
    return [
        {"required": [name], "not": {"anyOf": [{"required": [o]} for o in names if o != name]}}
        for name in names
    ]


class PredictRequest(BaseModel):
    """A batch under ``instances``, or one instance under ``features``; never both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "features": {
                        "age": 41,
                        "tenure_months": 18.5,
                        "monthly_spend": 62.3,
                        "visits_per_month": 7,
                        "support_tickets": 1,
                        "discount_rate": 0.2,
                        "days_since_last_purchase": 9.5,
                        "plan": "plus",
                    },
                    "entity_id": "customer-42",
                },
                {"entity_id": "customer-42"},
                {
                    "instances": [
                        {
                            "age": 29,
                            "tenure_months": 3.0,
                            "monthly_spend": 18.9,
                            "visits_per_month": 2,
                            "support_tickets": 0,
                            "discount_rate": 0.05,
                            "days_since_last_purchase": 40.0,
                            "plan": "basic",
                        }
                    ]
                },
            ],
            # What _one_shape checks, said in the document: rows one way, or an entity alone.
            "anyOf": [
                *_only_one("instances", "features"),
                {
                    "required": ["entity_id"],
                    "properties": {"entity_id": {"type": "string"}},
                    "not": {"anyOf": [{"required": ["instances"]}, {"required": ["features"]}]},
                },
            ],
        },
    )

    instances: list[Instance] | SkipJsonSchema[None] = Field(
        None, description="Feature rows, name → value."
    )
    features: Instance | SkipJsonSchema[None] = Field(
        None, description="One feature row, name → value."
    )
    entity_id: str | None = Field(
        None, min_length=1, max_length=256, description="Keeps one entity on one variant."
    )

    _rows_present = field_validator("instances", "features", mode="before")(_present)

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        if self.instances is not None and self.features is not None:
            raise ValueError("send either 'instances' (a list) or 'features' (one row)")
        if self.instances is None and self.features is None and self.entity_id is None:
            raise ValueError(
                "send 'instances', 'features', or only 'entity_id' to use the feature store"
            )
        return self

    @property
    def rows(self) -> list[Instance] | None:
        """The instances, whichever shape they came in; None for a feature-store lookup."""
        if self.instances is not None:
            return self.instances
        return None if self.features is None else [self.features]


class RowPredictionOut(BaseModel):
    """One answered instance."""

    request_id: str = Field(description="Id to send feedback for this row with.")
    predicted_class: str
    class_id: int = Field(
        description="Index of the class in the spec's `classes` (stable across versions)."
    )
    confidence: float = Field(ge=0, le=1, description="Probability of the predicted class.")
    probabilities: dict[str, float]


class RowValueOut(BaseModel):
    """One answered instance of a regression model."""

    request_id: str = Field(description="Id to send feedback (its true_value) for this row with.")
    value: float = Field(description="The predicted value.")
    interval: tuple[float, float] | SkipJsonSchema[None] = Field(
        None,
        # The document says a pair when present: an absent one is left out, not null.
        exclude_if=lambda interval: interval is None,
        description="[low, high] around the value, when the model offers one (left out otherwise).",
    )


class ValuePredictResponse(BaseModel):
    """A regression model's predictions for every instance, and which model answered them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "0b6f7a3e-4c1d-4f2a-8e51-9d3c2b1a0f64",
                    "model_name": "basket-value",
                    "model_version": "2",
                    "variant": "champion",
                    "predictions": [
                        {
                            "request_id": "0b6f7a3e-4c1d-4f2a-8e51-9d3c2b1a0f64",
                            "value": 61.8,
                            "interval": [48.2, 75.4],
                        }
                    ],
                    "server_time_ms": 0.8,
                }
            ]
        }
    )

    request_id: str = Field(description="Id of the request (and of its row, when only one).")
    model_name: str
    model_version: str
    variant: Variant
    predictions: list[RowValueOut]
    server_time_ms: float = Field(ge=0, description="Time spent in the gateway.")


class PredictResponse(BaseModel):
    """Predictions for every instance, and which model answered them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "6f1c2a9e-3b1d-4c55-9a57-2e8f0c1d7b42",
                    "model_name": "customer-segment",
                    "model_version": "3",
                    "variant": "challenger",
                    "predictions": [
                        {
                            "request_id": "6f1c2a9e-3b1d-4c55-9a57-2e8f0c1d7b42",
                            "predicted_class": "high_value",
                            "class_id": 2,
                            "confidence": 0.81,
                            "probabilities": {"at_risk": 0.07, "high_value": 0.81, "steady": 0.12},
                        }
                    ],
                    "server_time_ms": 0.9,
                }
            ]
        }
    )

    request_id: str = Field(description="Id of the request (and of its row, when only one).")
    model_name: str
    model_version: str
    variant: Variant
    predictions: list[RowPredictionOut]
    server_time_ms: float = Field(ge=0, description="Time spent in the gateway.")


#: The ways to report an outcome; a feedback body carries exactly one.
OUTCOMES = ("true_label", "true_value", "reward")


class FeedbackRequest(BaseModel):
    """The true outcome of an earlier prediction: a label (a classifier's), a value (a
    regressor's), or a reward."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"request_id": "6f1c2a9e-3b1d-4c55-9a57-2e8f0c1d7b42", "true_label": "high_value"},
                {"request_id": "6f1c2a9e-3b1d-4c55-9a57-2e8f0c1d7b42", "reward": 12.5},
            ],
            "anyOf": _only_one(*OUTCOMES),
        },
    )

    request_id: str = Field(min_length=1, max_length=300)
    true_label: str | SkipJsonSchema[None] = Field(
        None, description="Classification: the true class."
    )
    true_value: float | SkipJsonSchema[None] = Field(
        None, allow_inf_nan=False, description="Regression: the true value (a finite number)."
    )
    reward: float | SkipJsonSchema[None] = Field(None, allow_inf_nan=False)

    _label_present = field_validator("true_label", mode="before")(_present)

    @field_validator("reward", "true_value", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        # Pydantic would read "12.5" or true as a number; the document says a number.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        return value

    @model_validator(mode="after")
    def _one_outcome(self) -> Self:
        sent = [name for name in OUTCOMES if getattr(self, name) is not None]
        if len(sent) != 1:
            raise ValueError(
                "send one of 'true_label' (a classifier's class), 'true_value' (a regressor's "
                f"number) or 'reward'; got {sent or 'none'}"
            )
        return self


class FeedbackResponse(BaseModel):
    """Whether the feedback counted."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "6f1c2a9e-3b1d-4c55-9a57-2e8f0c1d7b42",
                    "duplicate": False,
                    "correct": True,
                }
            ]
        }
    )

    request_id: str
    duplicate: bool = Field(description="True when feedback for this request was already in.")
    correct: bool | None = Field(
        None, description="Whether the prediction was right (a classifier's true_label)."
    )


class ErrorOut(BaseModel):
    """Why a request was refused: a message (with each bad field, when there are several), a
    plain sentence, or FastAPI's list of field errors for a body of another shape."""

    detail: dict[str, Any] | list[dict[str, Any]] | str


class LoadedModelOut(BaseModel):
    """A model version in memory."""

    name: str
    version: str


class ModelStatusOut(BaseModel):
    """One model: whether it serves, which versions in which variant, its split."""

    name: str
    state: ModelState = Field(
        description="serving: its champion is loaded; loading; no_champion: the registry "
        "names none yet; failed: its champion did not load (see error; retried every "
        "resync); unloaded: registered, not in memory (its next request loads it)."
    )
    variants: dict[str, LoadedModelOut]
    experiment_id: str | None
    challenger_share: float
    error: str | None = Field(None, description="Why its latest load or look-up failed.")


class ModelsResponse(BaseModel):
    """What the gateway serves now: every model, and the default model's variants at the top
    (``model_loaded``, ``models``, ``experiment_id``, ``challenger_share``: deprecated, kept
    for one release; read ``by_model``)."""

    model_loaded: bool
    models: dict[str, LoadedModelOut]
    experiment_id: str | None
    challenger_share: float
    default_model: str
    by_model: dict[str, ModelStatusOut]
