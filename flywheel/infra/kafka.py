"""A single-node KRaft Kafka broker run from Maven-resolved jars, without Docker."""

from __future__ import annotations

import base64
import fcntl
import subprocess
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from flywheel.infra.aio import run_sync
from flywheel.infra.config import InfraConfig
from flywheel.infra.errors import InfraError, StartupError
from flywheel.infra.kafka_acl import all_service_acls, create_acls
from flywheel.infra.kafka_auth import (
    KafkaCredentials,
    ensure_credentials,
    load_credentials,
    sasl_properties,
    scram_format_arguments,
    write_private,
)
from flywheel.infra.processes import (
    ComponentStatus,
    ensure_port_free,
    ensure_running,
    port_open,
    require_tool,
    running_pid,
    spawn,
)
from shared.kafka_security import KafkaConnection
from shared.settings import BaseServiceSettings

NAME = "kafka"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
JAVA_FIX = "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)"
MAVEN_FIX = "install Maven (e.g. `apt-get install maven`) so Kafka's jars can be fetched"
LOG4J1 = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
"""
LOG4J2 = """status=warn
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
"""


def _is_kafka4(version: str) -> bool:
    """Tell whether a Kafka version uses log4j2 and share coordinators (4.x and later)."""
    return int(version.split(".")[0]) >= 4


def pom_xml(version: str) -> str:
    """Return a packaging-pom POM listing the broker and a logging binding."""
    group, artifact, binding_version = (
        ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.24.3")
        if _is_kafka4(version)
        else ("org.slf4j", "slf4j-reload4j", "1.7.36")
    )
    deps = [("org.apache.kafka", "kafka_2.13", version), (group, artifact, binding_version)]
    body = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        f"<groupId>flywheel</groupId><artifactId>kafka-runtime</artifactId><version>{version}"
        f"</version><packaging>pom</packaging><dependencies>{body}</dependencies></project>\n"
    )


def kafka_home(config: InfraConfig) -> Path:
    """Return the cache directory holding this Kafka version's pom and jars."""
    return config.cache_dir / f"kafka-{config.kafka_version}"


def ensure_kafka_libs(config: InfraConfig) -> Path:
    """Resolve Kafka's runtime jars with Maven once into the cache; return the libs dir."""
    home = kafka_home(config)
    libs, done = home / "libs", home / ".resolved"
    if done.exists():
        return libs
    mvn = require_tool("mvn", MAVEN_FIX)
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel session may be resolving the same jars
        if not done.exists():
            _copy_dependencies(mvn, home, config.kafka_version)
            done.touch()
    return libs


def _copy_dependencies(mvn: str, home: Path, version: str) -> None:
    """Run Maven's dependency plugin to copy the broker's runtime classpath into home/libs."""
    (home / "pom.xml").write_text(pom_xml(version))
    argv = [mvn, "-B", "-q", "-f", str(home / "pom.xml"), f"{DEPENDENCY_PLUGIN}:copy-dependencies"]
    argv += ["-DincludeScope=runtime", f"-DoutputDirectory={home / 'libs'}"]
    mvn_log = home / "mvn.log"
    with mvn_log.open("w") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
    if code != 0:
        raise InfraError(
            f"Maven could not fetch Kafka {version}'s jars; check access to Maven Central "
            f"(output in {mvn_log})."
        )


def _listener_properties(config: InfraConfig, credentials: KafkaCredentials | None) -> list[str]:
    """Listeners: one for clients (SASL/SCRAM with credentials), one for the controller."""
    host, port, ctl = "127.0.0.1", config.kafka_port, config.kafka_controller_port
    client = "PLAINTEXT" if credentials is None else "SASL_PLAINTEXT"
    lines = [
        f"controller.quorum.voters=1@{host}:{ctl}",
        f"listeners={client}://{host}:{port},CONTROLLER://{host}:{ctl}",
        f"advertised.listeners={client}://{host}:{port}",
        f"inter.broker.listener.name={client}",
        "controller.listener.names=CONTROLLER",
        f"listener.security.protocol.map=CONTROLLER:{client},{client}:{client}",
    ]
    return lines if credentials is None else lines + sasl_properties(credentials, client)


def server_properties(config: InfraConfig, credentials: KafkaCredentials | None = None) -> str:
    """Return the properties of a combined broker+controller KRaft node."""
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        *_listener_properties(config, credentials),
        f"log.dirs={config.kafka_dir / 'data'}",
        "num.partitions=1",
        "auto.create.topics.enable=true",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
    ]
    if _is_kafka4(config.kafka_version):
        lines += [
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
        ]
    return "\n".join(lines) + "\n"


def write_kafka_config(config: InfraConfig, credentials: KafkaCredentials | None = None) -> Path:
    """Write server and logging properties into run_dir/kafka; return the server file."""
    kafka_dir = config.kafka_dir
    kafka_dir.mkdir(parents=True, exist_ok=True)
    logging_file = "log4j2.properties" if _is_kafka4(config.kafka_version) else "log4j.properties"
    (kafka_dir / logging_file).write_text(LOG4J2 if _is_kafka4(config.kafka_version) else LOG4J1)
    server = kafka_dir / "server.properties"
    write_private(server, server_properties(config, credentials))  # the broker's own password
    return server


