"""Many models: one gateway serving 1 vs N registered models of the same size (issue 11).

Run: ``.venv/bin/python benchmarks/many_models.py [--models 50] [--seconds 10]``.

One torch-MLP pipeline is trained on CPU and logged once, then registered as N
models ``bench-models-<id>-0`` … ``-<N-1>``, each with the packaged spec under its
own name (registered-model tags, as ``flywheel models create`` stores it) and one
version of that same run aliased ``champion`` (the registry's gates are not run
N times: it is one pipeline; ``benchmarks/serving.py`` runs them). The first
model is the deployment's default (``FLYWHEEL_MODEL_NAME``). One gateway process,
pinned with ``taskset`` as in ``serving.py``, is started twice:

* **1 model**: ``GATEWAY_MAX_LOADED_MODELS=1``, only the default model is held;
  single rows go to ``POST /v1/models/<first>/predict``, then to the unprefixed
  ``POST /v1/predict`` (the single-model route, for comparison);
* **N models**: ``GATEWAY_MAX_LOADED_MODELS=N``, loaded once ``GET /v1/models``
  reports every model serving; single rows go to ``/v1/models/<name>/predict``
  with the model drawn at random per request.

Both use the same wrk script (one path or N, formatted once, drawn per request)
and the same open-loop generator: a wrk sweep over the connection counts (peak
= best req/s), then a fixed rate of 70 % of the 1-model peak for both. The
gateway's resident memory (``VmRSS``) is read once every model serves and again
after the load; memory per loaded model = (RSS with N − RSS with 1) ÷ (N − 1).
Prediction logging is on (events to Kafka and Redis) as in production, unless
``--logging-off``.

The gateway holds every registered model with a spec up to its limit, so the
MLflow used must hold no other models with specs: the script stops and names
them (models of an interrupted run of this script are deleted). A fresh stack:
``FLYWHEEL_RUN_DIR=/tmp/bench-stack FLYWHEEL_KAFKA_PORT=19092
FLYWHEEL_KAFKA_CONTROLLER_PORT=19093 FLYWHEEL_REDIS_PORT=16379
FLYWHEEL_MLFLOW_PORT=15000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
from loadgen import OpenLoopResult, WrkResult, run_open_loop, run_wrk
from serving import (
    SPEC,
    _cpu_model,
    _cpus,
    _json_row,
    _versions,
    delete_models,
    ensure_infra,
    server,
    spec_of,
    train_and_log,
)

from flywheel.infra import Endpoints, InfraConfig
from flywheel.infra.processes import stop
from services.gateway.settings import Settings
from shared.datasets import generate_customers
from shared.events import PredictionLogged
from shared.mlflow_client import mlflow_client
from shared.mlflow_specs import MlflowSpecSource, register_spec
from shared.runtime import build_runtime

PREFIX = "bench-models-"


@dataclass(frozen=True)
class Run:
    """One gateway under load: its sweep, open-loop run and memory."""

    label: str
    sweep: list[WrkResult]
    open_loop: OpenLoopResult | None
    rss_ready_mib: float
    rss_after_mib: float
    loaded: float
    unloads: float
    events_pending: float = 0.0
    """Prediction events still queued after the load (both stages)."""
    events_dropped: float = 0.0
    """Prediction events dropped from a full queue during the load."""

    @property
    def peak(self) -> WrkResult:
        """The run with the most req/s."""
        return max(self.sweep, key=lambda r: r.rps)


def register_models(infra: Endpoints, workdir: Path, count: int) -> list[str]:
    """Train once; register ``count`` models, each with its spec and that run as champion."""
    names = [f"{PREFIX}{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
    trained = train_and_log(infra, workdir, names[0])
    client = mlflow_client(infra.mlflow_uri)
    mlflow.set_tracking_uri(infra.mlflow_uri)
    for name in names:
        if name != names[0]:
            register_spec(client, name, spec_of(name), "benchmark")
        version = mlflow.register_model(trained.model_uri, name).version
        client.set_registered_model_alias(name, "champion", str(version))
    return names


def clear_stale(infra: Endpoints) -> None:
    """Delete models an interrupted run left; stop if other models with specs are registered."""
    registered = MlflowSpecSource(infra.mlflow_uri).registered_specs()
    stale = [name for name in registered if name.startswith(PREFIX)]
    delete_models(infra, stale)
    others = sorted(set(registered) - set(stale))
    if others:
        raise SystemExit(
            f"MLflow at {infra.mlflow_uri} holds other models ({', '.join(others)}): the gateway "
            "would hold them too. Run on a fresh stack (see the docstring)."
        )


def serving_count(url: str, names: list[str]) -> Callable[[], int]:
    """How many of ``names`` ``GET /v1/models`` reports serving."""

    def count() -> int:
        by_model = httpx.get(f"{url}/v1/models", timeout=5).json()["by_model"]
        return sum(by_model.get(n, {}).get("state") == "serving" for n in names)

    return count


def rss_mib(pid: int) -> float:
    """The process's resident set (``VmRSS``), MiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    kib = next(line.split()[1] for line in status if line.startswith("VmRSS:"))
    return int(kib) / 1024


