"""Serving: the Flywheel gateway against ``bentoml serve`` and a bare FastAPI endpoint.

Run: ``.venv/bin/python benchmarks/serving.py [--seconds 10] [--connections 4,16,64]``.

One model (the trainer's torch MLP pipeline, trained on CPU, registered, gated,
approved and packaged into a BentoML store exactly as the registry does) is
served three ways, one server at a time, each one process with one worker
pinned with ``taskset`` to ``--server-cpus`` (default CPU 0), while the load
generator is pinned to ``--client-cpus`` (default CPU 1):

* the gateway, ``POST /v1/predict`` one row under ``features``, with routing and
  prediction logging on (events go to Kafka and Redis), then again with
  ``GATEWAY_LOG_PREDICTIONS=false``;
* ``bentoml serve bento_service:FlywheelModel`` (one worker, access log off, as
  the gateway has none), ``POST /predict`` the same row under ``rows``;
* ``benchmarks/bare_endpoint.py``, uvicorn like the gateway, a constant answer.

With ``--generic`` the same pipeline is also logged behind MLflow's generic
(pyfunc) flavour under a model of its own, and only the two gateways are
measured: Flywheel's own pipeline, scored straight from the rows, against that
pyfunc model, which the gateway loads through ``shared.scoring`` and scores from
a DataFrame (what a model trained elsewhere costs to serve).

Each server gets a wrk sweep over the connection counts (one wrk thread); the
best req/s is its peak, reported with that run's p50/p99. Each gateway is then
held at 70 % of the logging-on gateway's peak by a fixed-rate open-loop
generator (``benchmarks/loadgen.py``; the same run against the bare endpoint
shows the generator's own floor), and 256-row batches, sent one after another,
are timed by the gateway's own ``server_time_ms``. Kafka, Redis and MLflow are
started unless they answer (``FLYWHEEL_*`` variables of ``flywheel infra``);
those started here are stopped. They are not pinned: they share both CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
from loadgen import OpenLoopResult, WrkResult, run_open_loop, run_wrk
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel
from prometheus_client import CollectorRegistry

from flywheel.infra import INFRA, Endpoints, InfraConfig, infra_status, start_infra
from flywheel.infra.processes import stop
from services.registry.adapters import MlflowCandidateLoader, MlflowModelRegistry
from services.registry.gates import GatePolicy
from services.registry.handlers import RegistryHandlers
from services.registry.metrics import RegistryMetrics
from services.registry.packaging import BentoModelStore
from services.trainer.adapters import MlflowModelStore
from services.trainer.core import TrainingConfig, data_version, train
from services.trainer.ports import RunContext
from shared.catalog import ModelCatalog
from shared.datasets import generate_customers, write_batch
from shared.events import ModelTrained
from shared.mlflow_client import mlflow_client
from shared.mlflow_specs import MlflowSpecSource, register_spec
from shared.spec import ModelSpec, load_spec
from shared.testing import RecordingPublisher

ROOT = Path(__file__).resolve().parents[1]
SPEC = load_spec()


@dataclass(frozen=True)
class Approved:
    """The benchmark's model: registered name, BentoML tag and BentoML home."""

    name: str
    tag: str
    home: Path


def ensure_infra() -> tuple[Endpoints, list[str]]:
    """Start Kafka, Redis and MLflow unless they run; return endpoints and what was started."""
    config = InfraConfig.from_env()
    before = {s.name: s.state for s in infra_status(config)}
    endpoints = start_infra(config)
    return endpoints, [name for name in INFRA if not before[name].startswith("running")]


def spec_of(name: str) -> ModelSpec:
    """The packaged spec under the model's own name (a registered spec names its model)."""
    return SPEC.model_copy(update={"name": name})


