"""The AsyncAPI 3.0 document of Flywheel's events, generated from the contracts.

``python -m shared.asyncapi > docs/asyncapi.json`` rewrites the committed copy;
a test fails when it is stale.
"""

from __future__ import annotations

import json
from typing import Any

from shared.events import EVENT_TYPES, Event, Topic

#: Who publishes and who consumes each event type (documentation and the diagram).
PUBLISHERS: dict[Topic, tuple[str, ...]] = {
    Topic.DATA_ARRIVED: ("cli",),
    # The registry too: `flywheel models import` publishes the import run as a candidate.
    Topic.MODEL_TRAINED: ("trainer", "registry"),
    Topic.MODEL_APPROVED: ("registry",),
    Topic.MODEL_REJECTED: ("registry", "trainer"),
    Topic.DRIFT_DETECTED: ("monitor",),
    Topic.PREDICTION_LOGGED: ("gateway",),
    Topic.PREDICTION_FAILED: ("gateway",),
    Topic.FEEDBACK_RECEIVED: ("gateway",),
    Topic.EXPERIMENT_UPDATED: ("router",),
    Topic.MODEL_PROMOTED: ("router", "registry"),
    Topic.MODEL_ROLLED_BACK: ("router", "registry"),
    Topic.RETRAIN_MODEL: ("cli",),
    Topic.MODEL_REGISTERED: ("registry",),
}
CONSUMERS: dict[Topic, tuple[str, ...]] = {
    Topic.DATA_ARRIVED: ("trainer",),
    Topic.MODEL_TRAINED: ("registry",),
    Topic.MODEL_APPROVED: ("router", "registry", "monitor"),
    Topic.MODEL_REJECTED: (),
    Topic.DRIFT_DETECTED: ("trainer",),
    Topic.PREDICTION_LOGGED: ("monitor", "router"),
    Topic.PREDICTION_FAILED: ("router",),
    Topic.FEEDBACK_RECEIVED: ("router", "monitor"),
    Topic.EXPERIMENT_UPDATED: ("gateway",),
    Topic.MODEL_PROMOTED: ("gateway", "monitor", "registry", "router"),
    Topic.MODEL_ROLLED_BACK: ("gateway", "monitor", "registry", "router"),
    Topic.RETRAIN_MODEL: ("trainer",),
    Topic.MODEL_REGISTERED: ("gateway", "monitor", "registry", "trainer"),
}


def _message(event_type: type[Event]) -> dict[str, Any]:
    schema = event_type.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        "name": event_type.__name__,
        "title": event_type.__name__,
        "summary": (event_type.__doc__ or "").strip().splitlines()[0],
        "contentType": "application/json",
        "payload": schema,
    }


def _hoist_definitions(messages: dict[str, Any]) -> dict[str, Any]:
    """Move pydantic's per-model ``$defs`` into shared components."""
    schemas: dict[str, Any] = {}
    for message in messages.values():
        schemas.update(message["payload"].pop("$defs", {}))
    return dict(sorted(schemas.items()))


def build() -> dict[str, Any]:
    """The AsyncAPI document as a dict."""
    messages = {t.__name__: _message(t) for t in EVENT_TYPES}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event_type in EVENT_TYPES:
        name, topic = event_type.__name__, event_type.topic
        channels[name] = {
            "address": topic.value,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        for action, verb, services in (
            ("send", "publishes", PUBLISHERS[topic]),
            ("receive", "consumes", CONSUMERS[topic]),
        ):
            for service in services:
                operations[f"{service}.{action}.{name}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{name}"},
                    "summary": f"{service} {verb} {name}",
                }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Flywheel events",
            "version": "1",
            "description": "Events the five Flywheel services exchange on Kafka. "
            "Undeliverable events are parked on '<topic>.dlq' with the reason in headers.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _hoist_definitions(messages)},
    }


def render() -> str:
    """The AsyncAPI document as stable, pretty JSON."""
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
