"""Registry handlers: ModelTrained → register, gate against the model's registered spec, tag,
alias → ModelApproved or ModelRejected; ModelRegistered → refresh the catalog."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from services.registry.core import (
    choose_alias,
    decision_tags,
    evaluate_gates,
    failed,
    gate_tags,
    lineage_tags,
)
from services.registry.gates import (
    GatePolicy,
    determinism_gate,
    finite_output_gate,
    latency_gate,
    no_champion_gate,
    non_inferiority_gate,
    schema_gate,
)
from services.registry.metrics import RegistryMetrics
from services.registry.ports import CandidateLoader, ModelPackager, ModelRegistry
from shared.aliases import CHAMPION
from shared.catalog import ModelCatalog, RegisteredSpec
from shared.errors import NotFoundError
from shared.events import (
    Event,
    GateResult,
    ModelApproved,
    ModelRegistered,
    ModelRejected,
    ModelTrained,
    Topic,
)
from shared.messaging import ConsumerContext, EventPublisher, subscribe, subscribe_broadcast
from shared.mlflow_specs import SPEC_REVISION_TAG
from shared.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryHandlers:
    """The registry's event handlers and the blocking registry work behind them."""

    models: ModelRegistry
    loader: CandidateLoader
    catalog: ModelCatalog
    """The registered models' specs: each candidate is gated against its own model's."""
    publisher: EventPublisher
    metrics: RegistryMetrics
    policy: GatePolicy
    packager: ModelPackager | None = None
    """Where approved versions are also packaged (the BentoML store), if anywhere."""

    async def on_model_trained(self, event: ModelTrained) -> None:
        """Register the candidate, run the gates, give it an alias or reject it.

        A candidate of a model that is not registered is refused (UnknownModelError:
        dead-lettered), as there is no spec to gate it against.
        """
        registered = await self.catalog.registered(event.model_name)
        outcome = await asyncio.to_thread(self._register_and_decide, event, registered)
        await self.publisher.publish(outcome)
        label = "approved" if isinstance(outcome, ModelApproved) else "rejected"
        self.metrics.model_versions.labels(event.model_name, label).inc()
        log.info("candidate " + label, extra={"model": event.model_name, "run_id": event.run_id})

    async def on_model_registered(self, event: ModelRegistered) -> None:
        """Take a new or changed spec (every replica: another one may have registered it)."""
        self.catalog.apply(event)

    def _register_and_decide(self, event: ModelTrained, registered: RegisteredSpec) -> Event:
        """Blocking: register, tag with gates, lineage and spec revision, then alias or reject."""
        name = event.model_name
        version = self.models.register(name, event.model_uri, event.run_id)
        gates = self.gates(event, version, registered.spec)
        tags = {**gate_tags(gates), **lineage_tags(event)}
        # Revision 0 is the unregistered default model's configured spec: nothing to point at.
        if registered.revision > 0:
            tags[SPEC_REVISION_TAG] = str(registered.revision)
        self.models.set_tags(name, version, tags)
        for gate in gates:
            self.metrics.gate_passed.labels(name, gate.name).set(1 if gate.passed else 0)
        outcome: ModelApproved | ModelRejected
        if failed(gates):
            outcome = ModelRejected.caused_by(
                event,
                producer="registry",
                model_name=name,
                version=version,
                run_id=event.run_id,
                reasons=failed(gates),
            )
        else:
            outcome = self._approve(event, version)
        self.models.set_tags(name, version, decision_tags(outcome))
        return outcome

    def gates(self, event: ModelTrained, version: str, spec: ModelSpec) -> tuple[GateResult, ...]:
        """Every gate's result for the candidate against its model's ``spec``, in a fixed order."""
        reported = evaluate_gates(event.metrics, self.policy.min_accuracy)
        candidate = self.loader.load(event.model_uri)
        try:
            holdout = self.loader.holdout(event.run_id)
        except NotFoundError as error:
            missing = GateResult(name="holdout", passed=False, detail=str(error))
            return (*reported, missing)
        x, truth = holdout[list(spec.feature_names)], holdout[spec.label].astype(str)
        first, second = candidate.predict_proba(x), candidate.predict_proba(x)
        classes = [str(c) for c in candidate.classes_]
        return (
            *reported,
            schema_gate(self.loader.input_names(event.model_uri), classes, spec),
            finite_output_gate(first),
            determinism_gate(first, second),
            latency_gate(self._latencies_ms(candidate, x), self.policy.latency_budget_ms),
            self._non_inferiority(event.model_name, version, candidate, x, truth),
        )

    def _non_inferiority(
        self, name: str, version: str, candidate: Any, x: pd.DataFrame, truth: pd.Series
    ) -> GateResult:
        champion_version = self.models.alias_version(name, CHAMPION)
        if champion_version is None or champion_version == version:
            return no_champion_gate()
        champion = self.loader.load(f"models:/{name}/{champion_version}")
        return non_inferiority_gate(
            _correct(candidate, x, truth),
            _correct(champion, x, truth),
            champion_version,
            self.policy.non_inferiority_margin,
        )

    def _latencies_ms(self, candidate: Any, x: pd.DataFrame) -> list[float]:
        """Per-row best of three single-row timings: the model's cost, not the scheduler's."""
        rows = [x.iloc[[i % len(x)]] for i in range(self.policy.latency_samples)]
        for row in rows[:20]:  # warm caches and lazy imports first
            candidate.predict_proba(row)
        return [min(_time_ms(candidate, row) for _ in range(3)) for row in rows]

    def _approve(self, event: ModelTrained, version: str) -> ModelApproved:
        name = event.model_name
        champion = self.models.alias_version(name, CHAMPION)
        alias = choose_alias(champion, version)
        self.models.set_alias(name, alias, version)
        self._package(event, version)
        return ModelApproved.caused_by(
            event,
            producer="registry",
            model_name=name,
            version=version,
            run_id=event.run_id,
            alias=alias,
            champion_version=version if alias == CHAMPION else champion,
            metrics=event.metrics,
        )

    def _package(self, event: ModelTrained, version: str) -> None:
        if self.packager is None:
            return
        metadata = {
            **lineage_tags(event),
            "registered_version": version,
            # BentoML metadata takes basic types only: a classifier has no rmse, a regressor no accuracy.
            "metrics": event.metrics.model_dump(exclude_none=True),
        }
        model = self.loader.load(event.model_uri)
        tag = self.packager.package(event.model_name, version, model, metadata)
        self.models.set_tags(event.model_name, version, {"flywheel.bento_tag": tag})


def _time_ms(model: Any, row: pd.DataFrame) -> float:
    started = time.perf_counter()
    model.predict_proba(row)
    return (time.perf_counter() - started) * 1000


def _correct(model: Any, x: pd.DataFrame, truth: pd.Series) -> Any:
    """Which holdout rows ``model`` classifies correctly."""
    classes = np.asarray(model.classes_).astype(str)
    predicted = classes[np.argmax(model.predict_proba(x), axis=1)]
    return predicted == truth.to_numpy()


def register(consumer: ConsumerContext, handlers: RegistryHandlers) -> None:
    """Subscribe the registry's handlers: candidates once per group (flywheel-registry),
    spec changes on every replica."""
    subscribe(consumer, Topic.MODEL_TRAINED, ModelTrained, handlers.on_model_trained)
    subscribe_broadcast(
        consumer, Topic.MODEL_REGISTERED, ModelRegistered, handlers.on_model_registered
    )