def metric_sum(url: str, name: str) -> float:
    """The sum of every sample of ``name`` on ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(name))
    return sum(float(value) for key, value in samples if key.partition("{")[0] == name)


@dataclass(frozen=True)
class Bench:
    """What every gateway run shares."""

    infra: Endpoints
    workdir: Path
    body: Path
    args: argparse.Namespace

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.args.port}"

    def env(self, default: str, max_loaded: int) -> dict[str, str]:
        """The gateway's environment, as ``flywheel up`` gives it, with the model limit."""
        return {
            "FLYWHEEL_MODEL_NAME": default,
            **self.infra.kafka_for("gateway").env(),
            "REDIS_URL": self.infra.redis_url,
            "MLFLOW_TRACKING_URI": self.infra.mlflow_uri,
            "GATEWAY_PORT": str(self.args.port),
            "GATEWAY_MAX_LOADED_MODELS": str(max_loaded),
            "GATEWAY_LOG_PREDICTIONS": "false" if self.args.logging_off else "true",
        }

    def paths(self, routes: list[str]) -> Path:
        """A wrk paths file: one route a line."""
        file = self.workdir / f"paths-{len(routes)}.txt"
        file.write_text("".join(f"{route}\n" for route in routes))
        return file

    def sweep(self, paths: Path | None, url: str) -> list[WrkResult]:
        """A short warm-up, then one wrk run per connection count."""
        args = self.args
        run_wrk(url, self.body, args.connections[0], 3, args.client_cpus, paths)
        return [
            run_wrk(url, self.body, c, args.seconds, args.client_cpus, paths)
            for c in args.connections
        ]


def load_gateway(bench: Bench, names: list[str], held: int, rate: float) -> list[Run]:
    """Start one gateway holding the first ``held`` of ``names``; load its routes."""
    served, url = names[:held], bench.url
    count = serving_count(url, served)
    argv = [sys.executable, "-m", "flywheel", "service", "gateway"]
    env = bench.env(names[0], held)
    label = f"{held} model{'s' if held > 1 else ''}"
    with server(argv, env, lambda: count() == held, bench.args.server_cpus, 600) as process:
        rss_ready = rss_mib(process.pid)
        routes = [f"/v1/models/{n}/predict" for n in served]
        sweep = bench.sweep(bench.paths(routes), url + routes[0])
        rate = rate or 0.7 * max(r.rps for r in sweep)
        body = bench.body.read_bytes()
        open_loop = run_open_loop(url, body, rate, bench.args.seconds * 2, paths=routes)
        runs = [
            Run(
                f"{label}, /v1/models/{{name}}/predict",
                sweep,
                open_loop,
                rss_ready,
                rss_mib(process.pid),
                metric_sum(url, "gateway_models_loaded"),
                metric_sum(url, "gateway_model_unloads_total"),
                metric_sum(url, "prediction_events_pending"),
                metric_sum(url, "prediction_events_dropped_total"),
            )
        ]
        if held == 1:
            default = bench.sweep(None, f"{url}/v1/predict")
            rss = rss_mib(process.pid)
            runs.append(Run(f"{label}, /v1/predict", default, None, rss, rss, 1, 0))
    return runs


def measure(infra: Endpoints, workdir: Path, args: argparse.Namespace) -> list[Run]:
    """Register the models, then load a 1-model gateway and an N-model one."""
    clear_stale(infra)
    names = register_models(infra, workdir, args.models)
    print(f"{len(names)} models registered: {names[0]} … {names[-1]}")
    features = list(SPEC.feature_names)
    row = _json_row(generate_customers(1, 11)[features].iloc[0].to_dict())
    body = workdir / "body.json"
    body.write_text(json.dumps({"features": row}))
    bench = Bench(infra, workdir, body, args)
    try:
        one = load_gateway(bench, names, 1, 0.0)
        rate = 0.7 * one[0].peak.rps
        return [*one, *load_gateway(bench, names, args.models, rate)]
    finally:
        delete_models(infra, names)


