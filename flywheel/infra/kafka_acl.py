"""What each service may do on Kafka, derived from who publishes and consumes each topic.

One table decides it: ``shared.asyncapi.PUBLISHERS`` and ``CONSUMERS``, the same
one the AsyncAPI document is drawn from. A service may write (and create) the
topics it publishes and the dead-letter topics of those it consumes, read the
topics it consumes, and join consumer groups named ``flywheel-<service>…``.
Nothing else: a gateway cannot forge ``experiment-updated``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest_v1
from aiokafka.protocol.api import Request

from flywheel.infra.errors import StartupError
from shared.asyncapi import CONSUMERS, PUBLISHERS
from shared.events import Topic, consumer_group, dead_letter_topic, topic_name
from shared.kafka_security import KafkaConnection
from shared.settings import SERVICE_PORTS


class Resource(IntEnum):
    """Kafka's resource type codes."""

    TOPIC = 2
    GROUP = 3


class Pattern(IntEnum):
    """Kafka's resource pattern type codes."""

    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    """Kafka's ACL operation codes (the ones granted here)."""

    READ = 3
    WRITE = 4
    CREATE = 5


ALLOW = 3  # Kafka's permission type code


@dataclass(frozen=True, order=True)
class Acl:
    """One allow rule: ``principal`` may ``operation`` on a resource."""

    principal: str
    resource: Resource
    name: str
    operation: Operation
    pattern: Pattern = Pattern.LITERAL


def _topic_acls(service: str, topic: str, *operations: Operation) -> list[Acl]:
    return [Acl(service, Resource.TOPIC, topic, op) for op in operations]


def service_acls(
    service: str,
    publishers: Mapping[Topic, Sequence[str]] = PUBLISHERS,
    consumers: Mapping[Topic, Sequence[str]] = CONSUMERS,
) -> list[Acl]:
    """Everything ``service`` is allowed on the broker.

    Create comes with write and read because topics are created on first use.

    Examples
    --------
    >>> acls = service_acls("trainer")
    >>> Acl("trainer", Resource.TOPIC, Topic.MODEL_TRAINED, Operation.WRITE) in acls
    True
    >>> Acl("trainer", Resource.TOPIC, Topic.MODEL_APPROVED, Operation.WRITE) in acls
    False
    """
    acls: list[Acl] = []
    for topic, names in publishers.items():
        if service in names:
            acls += _topic_acls(service, topic_name(topic), Operation.WRITE, Operation.CREATE)
    for topic, names in consumers.items():
        if service in names:
            acls += _topic_acls(service, topic_name(topic), Operation.READ, Operation.CREATE)
            acls += _topic_acls(
                service, dead_letter_topic(topic), Operation.WRITE, Operation.CREATE
            )
    group = Acl(service, Resource.GROUP, consumer_group(service), Operation.READ, Pattern.PREFIXED)
    return [*sorted(set(acls)), group]


def all_service_acls(services: Iterable[str] = SERVICE_PORTS) -> list[Acl]:
    """The ACLs of every service."""
    return [acl for service in services for acl in service_acls(service)]


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]
    """Many ACL creations in one request (aiokafka's own sends one)."""

    API_KEY = 30

    def __init__(self, acls: Sequence[Acl]) -> None:
        self._acls = acls

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> Any:
        return request_struct_class(
            [
                (a.resource, a.name, a.pattern, f"User:{a.principal}", "*", a.operation, ALLOW)
                for a in self._acls
            ]
        )


async def create_acls(admin: KafkaConnection, acls: Sequence[Acl]) -> None:
    """Create ``acls`` (existing ones are kept as they are); StartupError if one is refused."""
    client = AIOKafkaAdminClient(**admin.client_options(), request_timeout_ms=10000)
    await client.start()
    try:
        # aiokafka's admin client has no create_acls; its request plumbing does the rest.
        response = await client._send_request(_CreateAcls(acls))
    finally:
        await client.close()
    errors = [
        f"{acl}: {message or code}"
        for acl, (code, message) in zip(acls, response.creation_responses, strict=True)
        if code != 0
    ]
    if errors:
        raise StartupError("Kafka refused the services' ACLs.", "\n".join(errors))
