"""Kafka security settings: from the environment to FastStream's and aiokafka's arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from faststream.security import SASLScram512

from shared.kafka_security import (
    SECURITY_ENV,
    KafkaConnection,
    KafkaSecurity,
    aiokafka_options,
    as_connection,
    faststream_security,
)
from shared.settings import BaseServiceSettings

ROUTER = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", "router", "s3cret")


@pytest.fixture(autouse=True)
def _no_inherited_security(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*SECURITY_ENV, "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)


def test_without_settings_a_client_is_anonymous_on_plaintext() -> None:
    kafka = BaseServiceSettings().kafka_connection()
    assert kafka.security == KafkaSecurity()
    assert aiokafka_options(kafka.security) == {"security_protocol": "PLAINTEXT"}
    assert faststream_security(kafka.security) is None


def test_a_username_alone_means_sasl_over_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "router")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    assert BaseServiceSettings().kafka_connection().security == ROUTER


def test_an_explicit_protocol_and_ca_are_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "router")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(tmp_path / "ca.pem"))
    security = BaseServiceSettings().kafka_connection().security
    assert (security.protocol, security.ca_file) == ("SASL_SSL", tmp_path / "ca.pem")


def test_the_environment_a_connection_writes_reads_back_as_the_same_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection = KafkaConnection("127.0.0.1:19092", ROUTER)
    for name, value in connection.env().items():
        monkeypatch.setenv(name, value)
    assert BaseServiceSettings().kafka_connection() == connection


def test_the_password_is_kept_out_of_reprs_and_settings_dumps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "router")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    assert "s3cret" not in repr(ROUTER)
    assert "s3cret" not in repr(BaseServiceSettings())


def test_sasl_options_name_the_mechanism_and_the_principal() -> None:
    options = aiokafka_options(ROUTER)
    assert options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "router",
        "sasl_plain_password": "s3cret",
    }
    security = faststream_security(ROUTER)
    assert isinstance(security, SASLScram512)
    assert (security.username, security.password, security.use_ssl) == ("router", "s3cret", False)


def test_tls_brings_a_context() -> None:
    options = aiokafka_options(KafkaSecurity("SASL_SSL", username="a", password="b"))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["ssl_context"] is not None


def test_a_bare_bootstrap_string_is_an_anonymous_connection() -> None:
    assert as_connection("127.0.0.1:1") == KafkaConnection("127.0.0.1:1", KafkaSecurity())
    connection = KafkaConnection("127.0.0.1:1", ROUTER)
    assert as_connection(connection) is connection
