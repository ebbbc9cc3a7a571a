"""Model specs stored with their registered models in MLflow: the catalog's source.

Storage (registered-model tags, so a spec lives and dies with its model):

- ``flywheel.spec_revision`` = ``N``: the current revision (1 when registered, one
  more per change). Written last, so a reader never sees a half-written revision.
- ``flywheel.spec.r{N}.chunks`` = how many chunks revision ``N`` has.
- ``flywheel.spec.r{N}.{i}`` (``i`` from 0): the spec as compact JSON, cut into
  pieces of at most ``CHUNK_CHARS`` characters. MLflow limits tag values, and a
  spec with high-cardinality categorical features (thousands of categories) is
  far larger than one tag of the smaller limits other MLflow stores apply.
- ``flywheel.spec.r{N}.requested_by``: who registered that revision.

Older revisions stay as they are: the history of a model's spec is in its tags.
Model versions registered afterwards carry ``flywheel.spec_revision`` of the spec
they were gated against (the registry tags them).
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from shared.catalog import RegisteredSpec
from shared.errors import InvalidInputError
from shared.mlflow_client import mlflow_client, mlflow_outages
from shared.spec import ModelSpec

log = logging.getLogger(__name__)

#: The registered-model (and model-version) tag naming the current spec revision.
SPEC_REVISION_TAG = "flywheel.spec_revision"
#: Largest piece of a spec's JSON stored in one tag.
CHUNK_CHARS = 4000
#: Registered models read per page when listing them all.
_PAGE = 100


def _prefix(revision: int) -> str:
    return f"flywheel.spec.r{revision}"


def spec_tags(revision: int, spec: ModelSpec, requested_by: str | None = None) -> dict[str, str]:
    """The tags that store ``spec`` as ``revision``, the revision tag last.

    >>> from shared.spec import load_spec
    >>> tags = spec_tags(2, load_spec(), "ana")
    >>> list(tags)[-1], tags["flywheel.spec.r2.chunks"], tags["flywheel.spec.r2.requested_by"]
    ('flywheel.spec_revision', '1', 'ana')
    """
    text = spec.model_dump_json()
    chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
    prefix = _prefix(revision)
    tags = {f"{prefix}.{i}": chunk for i, chunk in enumerate(chunks)}
    tags[f"{prefix}.chunks"] = str(len(chunks))
    if requested_by:
        tags[f"{prefix}.requested_by"] = requested_by
    tags[SPEC_REVISION_TAG] = str(revision)
    return tags


def spec_from_tags(tags: dict[str, str]) -> RegisteredSpec | None:
    """The current spec stored in ``tags``; None when they hold none (or a broken one).

    >>> from shared.spec import load_spec
    >>> spec = load_spec()
    >>> spec_from_tags(spec_tags(3, spec)) == (3, spec), spec_from_tags({})
    (True, None)
    """
    raw = tags.get(SPEC_REVISION_TAG)
    if raw is None or not raw.isdigit():
        return None
    revision, prefix = int(raw), _prefix(int(raw))
    count = tags.get(f"{prefix}.chunks", "")
    parts = [tags.get(f"{prefix}.{i}") for i in range(int(count))] if count.isdigit() else []
    if not parts or any(part is None for part in parts):
        log.warning("spec tags incomplete", extra={"revision": revision})
        return None
    try:
        return RegisteredSpec(revision, ModelSpec.model_validate_json("".join(map(str, parts))))
    except ValidationError as error:
        # A spec stored by a newer release may not parse here: no spec rather than a crash.
        log.warning("stored spec unreadable", extra={"revision": revision, "error": str(error)})
        return None


class MlflowSpecSource:
    """``shared.catalog.SpecSource`` on MLflow's registered-model tags (blocking calls).

    Raises DependencyUnavailableError when MLflow does not answer.
    """

    def __init__(self, tracking_uri: str) -> None:
        self._client = mlflow_client(tracking_uri)

    @property
    def client(self) -> MlflowClient:
        """The MLflow client (the registry writes specs with it: ``register_spec``)."""
        return self._client

    def registered_spec(self, name: str) -> RegisteredSpec | None:
        """``name``'s current spec; None when no such model, or it has no spec."""
        with mlflow_outages():
            model = _registered_model(self._client, name)
        return None if model is None else spec_from_tags(dict(model.tags or {}))

    def registered_specs(self) -> dict[str, RegisteredSpec]:
        """Every registered model that has a spec."""
        found: dict[str, RegisteredSpec] = {}
        token: str | None = None
        while True:
            with mlflow_outages():
                page = self._client.search_registered_models(max_results=_PAGE, page_token=token)
            for model in page:
                registered = spec_from_tags(dict(model.tags or {}))
                if registered is not None:
                    found[str(model.name)] = registered
            token = page.token
            if not token:
                return found

    def register(self, name: str, spec: ModelSpec, requested_by: str) -> RegisteredSpec:
        """Store ``spec`` as ``name``'s next revision (see ``register_spec``)."""
        return register_spec(self._client, name, spec, requested_by)


def register_spec(
    client: MlflowClient, name: str, spec: ModelSpec, requested_by: str
) -> RegisteredSpec:
    """Store ``spec`` as the next revision of ``name``, creating the registered model if new.

    Writes unconditionally: whether the change is allowed (``serving_incompatibilities``)
    and whether it is a change at all is the caller's decision. Raises InvalidInputError
    when the spec names another model, DependencyUnavailableError when MLflow is down.
    """
    if spec.name != name:
        raise InvalidInputError(f"spec.name {spec.name!r} differs from the model name {name!r}")
    with mlflow_outages():
        model = _registered_model(client, name)
        if model is None:
            client.create_registered_model(name, description=f"Flywheel model {name}")
            tags: dict[str, str] = {}
        else:
            tags = dict(model.tags or {})
        current = tags.get(SPEC_REVISION_TAG, "0")
        revision = (int(current) if current.isdigit() else 0) + 1
        for key, value in spec_tags(revision, spec, requested_by).items():
            client.set_registered_model_tag(name, key, value)
    log.info("spec registered", extra={"model": name, "revision": revision})
    return RegisteredSpec(revision, spec)


def _registered_model(client: MlflowClient, name: str) -> Any:
    """The registered model ``name``, or None when MLflow has none of that name (a name
    MLflow refuses, with a ':' or '/' in it, names none either)."""
    try:
        return client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code in _NO_SUCH_MODEL:
            return None
        raise


_NO_SUCH_MODEL = (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE))
