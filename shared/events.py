"""Event contracts: the only thing Flywheel's services share.

Every event is a frozen pydantic model with the same envelope. ``correlation_id``
names one turn of the loop (drift → retrain → approval → experiment → promotion);
``causation_id`` is the ``event_id`` of the event that caused this one, so the
chain can be followed backwards. Large payloads travel by reference: a dataset
URI plus a content hash, never the rows themselves.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from shared.spec import ModelSpec


class Topic(StrEnum):
    """Kafka topic names: one per event type, plus dead letters."""

    DATA_ARRIVED = "flywheel.data-arrived"
    MODEL_TRAINED = "flywheel.model-trained"
    MODEL_APPROVED = "flywheel.model-approved"
    MODEL_REJECTED = "flywheel.model-rejected"
    DRIFT_DETECTED = "flywheel.drift-detected"
    PREDICTION_LOGGED = "flywheel.prediction-logged"
    PREDICTION_FAILED = "flywheel.prediction-failed"
    FEEDBACK_RECEIVED = "flywheel.feedback-received"
    EXPERIMENT_UPDATED = "flywheel.experiment-updated"
    MODEL_PROMOTED = "flywheel.model-promoted"
    MODEL_ROLLED_BACK = "flywheel.model-rolled-back"
    RETRAIN_MODEL = "flywheel.retrain-model"
    MODEL_REGISTERED = "flywheel.model-registered"


#: Names this deployment's topics and consumer groups, so that two deployments
#: can share one broker. The same in every process of a deployment (services,
#: CLI, tests), hence an environment variable rather than a per-service setting.
TOPIC_PREFIX_ENV = "FLYWHEEL_TOPIC_PREFIX"
DEFAULT_TOPIC_PREFIX = "flywheel."


def topic_prefix() -> str:
    """This deployment's topic prefix (``FLYWHEEL_TOPIC_PREFIX``, default ``flywheel.``)."""
    return os.environ.get(TOPIC_PREFIX_ENV, DEFAULT_TOPIC_PREFIX)


def topic_name(topic: Topic) -> str:
    """``topic``'s name on the broker, under this deployment's prefix.

    >>> topic_name(Topic.DATA_ARRIVED)
    'flywheel.data-arrived'
    """
    return topic_prefix() + topic.value.removeprefix(DEFAULT_TOPIC_PREFIX)


def dead_letter_topic(topic: Topic) -> str:
    """Where events of ``topic`` that cannot be handled are parked."""
    return f"{topic_name(topic)}.dlq"


def consumer_group(service: str) -> str:
    """The consumer group of ``service`` in this deployment (``flywheel-router`` by default).

    >>> consumer_group("router")
    'flywheel-router'
    """
    return f"{topic_prefix().rstrip('.')}-{service}"


def model_key(service: str, model_name: str, kind: str) -> str:
    """A Redis key of one model's state, hash-tagged by model.

    Every key of one model shares the ``{model}`` hash tag, so a multi-key
    operation on one model's state touches one Redis Cluster slot.

    >>> model_key("router", "churn", "experiment")
    'flywheel:router:{churn}:experiment'
    """
    return f"flywheel:{service}:{{{model_name}}}:{kind}"


def routing_state_key(model_name: str) -> str:
    """Redis key holding the JSON of ``model_name``'s latest ExperimentUpdated: its
    routing table, which the gateway reads at start-up before the next event reaches it.

    >>> routing_state_key("churn")
    'flywheel:routing:{churn}:current'
    """
    return model_key("routing", model_name, "current")


def _now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh UUID4 as a string."""
    return str(uuid.uuid4())


class Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: ClassVar[Topic]

    event_id: str = Field(default_factory=new_id, description="Unique id (UUID4) of this event.")
    schema_version: int = Field(1, ge=1, description="Version of this event's schema.")
    occurred_at: AwareDatetime = Field(default_factory=_now, description="When it happened (UTC).")
    producer: str = Field(description="Service that published the event.")
    correlation_id: str = Field(
        default_factory=new_id, description="One id per turn of the loop, shared by its events."
    )
    causation_id: str | None = Field(None, description="event_id of the event that caused this.")

    def type_name(self) -> str:
        """The event's ``type`` discriminator, e.g. ``"model-trained"``."""
        return str(getattr(self, "type", type(self).__name__))

    @classmethod
    def caused_by(cls, cause: Event, producer: str, **fields: Any) -> Self:
        """Build an event in the same turn of the loop as ``cause``."""
        return cls(
            producer=producer,
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            **fields,
        )


