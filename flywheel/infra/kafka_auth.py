"""Who may talk to the local Kafka: SCRAM principals, their generated passwords, broker settings.

Each service authenticates as itself (``gateway``, ``router``…), so the broker's
ACLs (``kafka_acl``) can hold it to the topics it owns. ``flywheel-admin`` is the
operator's (CLI, tests) and ``flywheel-broker`` the broker's own; both are super
users. Passwords are generated once per run directory, into a file only its
owner can read, and given to SCRAM when the storage is formatted.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.kafka_security import KafkaSecurity, SaslMechanism
from shared.settings import SERVICE_PORTS

ADMIN = "flywheel-admin"
BROKER = "flywheel-broker"
#: Every principal the local broker knows: the five services, the operator, the broker.
PRINCIPALS: tuple[str, ...] = (*SERVICE_PORTS, ADMIN, BROKER)
SUPER_USERS: tuple[str, ...] = (ADMIN, BROKER)
MECHANISM: SaslMechanism = "SCRAM-SHA-512"
CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True)
class KafkaCredentials:
    """The passwords of the local broker's principals."""

    passwords: Mapping[str, str]

    def security(self, principal: str) -> KafkaSecurity:
        """How ``principal`` authenticates: SASL/SCRAM-SHA-512 over plaintext on loopback."""
        return KafkaSecurity("SASL_PLAINTEXT", MECHANISM, principal, self.passwords[principal])


def generate_credentials() -> KafkaCredentials:
    """A fresh random password for every principal."""
    return KafkaCredentials({name: secrets.token_urlsafe(24) for name in PRINCIPALS})


def load_credentials(kafka_dir: Path) -> KafkaCredentials | None:
    """The credentials saved in ``kafka_dir``, or None when there are none."""
    path = kafka_dir / CREDENTIALS_FILE
    if not path.exists():
        return None
    return KafkaCredentials(json.loads(path.read_text()))


def ensure_credentials(kafka_dir: Path) -> KafkaCredentials:
    """Load the run directory's credentials, generating and saving them (mode 0600) at first."""
    found = load_credentials(kafka_dir)
    if found is not None:
        return found
    credentials = generate_credentials()
    kafka_dir.mkdir(parents=True, exist_ok=True)
    write_private(kafka_dir / CREDENTIALS_FILE, json.dumps(dict(credentials.passwords), indent=2))
    return credentials


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (it holds passwords)."""
    # Created 0600, not chmod-ed afterwards: never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(text)


def scram_format_arguments(credentials: KafkaCredentials) -> list[str]:
    """``kafka-storage format`` arguments that store every principal's SCRAM credential."""
    arguments = []
    for name, password in credentials.passwords.items():
        arguments += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
    return arguments


def _jaas(module: str, username: str, password: str, extra: str = "") -> str:
    return (
        f"org.apache.kafka.common.security.{module} required "
        f'username="{username}" password="{password}"{extra};'
    )


def sasl_properties(
    credentials: KafkaCredentials, client: str, controller: str = "CONTROLLER"
) -> list[str]:
    """Broker settings: SCRAM on the client listener, PLAIN between broker and controller, ACLs.

    The controller listener cannot use SCRAM (its credentials live in the metadata
    the controller serves), so the broker proves itself there with a static PLAIN
    password; both sides are this one process.
    """
    broker = credentials.passwords[BROKER]
    plain = _jaas("plain.PlainLoginModule", BROKER, broker, f' user_{BROKER}="{broker}"')
    scram = _jaas("scram.ScramLoginModule", BROKER, broker)
    return [
        f"sasl.enabled.mechanisms={MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        "sasl.mechanism.controller.protocol=PLAIN",
        f"listener.name.{controller.lower()}.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.{controller.lower()}.plain.sasl.jaas.config={plain}",
        f"listener.name.{client.lower()}.{MECHANISM.lower()}.sasl.jaas.config={scram}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=" + ";".join(f"User:{name}" for name in SUPER_USERS),
        "allow.everyone.if.no.acl.found=false",
    ]
