"""The gateway's OpenAPI document says what the model spec says.

Request bodies are pydantic models fixed at import, while the features, their bounds
and the classes come from the spec loaded at start-up. The document is patched once,
when first built: a client (or schemathesis) reading it learns each feature's type and
bounds, and that a row out of them is refused.
"""

from __future__ import annotations

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
    """Describe rows, batches and labels in ``document`` (FastAPI's, changed in place)."""
    schemas = document["components"]["schemas"]
    schemas[ROW] = row_schema(spec)
    row = {"$ref": f"#/components/schemas/{ROW}"}
    predict = schemas["PredictRequest"]["properties"]
    predict["features"] = {**row, "description": predict["features"].get("description", "")}
    predict["instances"] = {
        "type": "array",
        "items": row,
        "minItems": 1,
        "maxItems": max_batch,
        "description": f"{predict['instances'].get('description', '')} At most {max_batch}.",
    }
    feedback = schemas["FeedbackRequest"]["properties"]
    feedback["true_label"] = {"type": "string", "enum": list(spec.classes)}


def install_spec_document(app: FastAPI, spec: ModelSpec, max_batch: int) -> None:
    """Serve ``app``'s OpenAPI document with the spec's rows, batches and labels in it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # FastAPI caches what it builds in openapi_schema
            document_spec(build(), spec, max_batch)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