def train_and_log(infra: Endpoints, workdir: Path, name: str) -> ModelTrained:
    """Register ``name`` with its spec, train one torch-MLP version on CPU and log it."""
    register_spec(mlflow_client(infra.mlflow_uri), name, spec_of(name), "benchmark")
    frame = generate_customers(2000, 4)
    ref = write_batch(frame, workdir / "batch.parquet")
    model = train(frame, SPEC, TrainingConfig(candidates=("torch_mlp",), device="cpu"))
    context = RunContext(name, data_version([ref.sha256]), "data", "e", "c", (ref,))
    run_id = MlflowModelStore(infra.mlflow_uri).log_training(model, context)
    return ModelTrained(
        producer="benchmark",
        model_name=name,
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        algorithm=model.algorithm,
        metrics=model.metrics,
        data_version=context.data_version,
    )


def approve_model(infra: Endpoints, workdir: Path) -> Approved:
    """Train, log, register, gate and package one torch-MLP version (it becomes champion)."""
    name = f"bench-serving-{uuid.uuid4().hex[:8]}"
    home = workdir / "bentoml"
    trained = train_and_log(infra, workdir, name)
    specs = MlflowSpecSource(infra.mlflow_uri)
    registered = specs.registered_spec(name)
    assert registered is not None, f"{name}'s spec was not stored"
    handlers = RegistryHandlers(
        models=MlflowModelRegistry(infra.mlflow_uri),
        loader=MlflowCandidateLoader(infra.mlflow_uri),
        catalog=ModelCatalog(specs),
        publisher=RecordingPublisher(),
        metrics=RegistryMetrics.create(CollectorRegistry()),
        policy=GatePolicy(latency_budget_ms=250.0),
        packager=BentoModelStore(home),
    )
    handlers._register_and_decide(trained, registered)
    tags = MlflowModelRegistry(infra.mlflow_uri).list_versions(name)[0].tags
    return Approved(name, tags["flywheel.bento_tag"], home)


class PipelineAsPyfunc(PythonModel):
    """A pipeline behind the generic flavour: class-named probability columns, as a model
    trained elsewhere would answer."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """The pipeline's probabilities, one column per class."""
        probabilities = self.pipeline.predict_proba(model_input)
        return pd.DataFrame(probabilities, columns=[str(c) for c in self.pipeline.classes_])


def register_generic(infra: Endpoints, name: str) -> str:
    """``name``'s champion logged again as a pyfunc model, registered as ``<name>-pyfunc``
    with the same spec and made its champion; returns that name."""
    generic = f"{name}-pyfunc"
    client = mlflow_client(infra.mlflow_uri)
    register_spec(client, generic, spec_of(generic), "benchmark")
    mlflow.set_tracking_uri(infra.mlflow_uri)
    pipeline = mlflow.sklearn.load_model(f"models:/{name}@champion")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PipelineAsPyfunc(pipeline),
            pip_requirements=["scikit-learn", "torch", "pandas"],
        )
    version = mlflow.register_model(str(info.model_uri), generic).version
    client.set_registered_model_alias(generic, "champion", str(version))
    return generic


def delete_models(infra: Endpoints, names: Iterable[str]) -> None:
    """Delete the benchmark's registered models (their versions go with them)."""
    client = mlflow_client(infra.mlflow_uri)
    for name in names:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(name)


