"""The gateway's OpenAPI document says what each model's spec says.

Request bodies are pydantic models fixed at import, while the features, their bounds
and the classes come from the specs, and models are registered at run time. The
document is patched when built, and built again when the specs changed: a client (or
schemathesis) reading it learns each feature's type and bounds, and that a row out of
them is refused. The unprefixed routes are the default model's; each registered model
gets its own ``/v1/models/<name>/predict`` and ``/feedback`` paths with its own row
schema (the templated routes that serve them take every model, so they are left out:
one body schema cannot say what every model accepts).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI

from shared.spec import FeatureSpec, ModelSpec

ROW = "FeatureRow"


def row_schema(spec: ModelSpec) -> dict[str, Any]:
    """JSON schema of one instance: every feature of ``spec``, nothing else.

    >>> from shared.spec import load_spec
    >>> schema = row_schema(load_spec())
    >>> schema["properties"]["age"]
    {'type': 'number', 'description': 'Customer age in years', 'minimum': 0.0, 'maximum': 150.0}
    >>> schema["properties"]["plan"]["enum"], schema["additionalProperties"]
    (['basic', 'plus', 'premium'], False)
    """
    return {
        "type": "object",
        "description": f"One instance of {spec.name}: each feature by name.",
        "properties": {f.name: _feature_schema(f) for f in spec.features},
        "required": list(spec.feature_names),
        "additionalProperties": False,
    }


def _feature_schema(feature: FeatureSpec) -> dict[str, Any]:
    if feature.type == "categorical":
        return {
            "type": "string",
            "enum": list(feature.categories),
            "description": feature.description,
        }
    schema: dict[str, Any] = {"type": "number", "description": feature.description}
    if feature.min is not None:
        schema["minimum"] = feature.min
    if feature.max is not None:
        schema["maximum"] = feature.max
    return schema


def document_spec(document: dict[str, Any], spec: ModelSpec, max_batch: int) -> None:
    """Describe the default model's rows, batches, outcomes and answers in ``document``
    (in place)."""
    schemas = document["components"]["schemas"]
    schemas[ROW] = row_schema(spec)
    _describe(schemas["PredictRequest"], schemas["FeedbackRequest"], ROW, spec, max_batch)
    _answers_of(document["paths"]["/v1/predict"]["post"], spec)


def document_models(
    document: dict[str, Any], specs: Mapping[str, ModelSpec], max_batch: int
) -> None:
    """Add each model's predict and feedback paths, with its own rows and labels."""
    schemas, paths = document["components"]["schemas"], document["paths"]
    for name, spec in sorted(specs.items()):
        key = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        row, predict, feedback = f"{ROW}.{key}", f"PredictRequest.{key}", f"FeedbackRequest.{key}"
        schemas[row] = row_schema(spec)
        schemas[predict] = copy.deepcopy(schemas["PredictRequest"])
        schemas[feedback] = copy.deepcopy(schemas["FeedbackRequest"])
        _describe(schemas[predict], schemas[feedback], row, spec, max_batch)
        schemas[predict]["examples"] = _examples(spec)
        schemas[feedback].pop("examples", None)
        for action, body, template, summary in (
            ("predict", predict, "/v1/predict", f"Predict with {name}"),
            ("feedback", feedback, "/v1/feedback", f"Report the true outcome of a {name} answer"),
        ):
            operation = copy.deepcopy(paths[template]["post"])
            operation["operationId"], operation["summary"] = f"{action}_{key}", summary
            content = operation["requestBody"]["content"]["application/json"]
            content["schema"] = {"$ref": f"#/components/schemas/{body}"}
            if action == "predict":
                _answers_of(operation, spec)
            paths[f"/v1/models/{name}/{action}"] = {"post": operation}


def _describe(
    predict_schema: dict[str, Any],
    feedback_schema: dict[str, Any],
    row_name: str,
    spec: ModelSpec,
    max_batch: int,
) -> None:
    row = {"$ref": f"#/components/schemas/{row_name}"}
    predict = predict_schema["properties"]
    predict["features"] = {**row, "description": predict["features"].get("description", "")}
    instances = predict["instances"].get("description", "").split(" At most")[0]
    predict["instances"] = {
        "type": "array",
        "items": row,
        "minItems": 1,
        "maxItems": max_batch,
        "description": f"{instances} At most {max_batch}.",
    }
    _outcomes(feedback_schema, spec)


def _outcomes(feedback_schema: dict[str, Any], spec: ModelSpec) -> None:
    """A classifier takes a true_label of its classes, a regressor a true_value; either a
    reward. The other task's field is left out (sending it is refused: 422)."""
    properties = feedback_schema["properties"]
    if spec.is_regression:
        properties.pop("true_label", None)
        properties["true_value"] = {"type": "number", "description": "The true value."}
        outcome = "true_value"
    else:
        properties.pop("true_value", None)
        properties["true_label"] = {
            "type": "string",
            "enum": list(spec.classes),
            "description": "The true class.",
        }
        outcome = "true_label"
    feedback_schema["anyOf"] = [
        {"required": [outcome], "not": {"required": ["reward"]}},
        {"required": ["reward"], "not": {"required": [outcome]}},
    ]


def _answers_of(operation: dict[str, Any], spec: ModelSpec) -> None:
    """The 200 answer of a predict operation: classes (a classifier) or values (a regressor)."""
    answer = "ValuePredictResponse" if spec.is_regression else "PredictResponse"
    content = operation["responses"]["200"]["content"]["application/json"]
    content["schema"] = {"$ref": f"#/components/schemas/{answer}"}


def _examples(spec: ModelSpec) -> list[dict[str, Any]]:
    """Bodies that fit ``spec``: one row, a batch of one, an entity alone."""
    row: dict[str, Any] = {}
    for feature in spec.features:
        if feature.categories:
            row[feature.name] = feature.categories[0]
        else:
            low = feature.min if feature.min is not None else 0.0
            row[feature.name] = low if feature.max is None else min(low, feature.max)
    return [{"features": row}, {"instances": [row]}, {"entity_id": "entity-42"}]


def _name_example(document: dict[str, Any], name: str) -> None:
    """Give every ``{name}`` path parameter the default model as its example."""
    for path in document["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "name":
                    parameter["schema"]["examples"] = [name]


Specs = Callable[[], dict[str, ModelSpec]]
"""Every model's spec, the default model's included."""


def install_spec_document(app: FastAPI, specs: Specs, default_model: str, max_batch: int) -> None:
    """Serve ``app``'s OpenAPI document with every model's rows, batches and labels; build it
    again when the specs changed (a model registered, a spec revised)."""
    build = app.openapi
    documented: list[dict[str, ModelSpec]] = []

    def openapi() -> dict[str, Any]:
        current = specs()
        # FastAPI caches what it builds in openapi_schema: dropped to rebuild it.
        if app.openapi_schema is None or documented != [current]:
            app.openapi_schema = None
            document = build()
            document_spec(document, current[default_model], max_batch)
            document_models(document, current, max_batch)
            _name_example(document, default_model)
            documented[:] = [current]
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
