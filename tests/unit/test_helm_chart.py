"""deploy/helm/flywheel renders with ``helm template`` into objects Kubernetes accepts.

Offline: each rendered object is checked field by field against the ``kubernetes`` client's
model of its kind (an unknown field, a wrong type or a missing required field fails), then
the chart's promises are asserted: replicas, the gateway's HPA, probes, the GPU request and
the environment for an external Kafka, Redis and MLflow, every variable one a service reads.
helm comes from ``make helm`` (``make test`` builds it); without it these tests fail.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from kubernetes import client as k8s  # type: ignore[import-untyped]
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "flywheel"
SERVICES = ("gateway", "router", "registry", "trainer", "monitor")
# The cluster version to render for: a helm built with `go install` assumes v1.20 otherwise,
# older than the chart's kubeVersion (autoscaling/v2 is GA from 1.23).
KUBE_VERSION = "1.31.0"
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
    "object": (object,),
}

Obj = dict[str, Any]

# The second render: every service at three replicas, the gateway without its HPA, a GPU
# for the trainer, and each optional secret in use.
SCALED_VALUES: Obj = {
    **{name: {"replicas": 3} for name in SERVICES},
    "gateway": {"replicas": 3, "autoscaling": {"enabled": False}},
    "trainer": {"replicas": 3, "gpu": {"enabled": True, "count": 2}},
    "kafka": {
        "bootstrapServers": "b-1.kafka.example:9096,b-2.kafka.example:9096",
        "securityProtocol": "SASL_SSL",
        "credentials": {"existingSecret": "flywheel-kafka"},
        "tls": {"caSecret": "kafka-ca"},
    },
    "redis": {"existingSecret": "flywheel-redis", "cluster": "true"},
    "mlflow": {"trackingUri": "https://mlflow.example"},
    "data": {"existingClaim": "shared-batches"},
    "config": {"extraEnv": {"KAFKA_TRAFFIC_LOOKBACK_S": 600}},
    "router": {"replicas": 3, "env": {"ROUTER_LOOK_EVERY": 25}},
}


def _helm() -> str:
    """The helm binary: FLYWHEEL_HELM (set by ``make test``), PATH, or ``make helm``'s cache."""
    built = sorted((Path.home() / ".cache" / "flywheel").glob("helm-*/helm"))
    candidates = [os.environ.get("FLYWHEEL_HELM"), shutil.which("helm"), *map(str, built)]
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if found is None:
        pytest.fail("helm is not installed: run `make helm` (make test does it)")
    return found


def _helm_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_helm(), *args], capture_output=True, text=True, check=False, timeout=120
    )


