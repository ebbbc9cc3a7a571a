"""The local broker's authentication: principals, ACLs from the topic table, broker settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from flywheel.infra import Endpoints, InfraConfig, StartupError
from flywheel.infra.kafka import (
    operator_connection,
    prepare_credentials,
    server_properties,
)
from flywheel.infra.kafka_acl import Acl, Operation, Pattern, Resource, all_service_acls
from flywheel.infra.kafka_auth import (
    ADMIN,
    CREDENTIALS_FILE,
    PRINCIPALS,
    ensure_credentials,
    generate_credentials,
    scram_format_arguments,
)
from flywheel.infra.stack import service_env
from shared.asyncapi import CONSUMERS, PUBLISHERS
from shared.events import Topic, dead_letter_topic
from shared.kafka_security import SECURITY_ENV
from shared.settings import SERVICE_PORTS, BaseServiceSettings


def _allowed(operation: Operation, topic: str) -> set[str]:
    """The services allowed ``operation`` on ``topic``."""
    return {
        acl.principal
        for acl in all_service_acls()
        if acl.resource == Resource.TOPIC and acl.name == topic and acl.operation == operation
    }


def test_only_the_router_may_write_experiment_updated() -> None:
    assert _allowed(Operation.WRITE, Topic.EXPERIMENT_UPDATED.value) == {"router"}


def test_the_registry_may_write_model_trained_for_an_import() -> None:
    # POST /v1/models/{name}/imports publishes the import run as a candidate; without
    # this ACL an authenticated broker refuses it (TopicAuthorizationFailed).
    assert _allowed(Operation.WRITE, Topic.MODEL_TRAINED.value) == {"trainer", "registry"}


@pytest.mark.parametrize("topic", list(Topic))
def test_writers_and_readers_are_the_tables_publishers_and_consumers(topic: Topic) -> None:
    services = set(SERVICE_PORTS)
    assert _allowed(Operation.WRITE, topic.value) == set(PUBLISHERS[topic]) & services
    assert _allowed(Operation.READ, topic.value) == set(CONSUMERS[topic])
    # A consumer parks what it cannot handle on the topic's dead-letter topic.
    assert _allowed(Operation.WRITE, dead_letter_topic(topic)) == set(CONSUMERS[topic])


def test_each_service_joins_only_groups_named_after_it() -> None:
    groups = [acl for acl in all_service_acls() if acl.resource == Resource.GROUP]
    assert groups == [
        Acl(name, Resource.GROUP, f"flywheel-{name}", Operation.READ, Pattern.PREFIXED)
        for name in SERVICE_PORTS
    ]


def test_an_authenticated_broker_has_sasl_listeners_an_authorizer_and_super_users(
    tmp_path: Path,
) -> None:
    config = InfraConfig(tmp_path, kafka_port=19092, kafka_controller_port=19093)
    properties = server_properties(config, generate_credentials())
    assert "listeners=SASL_PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in properties
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in properties
    assert "StandardAuthorizer" in properties
    assert "super.users=User:flywheel-admin;User:flywheel-broker" in properties
    assert "allow.everyone.if.no.acl.found=false" in properties
    plain = server_properties(config)
    assert "listeners=PLAINTEXT://127.0.0.1:19092" in plain
    assert "authorizer" not in plain


def test_every_principal_gets_a_scram_credential_at_format() -> None:
    credentials = generate_credentials()
    arguments = scram_format_arguments(credentials)
    assert arguments.count("--add-scram") == len(PRINCIPALS)
    assert f"SCRAM-SHA-512=[name=router,password={credentials.passwords['router']}]" in arguments


def test_credentials_are_generated_once_and_readable_by_their_owner_only(tmp_path: Path) -> None:
    first = ensure_credentials(tmp_path)
    assert ensure_credentials(tmp_path) == first
    assert set(first.passwords) == set(PRINCIPALS)
    assert len(set(first.passwords.values())) == len(PRINCIPALS)
    assert stat.S_IMODE((tmp_path / CREDENTIALS_FILE).stat().st_mode) == 0o600


def test_storage_formatted_without_authentication_is_refused_with_the_fix(tmp_path: Path) -> None:
    config = InfraConfig(tmp_path)
    (config.kafka_dir / "data").mkdir(parents=True)
    (config.kafka_dir / "data" / "meta.properties").write_text("version=1\n")
    with pytest.raises(StartupError, match="FLYWHEEL_KAFKA_AUTH=0"):
        prepare_credentials(config)
    assert prepare_credentials(InfraConfig(tmp_path, kafka_auth=False)) is None


def test_auth_is_on_unless_the_environment_turns_it_off() -> None:
    assert InfraConfig.from_env({}).kafka_auth
    assert not InfraConfig.from_env({"FLYWHEEL_KAFKA_AUTH": "0"}).kafka_auth


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*SECURITY_ENV, "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_each_service_process_reaches_kafka_as_itself(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("KAFKA_SASL_USERNAME", ADMIN)  # the parent's own must not leak through
    credentials = generate_credentials()
    endpoints = Endpoints("127.0.0.1:1", "redis://x", "http://x", tmp_path, credentials)
    env = service_env("monitor", endpoints, 8004)
    assert env["KAFKA_SASL_USERNAME"] == "monitor"
    assert env["KAFKA_SASL_PASSWORD"] == credentials.passwords["monitor"]
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    anonymous = service_env("monitor", Endpoints("127.0.0.1:1", "r", "m", tmp_path), 8004)
    assert anonymous["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert "KAFKA_SASL_USERNAME" not in anonymous


def test_the_cli_uses_the_local_operator_only_for_the_local_broker(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    config = InfraConfig(tmp_path, kafka_port=19092)
    credentials = ensure_credentials(config.kafka_dir)
    clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", config.kafka_bootstrap)
    local = operator_connection(BaseServiceSettings(), config)
    assert local.security == credentials.security(ADMIN)
    clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    elsewhere = operator_connection(BaseServiceSettings(), config)
    assert elsewhere.security.username == ""  # the operator's password stays home
    clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", config.kafka_bootstrap)
    clean_env.setenv("KAFKA_SASL_USERNAME", "trainer")
    assert operator_connection(BaseServiceSettings(), config).security.username == "trainer"
