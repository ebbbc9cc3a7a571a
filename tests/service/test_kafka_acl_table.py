"""The topic table the broker's ACLs come from matches what each service really subscribes to.

A subscription missing from ``shared.asyncapi.CONSUMERS`` would be refused by the
broker (TopicAuthorizationFailed) the moment the service starts.
"""

from __future__ import annotations

import importlib

import pytest

from shared.asyncapi import CONSUMERS
from shared.settings import SERVICE_PORTS


@pytest.mark.parametrize("service", list(SERVICE_PORTS))
def test_a_services_subscriptions_are_its_consumers_entries(service: str) -> None:
    app = importlib.import_module(f"services.{service}.app").create_app()
    subscribers = list(app.state.runtime.broker.subscribers)
    subscribed = {topic for s in subscribers for topic in s.topic_names}
    assert subscribed == {topic.value for topic, names in CONSUMERS.items() if service in names}
    # Consumer groups fall under the service's prefixed group ACL.
    assert all(s.group_id.startswith(f"flywheel-{service}") for s in subscribers)
