"""Registry handlers: ModelTrained → register, gate against the model's registered spec, tag,
alias → ModelApproved or ModelRejected; ModelRegistered → refresh the catalog."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.registry.candidates import TASK_TAG, CandidateGates, Gated
from services.registry.core import (
    choose_alias,
    decision_tags,
    failed,
    gate_tags,
    lineage_tags,
)
from services.registry.gates import GatePolicy
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
        dead-lettered), as there is no spec to gate it against. Any other candidate ends
        in model-approved or model-rejected, each failed gate naming what is wrong or
        missing (a model with nothing at its URI, no holdout, an unusable flavour).
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
        name, spec = event.model_name, registered.spec
        try:
            version = self.models.register(name, event.model_uri, event.run_id)
        except NotFoundError as error:
            return self._unregistrable(event, error)
        gated = self.gates(event, version, spec)
        tags = {**gate_tags(gated.gates), **lineage_tags(event), TASK_TAG: spec.task}
        # Revision 0 is the unregistered default model's configured spec: nothing to point at.
        if registered.revision > 0:
            tags[SPEC_REVISION_TAG] = str(registered.revision)
        self.models.set_tags(name, version, tags)
        for gate in gated.gates:
            self.metrics.gate_passed.labels(name, gate.name).set(1 if gate.passed else 0)
        outcome: ModelApproved | ModelRejected
        if failed(gated.gates):
            outcome = ModelRejected.caused_by(
                event,
                producer="registry",
                model_name=name,
                version=version,
                run_id=event.run_id,
                reasons=failed(gated.gates),
            )
        else:
            outcome = self._approve(event, version, gated.flavor)
        self.models.set_tags(name, version, decision_tags(outcome))
        return outcome

    def gates(self, event: ModelTrained, version: str, spec: ModelSpec) -> Gated:
        """Every gate's result for the candidate against its model's ``spec``, in a fixed order,
        and the flavour it was loaded in."""
        return CandidateGates(self.models, self.loader, self.policy).run(event, version, spec)

    def _unregistrable(self, event: ModelTrained, error: NotFoundError) -> ModelRejected:
        """No model at the event's URI: nothing to register or gate, and the sender should know."""
        detail = f"{error}: nothing to register (is model_uri the logged model's URI?)"
        return ModelRejected.caused_by(
            event,
            producer="registry",
            model_name=event.model_name,
            run_id=event.run_id,
            reasons=(GateResult(name="model", passed=False, detail=detail),),
        )

    def _approve(self, event: ModelTrained, version: str, flavor: str | None) -> ModelApproved:
        name = event.model_name
        champion = self.models.alias_version(name, CHAMPION)
        alias = choose_alias(champion, version)
        self.models.set_alias(name, alias, version)
        self._package(event, version, flavor)
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

    def _package(self, event: ModelTrained, version: str, flavor: str | None) -> None:
        if self.packager is None:
            return
        if flavor != "sklearn":
            # bentoml.sklearn packages sklearn estimators only; approval does not depend on it.
            self.metrics.packaging_skipped.labels(event.model_name, str(flavor)).inc()
            log.info(
                "version not packaged for BentoML: bentoml.sklearn takes sklearn models only",
                extra={"model": event.model_name, "version": version, "flavor": flavor},
            )
            return
        metadata = {
            **lineage_tags(event),
            "registered_version": version,
            # BentoML metadata takes basic types only: a classifier has no rmse, a regressor
            # no accuracy.
            "metrics": event.metrics.model_dump(exclude_none=True),
        }
        model = self.loader.sklearn_model(event.model_uri)
        tag = self.packager.package(event.model_name, version, model, metadata)
        self.models.set_tags(event.model_name, version, {"flywheel.bento_tag": tag})


def register(consumer: ConsumerContext, handlers: RegistryHandlers) -> None:
    """Subscribe the registry's handlers: candidates once per group (flywheel-registry),
    spec changes on every replica."""
    subscribe(consumer, Topic.MODEL_TRAINED, ModelTrained, handlers.on_model_trained)
    subscribe_broadcast(
        consumer, Topic.MODEL_REGISTERED, ModelRegistered, handlers.on_model_registered
    )
