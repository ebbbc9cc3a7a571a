"""How a Kafka client proves who it is: one description, turned into FastStream or aiokafka options.

Every client in Flywheel (the services' brokers, the CLI's producers, the
tests' consumers) is built from a :class:`KafkaConnection`, so a broker that
requires SASL/SCRAM (the local stack's default) is reached the same way by all.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: The environment variables that carry a client's security settings (see ``env``).
SECURITY_ENV = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
)

_FASTSTREAM_SASL: dict[SaslMechanism, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


@dataclass(frozen=True)
class KafkaSecurity:
    """A client's transport and identity: no SASL means the broker sees an anonymous client."""

    protocol: SecurityProtocol = "PLAINTEXT"
    mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None

    @property
    def sasl(self) -> bool:
        """Whether the client authenticates with SASL."""
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted."""
        return self.protocol.endswith("SSL")


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """A TLS context trusting ``ca_file`` (or the system's CAs), or None without TLS."""
    if not security.tls:
        return None
    cafile = str(security.ca_file) if security.ca_file else None
    return ssl.create_default_context(cafile=cafile)


def faststream_security(security: KafkaSecurity) -> BaseSecurity | None:
    """The ``security=`` argument of FastStream's ``KafkaBroker``.

    Examples
    --------
    >>> faststream_security(KafkaSecurity()) is None
    True
    >>> s = faststream_security(KafkaSecurity("SASL_PLAINTEXT", username="router", password="p"))
    >>> type(s).__name__, s.use_ssl
    ('SASLScram512', False)
    """
    context = ssl_context(security)
    if security.sasl:
        sasl = _FASTSTREAM_SASL[security.mechanism]
        return sasl(security.username, security.password, ssl_context=context, use_ssl=security.tls)
    return BaseSecurity(ssl_context=context) if security.tls else None


def aiokafka_options(security: KafkaSecurity) -> dict[str, Any]:
    """The security keyword arguments of aiokafka's producer, consumer and admin client.

    Examples
    --------
    >>> aiokafka_options(KafkaSecurity())
    {'security_protocol': 'PLAINTEXT'}
    >>> sorted(aiokafka_options(KafkaSecurity("SASL_PLAINTEXT", username="a", password="b")))
    ['sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol']
    """
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.sasl:
        options["sasl_mechanism"] = security.mechanism
        options["sasl_plain_username"] = security.username
        options["sasl_plain_password"] = security.password
    if security.tls:
        options["ssl_context"] = ssl_context(security)
    return options


@dataclass(frozen=True)
class KafkaConnection:
    """Where a broker is and how to authenticate to it."""

    bootstrap: str
    security: KafkaSecurity = KafkaSecurity()

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka client: bootstrap servers and security."""
        return {"bootstrap_servers": self.bootstrap, **aiokafka_options(self.security)}

    def env(self) -> dict[str, str]:
        """The environment variables a service reads these settings back from."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": self.security.protocol,
        }
        if self.security.sasl:
            env["KAFKA_SASL_MECHANISM"] = self.security.mechanism
            env["KAFKA_SASL_USERNAME"] = self.security.username
            env["KAFKA_SASL_PASSWORD"] = self.security.password
        if self.security.ca_file is not None:
            env["KAFKA_SSL_CAFILE"] = str(self.security.ca_file)
        return env


def as_connection(kafka: KafkaConnection | str) -> KafkaConnection:
    """A connection; a bare bootstrap string means a broker that takes anonymous clients."""
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(kafka)
