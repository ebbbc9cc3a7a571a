"""compose.yaml, the Dockerfile and Prometheus's config agree with what the services read.

Nothing here runs Docker: the files are parsed and checked against the services' pydantic
settings, so a typo in a variable name, a wrong port or a dangling address fails here.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices, AliasPath
from pydantic_settings import BaseSettings

from shared.settings import SERVICE_PORTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SERVICES = ("gateway", "router", "registry", "trainer", "monitor")
INFRA = ("kafka", "redis", "mlflow")

Service = dict[str, Any]


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return cast(dict[str, Any], data)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    return cast(dict[str, Service], compose["services"])


def _settings_class(name: str) -> type[BaseSettings]:
    """``services.<name>.settings.Settings``; a missing module fails the test (no skip)."""
    module = importlib.import_module(f"services.{name}.settings")
    cls = module.Settings
    assert isinstance(cls, type)
    assert issubclass(cls, BaseSettings)
    return cls


def _alias_names(alias: str | AliasPath | AliasChoices) -> list[str]:
    """Env names a validation alias reads: each choice, the head of a path."""
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasPath):
        return [str(alias.path[0])]
    return [name for choice in alias.choices for name in _alias_names(choice)]


def _accepted_env(cls: type[BaseSettings]) -> set[str]:
    """Environment variable names ``cls`` reads (pydantic-settings, case-insensitive)."""
    config = cls.model_config
    prefix = config.get("env_prefix") or ""
    by_name = bool(config.get("validate_by_name") or config.get("populate_by_name"))
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if alias is not None:
            names.update(_alias_names(alias))
        if alias is None or by_name:
            names.add(prefix + field_name)
    if config.get("case_sensitive"):
        return names
    return {name.upper() for name in names}


def _defaults(cls: type[BaseSettings], monkeypatch: pytest.MonkeyPatch) -> BaseSettings:
    """``cls()`` with none of its environment variables set: its defaults."""
    for name in _accepted_env(cls):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return cls()


def _default_port(name: str, monkeypatch: pytest.MonkeyPatch) -> int:
    port = getattr(_defaults(_settings_class(name), monkeypatch), "port", None)
    assert isinstance(port, int), f"services.{name}.settings.Settings has no int port"
    return port


def _environment(service: Service) -> dict[str, str]:
    """A service's environment, from the mapping or the ``KEY=VALUE`` list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (str(item).partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _published(service: Service) -> set[tuple[int, int]]:
    """``(host port, container port)`` pairs a service publishes, short or long syntax."""
    pairs: set[tuple[int, int]] = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            pairs.add((int(entry["published"]), int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) >= 2:
            pairs.add((int(parts[-2]), int(parts[-1])))
    return pairs


def _command(service: Service) -> list[str]:
    command = service.get("command")
    if isinstance(command, str):
        return command.split()
    return [str(part) for part in command or []]


def _option(argv: list[str], flag: str) -> str:
    """Value of ``--flag value`` or ``--flag=value`` in ``argv``."""
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {argv}")


def _kafka_listeners(kafka: Service) -> dict[str, tuple[str, int]]:
    """``name -> (host, port)`` of ``KAFKA_<key>`` listeners like ``NAME://host:port``."""
    env = _environment(kafka)

    def parse(key: str) -> dict[str, tuple[str, int]]:
        found: dict[str, tuple[str, int]] = {}
        for item in env[key].split(","):
            match = re.fullmatch(r"\s*(\w+)://([^:]*):(\d+)\s*", item)
            assert match, f"unparsable listener {item!r} in {key}"
            found[match[1]] = (match[2], int(match[3]))
        return found

    listeners, advertised = parse("KAFKA_LISTENERS"), parse("KAFKA_ADVERTISED_LISTENERS")
    for name, (_, port) in advertised.items():
        assert name in listeners, f"advertised listener {name} is not in KAFKA_LISTENERS"
        assert listeners[name][1] == port, f"listener {name} advertises another port"
    return advertised


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


# --- the services ----------------------------------------------------------------------------


def test_compose_runs_the_five_services_built_from_the_dockerfile(
    services: dict[str, Service],
) -> None:
    assert set(SERVICES) == set(SERVICE_PORTS)
    assert set(SERVICES) <= set(services)
    for name in SERVICES:
        build = services[name].get("build")
        context = build.get("context", ".") if isinstance(build, dict) else build
        assert context is not None, f"{name} is not built"
        assert (ROOT / str(context)).resolve() == ROOT, f"{name} builds from {context}"
        dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else None
        assert dockerfile in (None, "Dockerfile"), f"{name} builds another Dockerfile"


@pytest.mark.parametrize("name", SERVICES)
def test_command_names_its_own_service(services: dict[str, Service], name: str) -> None:
    assert _command(services[name]) == [name]


@pytest.mark.parametrize("name", SERVICES)
def test_publishes_the_port_its_settings_default_to(
    services: dict[str, Service], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _default_port(name, monkeypatch)
    assert (port, port) in _published(services[name])


@pytest.mark.parametrize("name", SERVICES)
def test_environment_binds_all_interfaces_on_the_default_port(
    services: dict[str, Service], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _environment(services[name])
    assert env.get(f"{name.upper()}_PORT") == str(_default_port(name, monkeypatch))
    assert env.get(f"{name.upper()}_HOST") == "0.0.0.0"


@pytest.mark.parametrize("name", SERVICES)
def test_environment_sets_only_variables_the_settings_read(
    services: dict[str, Service], name: str
) -> None:
    accepted = _accepted_env(_settings_class(name))
    unread = {key for key in _environment(services[name]) if key.upper() not in accepted}
    assert not unread, f"{name} sets variables no Settings field reads: {sorted(unread)}"


@pytest.mark.parametrize("name", SERVICES)
def test_settings_load_from_the_compose_environment(
    services: dict[str, Service], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = _settings_class(name)
    defaults = _defaults(cls, monkeypatch)
    env = _environment(services[name])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = cls()
    assert getattr(settings, "host", None) == "0.0.0.0"
    assert getattr(settings, "port", None) == getattr(defaults, "port", None)
    assert getattr(settings, "kafka_bootstrap_servers", None) == env["KAFKA_BOOTSTRAP_SERVERS"]


@pytest.mark.parametrize("name", SERVICES)
def test_data_dir_is_the_shared_named_volume(
    compose: dict[str, Any], services: dict[str, Service], name: str
) -> None:
    data_dir = _environment(services[name]).get("FLYWHEEL_DATA_DIR")
    assert data_dir, f"{name} does not set FLYWHEEL_DATA_DIR"
    mounts = {}
    for volume in services[name].get("volumes") or []:
        if isinstance(volume, dict):
            mounts[str(volume["target"])] = str(volume.get("source"))
        else:
            source, target, *_ = str(volume).split(":")
            mounts[target] = source
    assert data_dir in mounts, f"{name} mounts nothing at {data_dir}"
    assert mounts[data_dir] in (compose.get("volumes") or {}), "data is not a named volume"
    assert mounts[data_dir] == "data"


@pytest.mark.parametrize("name", SERVICES)
def test_waits_for_healthy_infrastructure_and_probes_its_own_healthz(
    services: dict[str, Service], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    depends_on = services[name].get("depends_on") or {}
    assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
    for infra in INFRA:
        assert depends_on.get(infra, {}).get("condition") == "service_healthy", (name, infra)
        assert services[infra].get("healthcheck", {}).get("test"), f"{infra} has no healthcheck"
    probe = " ".join(str(part) for part in services[name]["healthcheck"]["test"])
    assert re.findall(r":(\d+)/healthz\b", probe) == [str(_default_port(name, monkeypatch))]


# --- where the services find Kafka, Redis and MLflow ----------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_kafka_bootstrap_is_the_internal_listener(services: dict[str, Service], name: str) -> None:
    kafka = services["kafka"]
    env = _environment(kafka)
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    internal = {
        f"{host}:{port}"
        for listener, (host, port) in _kafka_listeners(kafka).items()
        if host in ("kafka", kafka.get("hostname")) and protocols.get(listener) == "PLAINTEXT"
    }
    bootstrap = _environment(services[name])["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    assert internal, "Kafka advertises no listener on its compose service name"
    assert set(bootstrap) <= internal, f"{bootstrap} is not among {sorted(internal)}"


@pytest.mark.parametrize("name", SERVICES)
def test_redis_url_points_at_the_redis_service(services: dict[str, Service], name: str) -> None:
    url = urlsplit(_environment(services[name])["REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname in services
    assert str(services[url.hostname]["image"]).startswith("redis:")
    assert (url.port or 6379) == 6379


def test_redis_keeps_an_append_only_file_on_a_named_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    argv = _command(redis)
    assert argv[0] == "redis-server"
    assert _option(argv, "--appendonly") == "yes"
    assert _option(argv, "--appendfsync") == "everysec"
    data_dir = _option(argv, "--dir")
    mounts = dict(str(v).split(":", 1)[::-1] for v in redis.get("volumes") or [])
    assert data_dir in mounts, f"{data_dir} is not mounted: the file dies with the container"
    assert mounts[data_dir] in (compose.get("volumes") or {}), "mount a named volume"


@pytest.mark.parametrize("name", SERVICES)
def test_mlflow_uri_points_at_the_mlflow_server(services: dict[str, Service], name: str) -> None:
    url = urlsplit(_environment(services[name])["MLFLOW_TRACKING_URI"])
    assert url.scheme == "http"
    assert url.hostname == "mlflow"
    argv = _command(services["mlflow"])
    assert url.port == int(_option(argv, "--port"))
    # MLflow 3 answers 403 to a Host header its --allowed-hosts patterns do not match.
    allowed = _option(argv, "--allowed-hosts").split(",")
    assert any(fnmatch.fnmatch(url.netloc, pattern) for pattern in allowed), url.netloc


def test_mlflow_image_matches_the_pinned_client(services: dict[str, Service]) -> None:
    constraints = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    match = re.search(r"^mlflow==(\S+)$", constraints, re.MULTILINE)
    assert match, "constraints.txt does not pin mlflow"
    assert services["mlflow"]["image"] == f"ghcr.io/mlflow/mlflow:v{match[1]}"


# --- Prometheus and the image ------------------------------------------------------------------


def test_prometheus_scrapes_every_service_on_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _yaml(PROMETHEUS)
    targets = {
        str(target)
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job.get("static_configs") or []
        for target in static.get("targets") or []
    }
    for name in SERVICES:
        assert f"{name}:{_default_port(name, monkeypatch)}" in targets, name
    assert "rules/*.yml" in config.get("rule_files", [])


def test_dockerfile_runs_flywheel_service_as_a_non_root_user() -> None:
    instructions = _dockerfile_instructions()
    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert stages, "Dockerfile has no FROM"
    final = instructions[stages[-1] :]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage runs as root (no USER)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    entrypoints = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["flywheel", "service"]


def test_the_registry_requires_an_admin_token_from_the_environment(
    services: dict[str, Service],
) -> None:
    token = _environment(services["registry"]).get("REGISTRY_ADMIN_TOKEN", "")
    # ``${VAR:?message}``: compose stops with the message when the variable is unset.
    assert token.startswith("${FLYWHEEL_ADMIN_TOKEN:?"), token