class DatasetRef(BaseModel):
    """A dataset batch by reference: where it is, what it hashes to, how big it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = Field(description="file:// (or other fsspec) URI of a Parquet or CSV file.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Content hash of the file.")
    rows: int = Field(ge=0)
    format: Literal["parquet", "csv"] = "parquet"


class DataArrived(Event):
    """A new labelled batch is available for training."""

    topic: ClassVar[Topic] = Topic.DATA_ARRIVED
    type: Literal["data-arrived"] = "data-arrived"
    model_name: str | None = Field(
        None,
        description=(
            "The model the batch is for. Unset: the deployment's default model "
            "(FLYWHEEL_MODEL_NAME); deprecated, required from the next release."
        ),
    )
    dataset: DatasetRef


class ModelMetrics(BaseModel):
    """Validation metrics of a trained model: a classifier's or a regressor's.

    A classifier reports ``accuracy`` and ``macro_f1`` (``log_loss`` when it gives
    probabilities); a regressor reports ``rmse``, ``mae`` and ``r2``. Extra metrics
    (a team trainer's own) ride along as extra fields.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    accuracy: float | None = Field(None, ge=0, le=1)
    macro_f1: float | None = Field(None, ge=0, le=1)
    log_loss: float | None = None
    rmse: float | None = Field(None, ge=0, description="Regression: root mean squared error.")
    mae: float | None = Field(None, ge=0, description="Regression: mean absolute error.")
    r2: float | None = Field(None, description="Regression: coefficient of determination.")
    validation_rows: int = Field(ge=0)

    @model_validator(mode="after")
    def _one_task_complete(self) -> ModelMetrics:
        classification = self.accuracy is not None and self.macro_f1 is not None
        regression = self.rmse is not None and self.mae is not None
        if not (classification or regression):
            raise ValueError("metrics need accuracy and macro_f1, or rmse and mae")
        return self

    @property
    def is_regression(self) -> bool:
        """Whether these are a regressor's metrics."""
        return self.rmse is not None


#: What started a training: new data, drift, an operator, or the schedule.
Trigger = Literal["data", "drift", "manual", "schedule", "import"]


class ModelTrained(Event):
    """A training run finished and logged a candidate model to MLflow."""

    topic: ClassVar[Topic] = Topic.MODEL_TRAINED
    type: Literal["model-trained"] = "model-trained"
    model_name: str
    run_id: str
    model_uri: str = Field(description="MLflow URI of the logged model (runs:/… or models:/…).")
    algorithm: str
    metrics: ModelMetrics
    data_version: str = Field(description="Hash of the batches the model was trained on.")
    datasets: tuple[DatasetRef, ...] = ()
    trigger: Trigger = "data"


Role = Literal["champion", "challenger"]


class ModelApproved(Event):
    """A registered model version passed the gates and got an alias."""

    topic: ClassVar[Topic] = Topic.MODEL_APPROVED
    type: Literal["model-approved"] = "model-approved"
    model_name: str
    version: str
    run_id: str
    alias: Role
    champion_version: str = Field(description="The champion's version after this approval.")
    metrics: ModelMetrics


class GateResult(BaseModel):
    """One validation gate's outcome and the numbers behind it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    passed: bool
    detail: str


class ModelRejected(Event):
    """A candidate failed a gate (or training failed); nothing changes in serving."""

    topic: ClassVar[Topic] = Topic.MODEL_REJECTED
    type: Literal["model-rejected"] = "model-rejected"
    model_name: str
    version: str | None = None
    run_id: str | None = None
    reasons: tuple[GateResult, ...]


Variant = Literal["champion", "challenger"]

#: Where an experiment stands; the router's state and ``experiment-updated`` share it.
ExperimentStatus = Literal[
    "running",
    "promoted",
    "rolled_back",
    "superseded",
    "champion_only",
    "overridden",
    "inconclusive",
]

#: What a look at an experiment decided; the router's state and ``experiment-updated`` share it.
Action = Literal["hold", "rollback", "promote", "continue", "inconclusive"]


class FeatureDrift(BaseModel):
    """Drift statistics of one feature over one window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    test: Literal["ks", "chi2", "accuracy", "loss"] = Field(
        "ks",
        description="KS for numeric features, χ² for categorical; accuracy (a classifier) or "
        "loss (a regressor) for concept drift.",
    )
    unseen: int = Field(0, ge=0, description="Window values of categories the reference lacks.")
    pooled_statistic: float | None = Field(
        None, description="KS statistic of the last few windows pooled (pooled_size rows)."
    )
    pooled_threshold: float | None = Field(None, description="Critical value of the pooled test.")


class DriftDetected(Event):
    """Live traffic (data drift) or live accuracy (concept drift) moved away from training."""

    topic: ClassVar[Topic] = Topic.DRIFT_DETECTED
    type: Literal["drift-detected"] = "drift-detected"
    kind: Literal["data", "concept"] = "data"
    model_name: str
    reference_version: str
    window_size: int = Field(ge=1)
    reference_size: int = Field(ge=1)
    window_start: AwareDatetime
    window_end: AwareDatetime
    features: tuple[FeatureDrift, ...]
    pooled_size: int | None = Field(
        None, description="Rows pooled for the features' pooled statistics (recent windows)."
    )
    window_correlation_id: str | None = Field(
        None, description="correlation_id of the event that closed the causing window."
    )
    variant: Variant | None = Field(
        None, description="Concept drift: the variant whose accuracy dropped."
    )
    version: str | None = Field(
        None, description="Concept drift: the model version that was scored."
    )


class PredictionLogged(Event):
    """The gateway answered one prediction."""

    topic: ClassVar[Topic] = Topic.PREDICTION_LOGGED
    schema_version: int = Field(
        2, ge=1, description="2: regression answers (``predicted_value``); class optional."
    )
    type: Literal["prediction-logged"] = "prediction-logged"
    request_id: str
    model_name: str
    version: str
    variant: Variant
    entity_id: str | None = None
    features: dict[str, float | str]
    predicted_class: str | None = Field(None, description="Classification: the answer.")
    confidence: float | None = Field(
        None, ge=0, le=1, description="Classification: the answer's probability."
    )
    predicted_value: float | None = Field(
        None, allow_inf_nan=False, description="Regression: the answer."
    )
    latency_ms: float = Field(ge=0)
    experiment_id: str | None = Field(None, description="Experiment whose split routed this.")
    challenger_share: float | None = Field(
        None, ge=0, le=1, description="The challenger's share in force when this was routed."
    )
    shadow: bool = Field(
        False,
        description="Scored by the challenger on a mirror of a champion-answered request and "
        "never returned; experiments and drift windows leave it out.",
    )

    @model_validator(mode="after")
    def _one_answer(self) -> PredictionLogged:
        if (self.predicted_class is None) == (self.predicted_value is None):
            raise ValueError("a prediction has a predicted_class or a predicted_value, not both")
        return self


class PredictionFailed(Event):
    """A routed variant failed to answer (its model raised or gave non-finite output).

    Input errors (4xx) are the client's and never appear here; these count against
    the variant in the router's error-rate guardrail.
    """

    topic: ClassVar[Topic] = Topic.PREDICTION_FAILED
    type: Literal["prediction-failed"] = "prediction-failed"
    request_id: str
    model_name: str
    version: str
    variant: Variant
    error_type: str = Field(description="Class of the error, e.g. ValueError.")
    rows: int = Field(1, ge=1, description="Rows of the failed request.")
    latency_ms: float = Field(ge=0)
    experiment_id: str | None = Field(None, description="Experiment whose split routed this.")
    challenger_share: float | None = Field(
        None, ge=0, le=1, description="The challenger's share in force when this was routed."
    )


class FeedbackReceived(Event):
    """The true outcome of an earlier prediction, enriched with who answered it."""

    topic: ClassVar[Topic] = Topic.FEEDBACK_RECEIVED
    schema_version: int = Field(
        2, ge=1, description="2: regression outcomes (``predicted_value``, ``true_value``)."
    )
    type: Literal["feedback-received"] = "feedback-received"
    request_id: str
    model_name: str
    version: str
    variant: Variant
    predicted_class: str | None = Field(None, description="Classification: what was answered.")
    true_label: str | None = None
    reward: float | None = None
    correct: bool | None = None
    predicted_value: float | None = Field(
        None, allow_inf_nan=False, description="Regression: what was answered."
    )
    true_value: float | None = Field(
        None, allow_inf_nan=False, description="Regression: the true outcome."
    )
    experiment_id: str | None = Field(None, description="Experiment that routed the prediction.")
    challenger_share: float | None = Field(
        None, ge=0, le=1, description="The challenger's share when the prediction was routed."
    )


class ExperimentUpdated(Event):
    """The routing table changed: which versions serve and the challenger's share."""

    topic: ClassVar[Topic] = Topic.EXPERIMENT_UPDATED
    schema_version: int = Field(
        3,
        ge=1,
        description="2: status ``overridden`` and ``requested_by`` (operator actions); "
        "3: status ``inconclusive`` and ``hold_cause``.",
    )
    type: Literal["experiment-updated"] = "experiment-updated"
    experiment_id: str
    model_name: str
    status: ExperimentStatus = Field(
        description="``overridden``: a person promoted or rolled back while it ran; "
        "the champion named here serves alone. ``inconclusive``: no verdict by the maximum "
        "duration or sample (held or not); the champion serves alone."
    )
    champion_version: str
    challenger_version: str | None = None
    challenger_share: float = Field(ge=0, le=1)
    stage: int | None = Field(None, ge=0, description="Position on the ramp schedule.")
    decision: Action | None = Field(
        None, description="What the latest look decided (None before any look)."
    )
    reason: str | None = Field(None, description="Why the state changed, as reason codes.")
    requested_by: str | None = Field(
        None, description="Who asked for the change, when a person did (promote/rollback)."
    )
    hold_cause: str | None = Field(
        None,
        description="While the decision is ``hold``: why (e.g. sample_ratio_mismatch_assigned).",
    )


class ModelPromoted(Event):
    """The challenger became champion."""

    topic: ClassVar[Topic] = Topic.MODEL_PROMOTED
    schema_version: int = Field(2, ge=1, description="2: adds ``requested_by``.")
    type: Literal["model-promoted"] = "model-promoted"
    model_name: str
    version: str
    previous_champion: str | None = None
    reason: str
    requested_by: str | None = Field(
        None, description="Who asked for it; None when the router decided it (a verdict)."
    )


class ModelRolledBack(Event):
    """The champion alias moved back to an earlier version (or the challenger was dropped)."""

    topic: ClassVar[Topic] = Topic.MODEL_ROLLED_BACK
    schema_version: int = Field(2, ge=1, description="2: adds ``requested_by``.")
    type: Literal["model-rolled-back"] = "model-rolled-back"
    model_name: str
    version: str = Field(description="The version now serving as champion.")
    rolled_back_version: str
    reason: str
    requested_by: str | None = Field(
        None, description="Who asked for it; None when the router decided it (a verdict)."
    )


class RetrainModel(Event):
    """Command: train the model now on its recent batches (``flywheel retrain``)."""

    topic: ClassVar[Topic] = Topic.RETRAIN_MODEL
    type: Literal["retrain-model"] = "retrain-model"
    model_name: str
    reason: str = Field("manual", description="Why a person (or a schedule) asked for it.")
    requested_by: str | None = None


class ModelRegistered(Event):
    """A model was registered or its spec changed: every service refreshes its copy of it."""

    topic: ClassVar[Topic] = Topic.MODEL_REGISTERED
    type: Literal["model-registered"] = "model-registered"
    model_name: str
    spec_revision: int = Field(ge=1, description="1 for a new model, one more per spec change.")
    spec: ModelSpec
    requested_by: str | None = None


EVENT_TYPES: tuple[type[Event], ...] = (
    DataArrived,
    ModelTrained,
    ModelApproved,
    ModelRejected,
    DriftDetected,
    PredictionLogged,
    PredictionFailed,
    FeedbackReceived,
    ExperimentUpdated,
    ModelPromoted,
    ModelRolledBack,
    RetrainModel,
    ModelRegistered,
)

AnyEvent = Annotated[
    DataArrived
    | ModelTrained
    | ModelApproved
    | ModelRejected
    | DriftDetected
    | PredictionLogged
    | PredictionFailed
    | FeedbackReceived
    | ExperimentUpdated
    | ModelPromoted
    | ModelRolledBack
    | RetrainModel
    | ModelRegistered,
    Field(discriminator="type"),
]

ANY_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(raw: bytes | str) -> Event:
    """Parse any Flywheel event from JSON, dispatching on its ``type``."""
    return ANY_EVENT.validate_json(raw)