def _render(tmp_path: Path, values: Obj | None = None) -> list[Obj]:
    """``helm template`` with ``values`` over the chart's defaults: the rendered objects."""
    args = ["template", "flywheel", str(CHART), "--namespace", "ml", "--kube-version", KUBE_VERSION]
    if values is not None:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
        args += ["--values", str(values_file)]
    result = _helm_run(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.load_all(result.stdout, Loader=_UniqueKeyLoader) if doc]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key twice in one mapping, as kubectl's parser does."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicated = sorted({str(key) for key in keys if keys.count(key) > 1})
        if duplicated:
            raise yaml.constructor.ConstructorError(
                None, None, f"keys {duplicated} appear twice", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


@pytest.fixture(scope="module")
def default_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    return _render(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def scaled_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    return _render(tmp_path_factory.mktemp("scaled"), SCALED_VALUES)


# --- the schema check ----------------------------------------------------------------------------


def _model_name(obj: Obj) -> str:
    """``apps/v1`` + ``Deployment`` -> ``V1Deployment``; ``autoscaling/v2`` -> ``V2…``."""
    version = str(obj["apiVersion"]).rsplit("/", 1)[-1]
    return version[0].upper() + version[1:] + str(obj["kind"])


def _schema_errors(value: Any, type_name: str, where: str) -> list[str]:
    """Where ``value`` strays from the kubernetes client's ``type_name``: unknown fields, types."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {value!r}"]
        inner = type_name[5:-1]
        return [
            e for i, item in enumerate(value) for e in _schema_errors(item, inner, f"{where}[{i}]")
        ]
    if type_name.startswith("dict["):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {value!r}"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [e for k, v in value.items() for e in _schema_errors(v, inner, f"{where}.{k}")]
    if type_name in PRIMITIVES:
        wrong = isinstance(value, bool) and type_name in ("int", "float")
        if wrong or not isinstance(value, PRIMITIVES[type_name]):
            return [f"{where}: expected {type_name}, got {value!r}"]
        return []
    return _model_errors(value, getattr(k8s, type_name), where)


def _model_errors(value: Any, model: type, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected an object, got {value!r}"]
    json_keys = {json_key: attr for attr, json_key in model.attribute_map.items()}  # type: ignore[attr-defined]
    errors = [
        f"{where}.{key}: unknown field of {model.__name__}" for key in value if key not in json_keys
    ]
    for key, item in value.items():
        if key in json_keys:
            type_name = model.openapi_types[json_keys[key]]  # type: ignore[attr-defined]
            errors += _schema_errors(item, type_name, f"{where}.{key}")
    return errors


def _validate(obj: Obj) -> None:
    """Fail on a field the kind does not have, a wrong type, or a missing required field."""
    name = _model_name(obj)
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    assert hasattr(k8s, name), f"{where}: no kubernetes model {name}"
    errors = _schema_errors(obj, name, where)
    assert not errors, "\n".join(errors)
    # Deserialising runs the models' own checks (required fields, enums where they have them).
    response = SimpleNamespace(data=json.dumps(obj))
    k8s.ApiClient().deserialize(response, name)


def test_the_schema_check_refuses_what_kubernetes_would() -> None:
    """Positive control: the check catches an unknown field, a wrong type, a missing name."""
    container = {"name": "x", "image": "i", "readinessProbe": {"httpGet": {"path": "/", "port": 1}}}
    deployment: Obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [container]}},
        },
    }
    _validate(deployment)
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(AssertionError, match="readinesProbe: unknown field"):
        _validate(typo)
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["replicas"] = "3"
    with pytest.raises(AssertionError, match="replicas: expected int"):
        _validate(wrong_type)
    nameless = json.loads(json.dumps(deployment))
    del nameless["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        _validate(nameless)
    with pytest.raises(yaml.constructor.ConstructorError, match="appear twice"):
        yaml.load("labels: {app: a, app: b}", Loader=_UniqueKeyLoader)


@pytest.mark.parametrize("render", ["default_objects", "scaled_objects"])
def test_every_rendered_object_is_a_valid_kubernetes_object(
    render: str, request: pytest.FixtureRequest
) -> None:
    objects = cast(list[Obj], request.getfixturevalue(render))
    kinds = sorted({str(obj["kind"]) for obj in objects})
    expected = {"ConfigMap", "Deployment", "Service"}
    assert expected <= set(kinds), kinds
    for obj in objects:
        _validate(obj)


def test_helm_lint_passes() -> None:
    result = _helm_run("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


# --- helpers over the rendered objects -----------------------------------------------------------


def _of_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    """Objects of one kind by their component label (the service they belong to)."""
    found = {}
    for obj in objects:
        if obj["kind"] == kind:
            labels = obj["metadata"].get("labels", {})
            found[labels.get("app.kubernetes.io/component", obj["metadata"]["name"])] = obj
    return found


def _container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return cast(Obj, containers[0])


def _env(deployment: Obj) -> dict[str, Obj]:
    return {item["name"]: item for item in _container(deployment).get("env", [])}


def _config(objects: list[Obj]) -> dict[str, str]:
    (config_map,) = _of_kind(objects, "ConfigMap").values()
    return cast(dict[str, str], config_map["data"])


# --- what the chart promises ---------------------------------------------------------------------


def test_five_deployments_of_one_image_each_running_its_own_service(
    default_objects: list[Obj],
) -> None:
    deployments = _of_kind(default_objects, "Deployment")
    assert sorted(deployments) == sorted(SERVICES)
    for name, deployment in deployments.items():
        container = _container(deployment)
        assert container["args"] == [name]  # the image's entrypoint is `flywheel service`
        assert container["image"] == "flywheel:0.1.0"
        security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 10001


def test_replicas_come_from_the_values(
    default_objects: list[Obj], scaled_objects: list[Obj]
) -> None:
    default = _of_kind(default_objects, "Deployment")
    assert {n: d["spec"].get("replicas") for n, d in default.items()} == {
        "gateway": None,  # the HPA owns the gateway's count
        "router": 2,
        "registry": 2,
        "trainer": 2,
        "monitor": 2,
    }
    scaled = _of_kind(scaled_objects, "Deployment")
    assert {n: d["spec"]["replicas"] for n, d in scaled.items()} == dict.fromkeys(SERVICES, 3)
    assert "HorizontalPodAutoscaler" not in {obj["kind"] for obj in scaled_objects}


def test_the_gateway_scales_on_cpu_with_an_autoscaling_v2_hpa(default_objects: list[Obj]) -> None:
    (hpa,) = _of_kind(default_objects, "HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    gateway = _of_kind(default_objects, "Deployment")["gateway"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", gateway["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    # Utilization is relative to the request: without one the HPA cannot compute it.
    assert _container(gateway)["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("name", SERVICES)
def test_probes_ask_readyz_and_healthz_on_the_service_port(
    default_objects: list[Obj], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _container(_of_kind(default_objects, "Deployment")[name])
    (port,) = container["ports"]
    assert port["name"] == "http"
    for variable in _settings_env(name):  # the port the service binds by default
        monkeypatch.delenv(variable, raising=False)
    assert port["containerPort"] == _settings_class(name)().port  # type: ignore[attr-defined]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = _env(_of_kind(default_objects, "Deployment")[name])
    assert env[f"{name.upper()}_HOST"]["value"] == "0.0.0.0"
    assert env[f"{name.upper()}_PORT"]["value"] == str(port["containerPort"])


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_has_a_service_selecting_its_pods(
    default_objects: list[Obj], name: str
) -> None:
    service = _of_kind(default_objects, "Service")[name]
    pods = _of_kind(default_objects, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= pods.items()
    assert selector["app.kubernetes.io/component"] == name
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_the_config_map_points_at_the_external_kafka_redis_and_mlflow(
    default_objects: list[Obj], scaled_objects: list[Obj]
) -> None:
    config = _config(default_objects)
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert config["REDIS_URL"] == "redis://redis:6379/0"
    assert config["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert config["KAFKA_PARTITIONS"] == "12"
    scaled = _config(scaled_objects)
    assert scaled["KAFKA_BOOTSTRAP_SERVERS"] == SCALED_VALUES["kafka"]["bootstrapServers"]
    assert scaled["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert scaled["MLFLOW_TRACKING_URI"] == "https://mlflow.example"
    assert scaled["REDIS_CLUSTER"] == "true"
    assert "REDIS_URL" not in scaled  # it comes from the Secret instead
    assert scaled["KAFKA_TRAFFIC_LOOKBACK_S"] == "600"
    for deployment in _of_kind(default_objects, "Deployment").values():
        (source,) = _container(deployment)["envFrom"]
        assert source["configMapRef"]["name"] == "flywheel-config"


def test_secrets_come_from_existing_secrets(
    default_objects: list[Obj], scaled_objects: list[Obj]
) -> None:
    token = _env(_of_kind(default_objects, "Deployment")["registry"])["REGISTRY_ADMIN_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "flywheel-admin", "key": "admin-token"}
    for name, deployment in _of_kind(default_objects, "Deployment").items():
        assert "KAFKA_SASL_PASSWORD" not in _env(deployment), name
    for name, deployment in _of_kind(scaled_objects, "Deployment").items():
        env = _env(deployment)
        password = env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": "flywheel-kafka", "key": f"{name}-password"}
        username = env["KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"]
        assert username["key"] == f"{name}-username"
        redis = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert redis == {"name": "flywheel-redis", "key": "redis-url"}
        ca_file = env["KAFKA_SSL_CAFILE"]["value"]
        mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
        assert ca_file == f"{mounts['kafka-ca']}/ca.crt"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-ca"]["secret"]["secretName"] == "kafka-ca"
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "shared-batches"


def test_the_registry_will_not_render_without_an_admin_token(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"admin": {"existingSecret": ""}}), encoding="utf-8")
    args = ["template", "flywheel", str(CHART), "--kube-version", KUBE_VERSION]
    result = _helm_run(*args, "--values", str(values))
    assert result.returncode != 0
    assert "admin.existingSecret" in result.stderr


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"router": {"replicas": "three"}}, "/router/replicas"),
        ({"trainer": {"gpu": {"enabled": "yes"}}}, "/trainer/gpu/enabled"),
        ({"kafka": {"topics": {"compression": "gzip"}}}, "/kafka/topics/compression"),
    ],
)
def test_values_of_the_wrong_kind_are_refused_by_the_schema(
    tmp_path: Path, values: Obj, where: str
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
    args = ["template", "flywheel", str(CHART), "--kube-version", KUBE_VERSION]
    result = _helm_run(*args, "--values", str(values_file))
    assert result.returncode != 0
    assert where in result.stderr


def test_the_trainer_requests_a_gpu_only_when_enabled(
    default_objects: list[Obj], scaled_objects: list[Obj]
) -> None:
    for name, deployment in _of_kind(default_objects, "Deployment").items():
        limits = _container(deployment)["resources"].get("limits", {})
        assert "nvidia.com/gpu" not in limits, name
        assert "TRAINER_DEVICE" not in _env(deployment), name
    scaled = _of_kind(scaled_objects, "Deployment")
    trainer = _container(scaled["trainer"])
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert trainer["resources"]["limits"]["memory"] == "8Gi"  # the values' limits are kept
    assert _env(scaled["trainer"])["TRAINER_DEVICE"]["value"] == "cuda"
    for name in ("gateway", "router", "registry", "monitor"):
        assert "nvidia.com/gpu" not in _container(scaled[name])["resources"].get("limits", {})


def test_every_data_volume_is_one_shared_claim(default_objects: list[Obj]) -> None:
    (claim,) = _of_kind(default_objects, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    config = _config(default_objects)
    for deployment in _of_kind(default_objects, "Deployment").values():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
        assert mounts["data"] == config["FLYWHEEL_DATA_DIR"]


# --- every variable is one the service reads -----------------------------------------------------


def _settings_class(name: str) -> type[BaseSettings]:
    cls = importlib.import_module(f"services.{name}.settings").Settings
    assert issubclass(cls, BaseSettings)
    return cast(type[BaseSettings], cls)


def _settings_env(name: str) -> set[str]:
    """Environment variable names ``services.<name>.settings.Settings`` reads (upper case)."""
    cls = _settings_class(name)
    prefix = str(cls.model_config.get("env_prefix") or "")
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(prefix + field_name)
    return {n.upper() for n in names}


@pytest.mark.parametrize("render", ["default_objects", "scaled_objects"])
def test_every_variable_a_pod_gets_is_a_setting_of_its_service(
    render: str, request: pytest.FixtureRequest
) -> None:
    objects = cast(list[Obj], request.getfixturevalue(render))
    shared = set(_config(objects))
    for name, deployment in _of_kind(objects, "Deployment").items():
        unread = (shared | set(_env(deployment))) - _settings_env(name)
        assert not unread, f"{name} gets variables no Settings field reads: {sorted(unread)}"


def test_the_chart_version_matches_the_project(default_objects: list[Obj]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert match is not None
    assert chart["appVersion"] == match[1]
