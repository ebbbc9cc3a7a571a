"""Gateway CPU per prediction: this checkout against another commit's, side by side.

Run: ``git worktree add /tmp/baseline <commit>`` then
``.venv/bin/python benchmarks/gateway_cpu.py --baseline /tmp/baseline``.

Throughput on two shared cores moves with whatever else runs (the serving
benchmark's peers moved 9-12 % between two runs an hour apart), so this one
counts what a prediction costs instead: the gateway process's own CPU seconds
(user + system, from ``/proc``) per answered request, under the same fixed-rate
open-loop load (``benchmarks/loadgen.py``) of single-row requests with routing
and prediction logging on. The same approved model is served by the baseline
checkout's gateway and by this one's, one at a time, pinned to ``--server-cpus``,
alternating for ``--rounds`` rounds; the median per checkout and route is
reported with the ratio. The inverse of the CPU per request is the most one core
could answer. Kafka, Redis and MLflow are started unless they answer
(``FLYWHEEL_*`` variables of ``flywheel infra``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from loadgen import run_open_loop
from serving import (
    ROOT,
    SPEC,
    Approved,
    _json_row,
    approve_model,
    ensure_infra,
    gateway_ready,
    server,
)

from flywheel.infra import Endpoints
from flywheel.infra.processes import stop
from shared.datasets import generate_customers

#: The default model's route (in every commit) and the per-model one (since many models).
ROUTES = {"/v1/predict": "default route", "/v1/models/{name}/predict": "per-model route"}


@dataclass(frozen=True)
class Sample:
    """One load run against one gateway: the CPU it spent and what it answered."""

    checkout: str
    route: str
    cpu_s: float
    answered: int

    @property
    def cpu_us_per_request(self) -> float:
        """Gateway CPU per answered request, in microseconds."""
        return 1e6 * self.cpu_s / self.answered


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (``/proc/<pid>/stat``, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_one(pid: int, url: str, body: bytes, args: argparse.Namespace) -> tuple[float, int]:
    """Fixed-rate load on ``url``; the gateway's CPU seconds and the requests answered."""
    run_open_loop(url, body, args.rate, 2.0, warmup_s=1.0)  # warm the route's code paths
    before = process_cpu_seconds(pid)
    result = run_open_loop(url, body, args.rate, args.seconds, warmup_s=0.0)
    spent = process_cpu_seconds(pid) - before
    if result.failures:
        raise RuntimeError(f"{url}: {result.failures} requests failed")
    return spent, round(result.achieved_rps * args.seconds)


def measure(
    checkouts: dict[str, Path], approved: Approved, infra: Endpoints, args: argparse.Namespace
) -> list[Sample]:
    """Every checkout's gateway in turn, ``args.rounds`` times, on each route it has."""
    row = _json_row(generate_customers(1, 11)[list(SPEC.feature_names)].iloc[0].to_dict())
    body = json.dumps({"features": row}).encode()
    base = f"http://127.0.0.1:{args.port}"
    env = {
        "FLYWHEEL_MODEL_NAME": approved.name,
        **infra.kafka_for("gateway").env(),
        "REDIS_URL": infra.redis_url,
        "MLFLOW_TRACKING_URI": infra.mlflow_uri,
        "GATEWAY_PORT": str(args.port),
    }
    samples = []
    for _ in range(args.rounds):
        for checkout, path in checkouts.items():
            argv = [sys.executable, "-m", "flywheel", "service", "gateway"]
            gateway_env = {**env, "PYTHONPATH": str(path)}
            with server(argv, gateway_env, gateway_ready(base), args.server_cpus, cwd=path) as p:
                for route in ROUTES:
                    url = base + route.format(name=approved.name)
                    if not _answers_route(url, body):
                        continue
                    spent, answered = load_one(p.pid, url, body, args)
                    samples.append(Sample(checkout, route, spent, answered))
    return samples


def _answers_route(url: str, body: bytes) -> bool:
    """Whether this checkout's gateway has ``url`` (older commits lack per-model routes)."""
    answer = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=10)
    if answer.status_code != 200:
        print(f"{url}: {answer.status_code} {answer.text[:200]}")
    return answer.status_code == 200


def report(samples: list[Sample], checkouts: dict[str, Path]) -> None:
    """Median CPU per request by checkout and route, and each route's ratio to the baseline."""
    print(f"\n{'checkout':<10} {'route':<16} {'runs':>4} {'CPU µs/req':>11} {'1-core req/s':>13}")
    medians: dict[tuple[str, str], float] = {}
    for checkout in checkouts:
        for route, label in ROUTES.items():
            runs = [
                s.cpu_us_per_request for s in samples if (s.checkout, s.route) == (checkout, route)
            ]
            if not runs:
                continue
            medians[checkout, route] = statistics.median(runs)
            cost = medians[checkout, route]
            print(f"{checkout:<10} {label:<16} {len(runs):>4} {cost:>11.0f} {1e6 / cost:>13.0f}")
    baseline = medians.get(("baseline", "/v1/predict"))
    if baseline is None:
        return
    print("\nCPU per request against the baseline's default route (lower is better):")
    for (checkout, route), cost in medians.items():
        if checkout != "baseline":
            print(f"  {checkout} {ROUTES[route]:<16} {cost / baseline:.3f}×")


def main() -> None:
    """Parse arguments, start what is missing, measure both checkouts, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another commit's checkout")
    parser.add_argument("--this", type=Path, default=ROOT, help="the checkout measured against it")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the checkouts")
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list of the gateways")
    args = parser.parse_args()
    checkouts = {"baseline": args.baseline.resolve(), "this": args.this.resolve()}
    infra, started = ensure_infra()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()}")
    try:
        with tempfile.TemporaryDirectory() as workdir:
            approved = approve_model(infra, Path(workdir))
            report(measure(checkouts, approved, infra, args), checkouts)
    finally:
        for name in reversed(started):
            stop(infra.run_dir, name)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