def _jvm_prefix(config: InfraConfig, java: str, libs: Path) -> list[str]:
    """Return the java command line up to the main class: logging flag and classpath."""
    kafka_dir = config.run_dir / "kafka"
    if _is_kafka4(config.kafka_version):
        logging_flag = f"-Dlog4j2.configurationFile={kafka_dir / 'log4j2.properties'}"
    else:
        logging_flag = f"-Dlog4j.configuration=file:{kafka_dir / 'log4j.properties'}"
    return [java, logging_flag, f"-Dkafka.logs.dir={kafka_dir / 'logs'}", "-cp", f"{libs}/*"]


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid()``, never one starting with "-", which
    the storage tool's argument parser would take for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _formatted(config: InfraConfig) -> bool:
    """Whether the KRaft log directory was formatted already."""
    return (config.kafka_dir / "data" / "meta.properties").exists()


def format_storage(
    config: InfraConfig,
    java: str,
    libs: Path,
    server: Path,
    credentials: KafkaCredentials | None = None,
) -> None:
    """Format the KRaft log directory once, with the principals' SCRAM credentials."""
    if _formatted(config):
        return
    argv = [*_jvm_prefix(config, java, libs), "kafka.tools.StorageTool", "format"]
    cluster_id = new_cluster_id()
    argv += ["-t", cluster_id, "-c", str(server), "--ignore-formatted"]
    argv += scram_format_arguments(credentials) if credentials is not None else []
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise StartupError(
            f"Formatting Kafka's storage failed; delete {config.run_dir / 'kafka'} and try again.",
            result.stdout + result.stderr,
        )


def broker_command(config: InfraConfig, java: str, libs: Path, server: Path) -> list[str]:
    """Return the java command that runs the broker."""
    heap = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
    prefix = _jvm_prefix(config, java, libs)
    return [prefix[0], *heap, "-Djava.awt.headless=true", *prefix[1:], "kafka.Kafka", str(server)]


async def _list_topics(kafka: KafkaConnection) -> None:
    """Send metadata requests to the broker through an admin client."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=5000)
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()


def kafka_answers(kafka: KafkaConnection) -> bool:
    """Tell whether a broker answers a metadata request (not merely a TCP connect)."""
    host, port = kafka.bootstrap.rsplit(":", 1)
    if not port_open(int(port), host):
        return False
    try:
        run_sync(_list_topics(kafka))
    except (KafkaError, OSError, TimeoutError):
        return False
    return True


def preflight_kafka(config: InfraConfig) -> None:
    """Raise PortTakenError if our broker is not running and its ports are held."""
    if running_pid(config.run_dir, NAME) is None:
        ensure_port_free(config.kafka_port, "FLYWHEEL_KAFKA_PORT")
        ensure_port_free(config.kafka_controller_port, "FLYWHEEL_KAFKA_CONTROLLER_PORT")


def _launch(config: InfraConfig, credentials: KafkaCredentials | None) -> int:
    """Check ports and tools, prepare jars, config and storage, and spawn the broker."""
    preflight_kafka(config)
    java = require_tool("java", JAVA_FIX)
    libs = ensure_kafka_libs(config)
    server = write_kafka_config(config, credentials)
    format_storage(config, java, libs, server, credentials)
    return spawn(NAME, broker_command(config, java, libs, server), config.run_dir)


def kafka_credentials(config: InfraConfig) -> KafkaCredentials | None:
    """The local broker's saved credentials; None when it runs without authentication."""
    return load_credentials(config.kafka_dir) if config.kafka_auth else None


def operator_connection(settings: BaseServiceSettings, config: InfraConfig) -> KafkaConnection:
    """How the CLI reaches Kafka: as the environment says, else as the local stack's operator."""
    kafka = settings.kafka_connection()
    credentials = kafka_credentials(config)
    configured = settings.kafka_security_protocol is not None or settings.kafka_sasl_username
    # The operator's password goes only to the broker it belongs to.
    if configured or credentials is None or kafka.bootstrap != config.kafka_bootstrap:
        return kafka
    return config.endpoints(credentials).kafka


def prepare_credentials(config: InfraConfig) -> KafkaCredentials | None:
    """The credentials to start with: generated at first start, refused for old storage."""
    if not config.kafka_auth:
        return None
    if _formatted(config) and load_credentials(config.kafka_dir) is None:
        raise StartupError(
            f"Kafka's storage in {config.kafka_dir} was formatted without authentication; "
            "delete that folder (its topics go with it) or set FLYWHEEL_KAFKA_AUTH=0."
        )
    return ensure_credentials(config.kafka_dir)


def start_kafka(config: InfraConfig, timeout: float = 90.0) -> str:
    """Start the broker unless ours already runs; wait for metadata; return the bootstrap.

    With authentication on, the services' ACLs are (re)applied on every start.
    """
    credentials = prepare_credentials(config)
    admin = config.endpoints(credentials).kafka
    ensure_running(
        NAME,
        config.run_dir,
        lambda: _launch(config, credentials),
        lambda: kafka_answers(admin),
        f"Kafka on {config.kafka_bootstrap}",
        timeout,
    )
    if credentials is not None:
        run_sync(create_acls(admin, all_service_acls()))
    return config.kafka_bootstrap


def kafka_status(config: InfraConfig) -> ComponentStatus:
    """Report whether our broker runs."""
    pid = running_pid(config.run_dir, NAME)
    state = "running" if pid is not None else "stopped"
    return ComponentStatus(NAME, state, pid, config.kafka_bootstrap)