def publish_cost(infra: Endpoints, models: int, events: int = 50, repeats: int = 100) -> float:
    """CPU ms of one ``publish_batch`` of ``events`` prediction events drawn over ``models``.

    What the gateway's drain pays per step: at ~2,500 req/s and its 20 ms linger a
    step carries ~50 events. Measured in this process (pinned like wrk) on the
    gateway's own Kafka principal and the topic's real partitions.
    """
    draw = random.Random(0)
    os.environ.update(infra.kafka_for("gateway").env())
    row = {f.name: 1.0 if f.type == "numeric" else "a" for f in SPEC.features}
    batch = [
        PredictionLogged(
            producer="gateway",
            request_id=uuid.uuid4().hex,
            model_name=f"{PREFIX}probe-{draw.randrange(models)}",
            version="1",
            variant="champion",
            features=row,
            predicted_class=SPEC.classes[0],
            confidence=0.5,
            latency_ms=1.0,
        )
        for _ in range(events)
    ]

    async def run() -> float:
        runtime = build_runtime("gateway", Settings())
        await runtime.broker.start()
        try:
            await runtime.publisher.publish_batch(batch)  # connections, metadata
            started = time.process_time()
            for _ in range(repeats):
                await runtime.publisher.publish_batch(batch)
            return (time.process_time() - started) / repeats * 1000
        finally:
            await runtime.broker.stop()

    return asyncio.run(run())


def report(runs: list[Run], models: int) -> None:
    """Print every run, the comparison and the targets."""
    print("\nwrk runs (1 thread, closed loop), single rows:")
    print(f"{'gateway':<40} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
    for run in runs:
        for r in run.sweep:
            line = f"{r.connections:>5} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
            print(f"{run.label:<40} {line} {r.failures:>6}")
    print("\nPer gateway:")
    for run in runs:
        p = run.peak
        print(
            f"  {run.label}: peak {p.rps:.0f} req/s at {p.connections} conns "
            f"(p50 {p.p50_ms:.2f} ms, p99 {p.p99_ms:.2f} ms); models held {run.loaded:.0f}, "
            f"unloads {run.unloads:.0f}; RSS {run.rss_ready_mib:.1f} MiB ready, "
            f"{run.rss_after_mib:.1f} MiB after the load"
        )
        if (o := run.open_loop) is not None:
            print(
                f"    open loop at {o.target_rps:.0f} req/s: got {o.achieved_rps:.0f}, "
                f"p50 {o.p50_ms:.2f} ms, p99 {o.p99_ms:.2f} ms, {o.failures} failed"
            )
            print(
                f"    prediction events after the load: {run.events_pending:.0f} queued, "
                f"{run.events_dropped:.0f} dropped (queue full)"
            )
    _targets(runs[0], runs[-1], models)


def _targets(one: Run, many: Run, models: int) -> None:
    ratio = many.peak.rps / one.peak.rps
    same = {r.connections: r for r in one.sweep}
    p99s = [(r.connections, r.p99_ms - same[r.connections].p99_ms) for r in many.sweep]
    per_model = (many.rss_after_mib - one.rss_after_mib) / (models - 1)
    per_model_ready = (many.rss_ready_mib - one.rss_ready_mib) / (models - 1)
    print(f"\nTargets (issue 11), {models} models against 1:")
    print(f"  throughput ratio (peaks) {ratio:.3f} (≥ 0.9: {'met' if ratio >= 0.9 else 'NOT MET'})")
    for conns, delta in p99s:
        verdict = "met" if delta <= 1.0 else "NOT MET"
        print(f"  wrk p99 at {conns} conns: {delta:+.2f} ms (within 1 ms: {verdict})")
    if one.open_loop and many.open_loop:
        delta = many.open_loop.p99_ms - one.open_loop.p99_ms
        verdict = "met" if delta <= 1.0 else "NOT MET"
        print(f"  open-loop p99 at 70 % of the 1-model peak: {delta:+.2f} ms ({verdict})")
    print(
        f"  memory per loaded model: {per_model:.2f} MiB after the load "
        f"({per_model_ready:.2f} MiB once loaded)"
    )


def main() -> None:
    """Bring up what is missing, register the models, load both gateways and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50, help="models in the many-models run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each wrk run")
    parser.add_argument("--connections", default="4,16,64", help="wrk connection counts")
    parser.add_argument("--port", type=int, default=18000, help="the gateway's port")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list of the gateway")
    parser.add_argument("--client-cpus", default="1", help="CPU list of wrk and this script")
    parser.add_argument(
        "--logging-off", action="store_true", help="GATEWAY_LOG_PREDICTIONS=false in both runs"
    )
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.models < 2:
        raise SystemExit("--models must be at least 2")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    os.sched_setaffinity(0, _cpus(args.client_cpus))
    print(_versions())
    print(f"{_cpu_model()}, {os.cpu_count()} CPUs, load average before: {_load()}")
    print(f"prediction logging {'off' if args.logging_off else 'on'}, {args.models} models")
    infra, started = ensure_infra()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-models-") as workdir:
            runs = measure(infra, Path(workdir), args)
        costs = {n: publish_cost(infra, n) for n in (1, args.models)}
        report(runs, args.models)
        print(
            f"  publishing 50 prediction events (one drain step, CPU of this process): "
            f"{costs[1]:.1f} ms for 1 model, {costs[args.models]:.1f} ms for {args.models}"
        )
    finally:
        for name in started:
            stop(InfraConfig.from_env().run_dir, name)
        print(f"load average after: {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