@contextlib.contextmanager
def server(
    argv: list[str],
    env: dict[str, str],
    ready: Callable[[], bool],
    cpus: str,
    timeout_s: float = 180.0,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` pinned to ``cpus`` in its own session until ``ready``; stop it after.

    Yields the process (``taskset`` execs ``argv``: its pid is the server's).
    """
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            ["taskset", "-c", cpus, *argv],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not _answers(ready):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"{argv[:4]} did not become ready:\n{tail}")
                time.sleep(0.5)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _answers(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except httpx.HTTPError:
        return False


def gateway_ready(url: str) -> Callable[[], bool]:
    """Ready once ``/readyz`` reports the champion loaded."""
    return lambda: bool(httpx.get(f"{url}/readyz", timeout=2).json().get("model_loaded"))


def http_ok(url: str) -> Callable[[], bool]:
    """Ready once ``url`` answers 200."""
    return lambda: httpx.get(url, timeout=2).status_code == 200


def sweep(url: str, body: Path, args: argparse.Namespace) -> list[WrkResult]:
    """A short warm-up, then one wrk run per connection count."""
    run_wrk(url, body, args.connections[0], 3, args.client_cpus)
    return [run_wrk(url, body, c, args.seconds, args.client_cpus) for c in args.connections]


def batch_times(
    url: str, rows: list[dict[str, Any]], count: int
) -> tuple[list[float], list[float]]:
    """Server times (``server_time_ms``) and round trips (ms) of ``count`` batch requests."""
    server, client = [], []
    with httpx.Client(timeout=30) as http:
        for i in range(count + 10):
            started = time.perf_counter()
            response = http.post(url, json={"instances": rows})
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if i >= 10:  # the first ten warm up
                server.append(float(response.json()["server_time_ms"]))
                client.append(elapsed)
    return server, client


@dataclass
class Results:
    """Everything measured, for the report; keys are server names."""

    sweeps: dict[str, list[WrkResult]] = field(default_factory=dict)
    open_loop: dict[str, OpenLoopResult] = field(default_factory=dict)
    batches: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    def peak(self, name: str) -> WrkResult:
        """The run with the most req/s."""
        return max(self.sweeps[name], key=lambda r: r.rps)


GATEWAY, GATEWAY_OFF, BENTO, BARE, GENERIC = (
    "gateway",
    "gateway, logging off",
    "bentoml serve",
    "bare FastAPI",
    "gateway, pyfunc model",
)


def measure(
    approved: Approved, infra: Endpoints, workdir: Path, args: argparse.Namespace
) -> Results:
    """Serve the model each way, one server at a time, and load each one."""
    features = list(SPEC.feature_names)
    row = _json_row(generate_customers(1, 11)[features].iloc[0].to_dict())
    batch = [_json_row(r) for r in generate_customers(256, 12)[features].to_dict("records")]
    bodies = {GATEWAY: {"features": row}, BENTO: {"rows": [row]}}
    files = {k: workdir / f"body-{i}.json" for i, k in enumerate(bodies)}
    for key, body in bodies.items():
        files[key].write_text(json.dumps(body))
    base, results = f"http://127.0.0.1:{args.port}", Results()
    predict = f"{base}/v1/predict"
    env = {
        "FLYWHEEL_MODEL_NAME": approved.name,
        **infra.kafka_for("gateway").env(),  # the gateway's own principal, as `flywheel up` runs it
        "REDIS_URL": infra.redis_url,
        "MLFLOW_TRACKING_URI": infra.mlflow_uri,
        "GATEWAY_PORT": str(args.port),
    }
    gateway = [sys.executable, "-m", "flywheel", "service", "gateway"]
    bare = [sys.executable, str(ROOT / "benchmarks" / "bare_endpoint.py"), "--port", str(args.port)]
    bento_ready = http_ok(f"{base}/readyz")
    with server(bare, {}, http_ok(f"{base}/readyz"), args.server_cpus):
        results.sweeps[BARE] = sweep(predict, files[GATEWAY], args)
    with server(_bento_argv(args.port), _bento_env(approved), bento_ready, args.server_cpus):
        results.sweeps[BENTO] = sweep(f"{base}/predict", files[BENTO], args)
    rate = 0.0
    for name, extra in ((GATEWAY, {}), (GATEWAY_OFF, {"GATEWAY_LOG_PREDICTIONS": "false"})):
        with server(gateway, {**env, **extra}, gateway_ready(base), args.server_cpus):
            results.sweeps[name] = sweep(predict, files[GATEWAY], args)
            rate = rate or 0.7 * results.peak(GATEWAY).rps
            body = files[GATEWAY].read_bytes()
            results.open_loop[name] = run_open_loop(predict, body, rate, args.seconds * 2)
            results.batches[name] = batch_times(predict, batch, args.batches)
    with server(bare, {}, http_ok(f"{base}/readyz"), args.server_cpus):
        body = files[GATEWAY].read_bytes()
        results.open_loop[BARE] = run_open_loop(predict, body, rate, args.seconds * 2)
    return results


def measure_generic(
    names: Mapping[str, str], infra: Endpoints, workdir: Path, args: argparse.Namespace
) -> Results:
    """Each gateway (by result key: the model it serves as its default), one at a time:
    a wrk sweep of single rows, then 256-row batches."""
    features = list(SPEC.feature_names)
    row = _json_row(generate_customers(1, 11)[features].iloc[0].to_dict())
    batch = [_json_row(r) for r in generate_customers(256, 12)[features].to_dict("records")]
    body = workdir / "body-generic.json"
    body.write_text(json.dumps({"features": row}))
    base, results = f"http://127.0.0.1:{args.port}", Results()
    gateway = [sys.executable, "-m", "flywheel", "service", "gateway"]
    for key, name in names.items():
        env = {
            "FLYWHEEL_MODEL_NAME": name,
            **infra.kafka_for("gateway").env(),
            "REDIS_URL": infra.redis_url,
            "MLFLOW_TRACKING_URI": infra.mlflow_uri,
            "GATEWAY_PORT": str(args.port),
        }
        with server(gateway, env, gateway_ready(base), args.server_cpus):
            results.sweeps[key] = sweep(f"{base}/v1/predict", body, args)
            results.batches[key] = batch_times(f"{base}/v1/predict", batch, args.batches)
    return results


def report_generic(results: Results) -> None:
    """Every run, then the pyfunc model's peak and batch time against the fast path's."""
    print("\nwrk runs (1 thread, closed loop):")
    print(f"{'server':<22} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
    for name, runs in results.sweeps.items():
        for r in runs:
            line = f"{r.connections:>5} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
            print(f"{name:<22} {line} {r.failures:>6}")
    fast, generic = results.peak(GATEWAY), results.peak(GENERIC)
    print(
        f"\nPeak: fast path {fast.rps:.0f} req/s (p50 {fast.p50_ms:.2f} ms), pyfunc "
        f"{generic.rps:.0f} req/s (p50 {generic.p50_ms:.2f} ms): {generic.rps / fast.rps:.2f}×"
    )
    _report_batches(results)


def _report_batches(results: Results) -> None:
    for name, (server_ms, client_ms) in results.batches.items():
        print(
            f"\n256-row batch, {name} ({len(server_ms)} requests one after another): server time "
            f"p50 {_pct(server_ms, 50):.2f} ms, p99 {_pct(server_ms, 99):.2f} ms; "
            f"round trip p50 {_pct(client_ms, 50):.2f} ms, p99 {_pct(client_ms, 99):.2f} ms"
        )


def _json_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(k): (v if isinstance(v, str) else float(v)) for k, v in row.items()}


def _bento_argv(port: int) -> list[str]:
    argv = [sys.executable, "-m", "bentoml", "serve", "bento_service:FlywheelModel"]
    return [*argv, "--host", "127.0.0.1", "--port", str(port)]


def _bento_env(approved: Approved) -> dict[str, str]:
    service = 'services."flywheel-model"'
    return {
        "BENTOML_HOME": str(approved.home),
        "BENTOML_DO_NOT_TRACK": "True",
        "FLYWHEEL_BENTO_MODEL": approved.tag,
        "BENTOML_CONFIG_OPTIONS": f"{service}.workers=1 {service}.logging.access.enabled=false",
    }


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def report(results: Results) -> None:
    """Print every run, the comparison table, and each target met or not."""
    print("\nwrk runs (1 thread, closed loop):")
    print(f"{'server':<22} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
    for name, runs in results.sweeps.items():
        for r in runs:
            line = f"{r.connections:>5} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
            print(f"{name:<22} {line} {r.failures:>6}")
    bento, bare = results.peak(BENTO).rps, results.peak(BARE).rps
    print("\nPeak per server:")
    print(f"{'server':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'×BentoML':>9} {'×bare':>7}")
    for name in results.sweeps:
        p = results.peak(name)
        ratios = f"{p.rps / bento:>9.2f} {p.rps / bare:>7.2f}"
        print(f"{name:<22} {p.rps:>9.0f} {p.p50_ms:>8.2f} {p.p99_ms:>8.2f} {ratios}")
    _report_rest(results)


def _report_rest(results: Results) -> None:
    for name, run in results.open_loop.items():
        print(
            f"\nOpen loop at {run.target_rps:.0f} req/s (70 % of the gateway's peak), {name}: "
            f"got {run.achieved_rps:.0f} req/s, p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
            f"{run.failures} failed"
        )
    _report_batches(results)
    gateway, batch = results.peak(GATEWAY).rps, results.batches[GATEWAY][0]
    targets = [
        ("gateway ≥ 2× BentoML", gateway / results.peak(BENTO).rps, 2.0, "×", True),
        ("gateway ≥ 50 % of bare", gateway / results.peak(BARE).rps, 0.5, "×", True),
        ("p99 ≤ 10 ms at 70 % of peak", results.open_loop[GATEWAY].p99_ms, 10.0, " ms", False),
        (
            "logging ≤ 15 % of throughput",
            1 - gateway / results.peak(GATEWAY_OFF).rps,
            0.15,
            "",
            False,
        ),
        ("256-row batch ≤ 5 ms server time (p50)", _pct(batch, 50), 5.0, " ms", False),
        ("256-row batch ≤ 5 ms server time (p99)", _pct(batch, 99), 5.0, " ms", False),
    ]
    print("\nTargets (issue 4), gateway with routing and logging on:")
    for label, value, bound, unit, at_least in targets:
        met = value >= bound if at_least else value <= bound
        print(f"  {label:<40} {value:>8.2f}{unit:<4} {'met' if met else 'NOT MET'}")


def _versions() -> str:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()
    packages = ("fastapi", "uvicorn", "bentoml", "pandas", "torch", "scikit-learn")
    found = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in packages)
    return f"Python {platform.python_version()}, {found}, wrk {wrk[1] if len(wrk) > 1 else '?'}"


def _cpu_model() -> str:
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(x.split(":", 1)[1].strip() for x in lines if x.startswith("model name"))
    return platform.processor() or platform.machine()


def _cpus(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def main() -> None:
    """Bring up what is missing, approve a model, load each server and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each wrk run")
    parser.add_argument("--connections", default="4,16,64", help="wrk connection counts")
    parser.add_argument("--batches", type=int, default=200, help="256-row requests to time")
    parser.add_argument("--port", type=int, default=18000, help="port each server takes in turn")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list of the servers")
    parser.add_argument("--client-cpus", default="1", help="CPU list of wrk and this script")
    parser.add_argument(
        "--generic",
        action="store_true",
        help="measure only the gateway: the pipeline as itself vs behind the pyfunc flavour",
    )
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    os.sched_setaffinity(0, _cpus(args.client_cpus))
    print(_versions())
    print(
        f"{_cpu_model()}, {os.cpu_count()} CPUs, "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    infra, started = ensure_infra()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as workdir:
            approved = approve_model(infra, Path(workdir))
            print(f"model {approved.name} v1 approved (BentoML {approved.tag})")
            names = [approved.name]
            try:
                if args.generic:
                    names.append(register_generic(infra, approved.name))
                    served = {GATEWAY: approved.name, GENERIC: names[-1]}
                    results = measure_generic(served, infra, Path(workdir), args)
                else:
                    results = measure(approved, infra, Path(workdir), args)
            finally:
                delete_models(infra, names)
        if args.generic:
            report_generic(results)
        else:
            report(results)
    finally:
        for name in started:
            stop(InfraConfig.from_env().run_dir, name)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
