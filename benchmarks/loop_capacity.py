"""Loop capacity: what one router and one monitor process apply per second, from Kafka to
saved state, beside the raw aiokafka consume rate of the same topic (issue 13).

Run on the bench stack (Kafka, Redis and MLflow are started unless they answer)::

    FLYWHEEL_RUN_DIR=/tmp/bench-stack FLYWHEEL_KAFKA_PORT=19092 \\
    FLYWHEEL_KAFKA_CONTROLLER_PORT=19093 FLYWHEEL_REDIS_PORT=16379 FLYWHEEL_MLFLOW_PORT=15000 \\
    .venv/bin/python benchmarks/loop_capacity.py [--baseline /tmp/router-base]

One torch-MLP run is trained and registered as ``--models`` champions (the monitor
windows their features against its reference sample); each model gets a running
experiment in Redis (the router counts its routed predictions and labels and looks
at it). ``--events`` prediction-logged events, spread over the models, and as many
feedback-received events are published once to the deployment's topics (12
partitions, as ``flywheel up`` plans them). Then, for each service and replica count,
the service's consumer group is set to the first published offset of one topic and
to the end of the other, its Redis state of the benchmark's models is cleared, and
``flywheel service <name>`` runs pinned with ``taskset`` (replica k on the k-th CPU of
``--cpus``). Its rate is the events its handlers finished (``flywheel_events_consumed_total``,
after the state was written), from the first to the last, polled every 20 ms: start-up
is not counted. The raw rate is an aiokafka consumer, pinned the same way, reading the
same records with ``getmany`` and doing nothing else. ``--baseline`` runs the router of
another checkout (``git worktree add /tmp/router-base <commit>``) on the same records.

The machine's other load moves every figure: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from gateway_cpu import process_cpu_seconds
from many_models import register_models
from redis.asyncio import Redis
from serving import ROOT, SPEC, _json_row, delete_models, ensure_infra, server

from flywheel.infra import Endpoints
from flywheel.infra.aio import run_sync
from flywheel.infra.processes import stop
from services.router.adapters import RedisExperimentStore
from services.router.core import Experiment
from services.router.settings import Settings as RouterSettings
from shared.datasets import generate_customers
from shared.events import (
    ExperimentUpdated,
    FeedbackReceived,
    PredictionLogged,
    Topic,
    consumer_group,
    topic_name,
)
from shared.kafka_security import KafkaConnection
from shared.settings import BaseServiceSettings
from shared.topics import ensure_topics, plan_topics

TOPICS = (Topic.PREDICTION_LOGGED, Topic.FEEDBACK_RECEIVED)
SHARE = 0.1


@dataclass(frozen=True)
class Run:
    """One measured consumption: who read which topic, how many events, in how long."""

    who: str
    topic: Topic
    replicas: int
    events: int
    seconds: float
    #: CPU seconds of the busiest replica meanwhile (it bounds the group's rate).
    cpu_s: float
    #: CPU seconds of the Redis server meanwhile (0 for the raw consumer).
    redis_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        """Events per second from the first to the last, on this shared machine."""
        return self.events / self.seconds

    @property
    def capacity(self) -> float:
        """Events per CPU second of the busiest replica: the rate with a core of its own."""
        return self.events / self.cpu_s


def _events(names: list[str], count: int, seed: int = 0) -> tuple[list[bytes], list[bytes]]:
    """``count`` routed predictions over ``names`` with real features, and their labels."""
    draw = random.Random(seed)
    frame = generate_customers(2000, seed)[list(SPEC.feature_names)]
    rows = [_json_row(row) for row in frame.to_dict(orient="records")]
    predictions, labels = [], []
    for i in range(count):
        model = names[i % len(names)]
        routed = {"experiment_id": f"bench-{model}", "challenger_share": SHARE}
        common = {"model_name": model, "version": "1", "variant": "champion", **routed}
        prediction = PredictionLogged(
            producer="gateway",
            request_id=uuid.uuid4().hex,
            features=rows[i % len(rows)],
            predicted_class=SPEC.classes[0],
            confidence=0.7,
            latency_ms=draw.uniform(1.0, 5.0),
            **common,
        )
        correct = draw.random() < 0.8
        feedback = FeedbackReceived(
            producer="gateway",
            request_id=prediction.request_id,
            predicted_class=SPEC.classes[0],
            true_label=SPEC.classes[0] if correct else SPEC.classes[1],
            correct=correct,
            **common,
        )
        predictions.append(prediction.model_dump_json().encode())
        labels.append(feedback.model_dump_json().encode())
    return predictions, labels


async def _publish(
    kafka: KafkaConnection, topic: Topic, bodies: list[bytes], names: list[str]
) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        sent = []
        for i, body in enumerate(bodies):
            key = names[i % len(names)].encode()
            sent.append(await producer.send(topic_name(topic), body, key=key))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _offsets(kafka: KafkaConnection, topic: Topic) -> dict[TopicPartition, int]:
    """The end offset of each of ``topic``'s partitions."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic_name(topic)])
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic_name(topic), p["partition"]) for p in described["partitions"]
    ]
    consumer = AIOKafkaConsumer(**kafka.client_options())
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(partitions))
    finally:
        await _stop(consumer)


async def _stop(consumer: AIOKafkaConsumer) -> None:
    # aiokafka 0.14's consumer without a subscription re-raises its own task's cancellation.
    with contextlib.suppress(asyncio.CancelledError):
        await consumer.stop()


async def _commit(kafka: KafkaConnection, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Set ``group``'s committed offsets (no member may be running)."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await _stop(consumer)


async def _clear_state(redis_url: str, service: str, names: list[str]) -> None:
    """Drop ``service``'s state of the benchmark's models (the router keeps the experiments)."""
    redis = Redis.from_url(redis_url)
    try:
        patterns = [f"flywheel:{service}:{{{name}}}:*" for name in names]
        patterns.append(f"flywheel:{service}:done:*")  # a baseline's markers per event
        for pattern in patterns:
            keys = [k async for k in redis.scan_iter(match=pattern, count=1000)]
            keep = b":experiment"
            doomed = [k for k in keys if keep not in k]
            for start in range(0, len(doomed), 1000):
                await redis.delete(*doomed[start : start + 1000])
    finally:
        await redis.aclose()


async def _open_experiments(redis_url: str, names: list[str]) -> None:
    plan = RouterSettings().to_config()
    redis = Redis.from_url(redis_url)
    store = RedisExperimentStore(redis)
    try:
        for name in names:
            experiment = Experiment(
                experiment_id=f"bench-{name}",
                model_name=name,
                status="running",
                champion_version="1",
                challenger_version="2",
                challenger_share=SHARE,
                opened_at=datetime.now(UTC),
                plan=plan,
            )
            update = ExperimentUpdated(
                producer="benchmark",
                experiment_id=experiment.experiment_id,
                model_name=name,
                status="running",
                champion_version="1",
                challenger_version="2",
                challenger_share=SHARE,
            )
            await store.save(experiment, update)
    finally:
        await redis.aclose()


def _consumed(urls: list[str], topic: Topic) -> int:
    """Events the replicas' handlers finished on ``topic`` (handled or found done before)."""
    wanted = f'topic="{topic_name(topic)}"'
    total = 0.0
    for url in urls:
        for line in httpx.get(url, timeout=5).text.splitlines():
            if not line.startswith("flywheel_events_consumed_total{") or wanted not in line:
                continue
            if 'outcome="handled"' in line or 'outcome="duplicate"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _watch(
    urls: list[str], pids: list[int], redis_pid: int, topic: Topic, events: int, timeout_s: float
) -> tuple[int, float, float, float]:
    """From the first poll that saw events finished to the one that saw ``events``: how
    many finished, the seconds, the busiest replica's CPU seconds and Redis's."""
    deadline = time.monotonic() + timeout_s
    first_count, first_at, first_cpu = 0, 0.0, [0.0]
    while time.monotonic() < deadline:
        count = _consumed(urls, topic)
        now, cpu = time.monotonic(), [process_cpu_seconds(p) for p in [redis_pid, *pids]]
        if count and not first_at:
            first_count, first_at, first_cpu = count, now, cpu
        if count >= events and now > first_at:
            spent = [after - before for after, before in zip(cpu, first_cpu, strict=True)]
            return count - first_count, now - first_at, max(spent[1:]), spent[0]
        time.sleep(0.1)  # each poll renders every replica's /metrics: not too often
    raise RuntimeError(
        f"{topic_name(topic)}: {_consumed(urls, topic)} of {events} in {timeout_s} s"
    )


@contextlib.contextmanager
def _replicas(
    service: str, checkout: Path, cpus: list[str], infra: Endpoints, port: int
) -> Iterator[tuple[list[str], list[int]]]:
    env = {
        **infra.kafka_for(service).env(),
        "REDIS_URL": infra.redis_url,
        "MLFLOW_TRACKING_URI": infra.mlflow_uri,
        "PYTHONPATH": str(checkout),
    }
    urls = [f"http://127.0.0.1:{port + k}/metrics" for k in range(len(cpus))]
    argv = [sys.executable, "-m", "flywheel", "service", service]
    with contextlib.ExitStack() as stack:
        pids = []
        for k, cpu in enumerate(cpus):
            own = {**env, f"{service.upper()}_PORT": str(port + k)}
            process = stack.enter_context(server(argv, own, _answers(urls[k]), cpu, cwd=checkout))
            pids.append(process.pid)
        yield urls, pids


def _answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        return httpx.get(url, timeout=2).status_code == 200

    return ready


def measure_service(
    service: str, checkout: Path, cpus: list[str], topic: Topic, ctx: Context, events: int = 0
) -> Run:
    """One service's replicas reading ``topic``'s published events from the start (the
    first ``events`` of them when given); every other topic from its end."""
    offsets = {**ctx.ends_all, **ctx.starts[topic]}
    run_sync(_commit(ctx.operator, consumer_group(service), offsets))
    run_sync(_clear_state(ctx.infra.redis_url, service, ctx.names))
    with (
        _replicas(service, checkout, cpus, ctx.infra, ctx.port) as (urls, pids),
        _profiled(pids[0], ctx.profile_dir, f"{service}-{checkout.name}-{topic.value}"),
    ):
        counted, seconds, cpu_s, redis_s = _watch(
            urls, pids, ctx.redis_pid, topic, events or ctx.events, ctx.timeout_s
        )
    return Run(service, topic, len(cpus), counted, seconds, cpu_s, redis_s)


@contextlib.contextmanager
def _profiled(pid: int, folder: Path | None, name: str) -> Iterator[None]:
    """py-spy's samples of ``pid`` while inside (collapsed stacks), when ``folder`` is given."""
    if folder is None:
        yield
        return
    out = folder / f"{name}.txt"
    argv = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        str(pid),
        "--rate",
        "200",
        "--format",
        "raw",
        "-o",
        str(out),
    ]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
        print(f"py-spy samples of {name}: {out}")


def raw_consume(topic_name_: str, starts: str, events: int) -> None:
    """The child process of ``measure_raw``: read ``events`` records, print the seconds."""

    async def read() -> tuple[float, float]:
        kafka = BaseServiceSettings().kafka_connection()
        consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
        await consumer.start()
        try:
            offsets = {
                TopicPartition(topic_name_, int(p)): int(o)
                for p, o in (s.split("=") for s in starts.split(","))
            }
            consumer.assign(list(offsets))
            for tp, offset in offsets.items():
                consumer.seek(tp, offset)
            count, first_at, first_cpu, first_count = 0, 0.0, 0.0, 0
            while count < events:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                count += sum(len(records) for records in batch.values())
                if count and not first_at:
                    first_at, first_cpu, first_count = time.monotonic(), time.process_time(), count
            share = events / (events - first_count)
            return (time.monotonic() - first_at) * share, (time.process_time() - first_cpu) * share
        finally:
            await _stop(consumer)

    print(*asyncio.run(read()))


def measure_raw(cpus: list[str], topic: Topic, ctx: Context) -> Run:
    """aiokafka alone reading the same records, one process per CPU over its partitions."""
    starts = sorted(ctx.starts[topic].items(), key=lambda item: item[0].partition)
    shares = [starts[k :: len(cpus)] for k in range(len(cpus))]
    env = {**os.environ, **ctx.operator.env()}
    processes = []
    for cpu, share in zip(cpus, shares, strict=True):
        mine = sum(ctx.ends[topic][tp] - offset for tp, offset in share)
        arg = ",".join(f"{tp.partition}={offset}" for tp, offset in share)
        argv = [
            "taskset",
            "-c",
            cpu,
            sys.executable,
            __file__,
            "--raw",
            topic_name(topic),
            arg,
            str(mine),
        ]
        processes.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, cwd=ROOT))
    read = [p.communicate(timeout=ctx.timeout_s)[0].split() for p in processes]
    seconds, cpu_s = (max(float(r[i]) for r in read) for i in (0, 1))
    return Run("raw aiokafka", topic, len(cpus), ctx.events, seconds, cpu_s)


@dataclass
class Context:
    """What every measurement shares: endpoints, models, the published offsets."""

    infra: Endpoints
    operator: KafkaConnection
    names: list[str]
    events: int
    starts: dict[Topic, dict[TopicPartition, int]]
    ends: dict[Topic, dict[TopicPartition, int]]
    #: The end of every topic, after publishing: where a measured service starts the others.
    ends_all: dict[TopicPartition, int]
    port: int
    timeout_s: float
    redis_pid: int
    profile_dir: Path | None = None


def prepare(infra: Endpoints, workdir: Path, args: argparse.Namespace) -> Context:
    """Topics, models, experiments, and the events published once."""
    policy = BaseServiceSettings().topic_policy()
    run_sync(ensure_topics(infra.kafka, plan_topics(policy), policy.on_fewer_partitions))
    names = register_models(infra, workdir, args.models)
    run_sync(_open_experiments(infra.redis_url, names))
    predictions, labels = _events(names, args.events)
    starts, ends = {}, {}
    for topic, bodies in zip(TOPICS, (predictions, labels), strict=True):
        starts[topic] = run_sync(_offsets(infra.kafka, topic))
        started = time.monotonic()
        run_sync(_publish(infra.kafka_for("gateway"), topic, bodies, names))
        print(
            f"published {len(bodies)} to {topic_name(topic)} in {time.monotonic() - started:.1f} s"
        )
        ends[topic] = run_sync(_offsets(infra.kafka, topic))
    ends_all = {
        tp: o for topic in Topic for tp, o in run_sync(_offsets(infra.kafka, topic)).items()
    }
    return Context(
        infra,
        infra.kafka,
        names,
        args.events,
        starts,
        ends,
        ends_all,
        args.port,
        args.timeout,
        int((infra.run_dir / "pids" / "redis.pid").read_text().split()[0]),
        args.py_spy,
    )


HEADER = (
    f"{'who':<18} {'topic':<18} {'repl':>4} {'events':>7} {'wall s':>7} {'events/s':>9} "
    f"{'CPU s':>6} {'per CPU-s':>10} {'Redis µs/ev':>11}"
)


def row(run: Run) -> str:
    """One run's line of the table."""
    redis_us = 1e6 * run.redis_cpu_s / run.events
    return (
        f"{run.who:<18} {run.topic.value:<18} {run.replicas:>4} {run.events:>7} "
        f"{run.seconds:>7.2f} {run.rate:>9.0f} {run.cpu_s:>6.2f} {run.capacity:>10.0f} "
        f"{redis_us:>11.1f}"
    )


def report(runs: list[Run]) -> None:
    """Every run's rates, and the ratios the issue sets targets for."""
    print("\n" + HEADER)
    for run in runs:
        print(row(run))
    print(
        "\nratios, per CPU second (wall clock in brackets); targets: ≥ 20,000 predictions/s,"
        " ≥ 0.5 of raw, 2 replicas ≥ 1.7× one:"
    )
    by_key = {(r.who, r.topic, r.replicas): r for r in runs}
    for (who, topic, replicas), run in by_key.items():
        raw = by_key.get(("raw aiokafka", topic, replicas))
        if raw and who != "raw aiokafka":
            print(
                f"  {who} / raw, {topic.value}, {replicas} replica(s): "
                f"{run.capacity / raw.capacity:.2f} ({run.rate / raw.rate:.2f})"
            )
        one = by_key.get((who, topic, 1))
        if replicas > 1 and one:
            print(
                f"  {who} {replicas} replicas / 1, {topic.value}: "
                f"{run.capacity / one.capacity:.2f}× ({run.rate / one.rate:.2f}×)"
            )


def _kept(runs: list[Run], run: Run) -> None:
    runs.append(run)
    print(row(run), flush=True)


def main() -> None:
    """Parse arguments, prepare once, measure each service, print the table."""
    if len(sys.argv) > 1 and sys.argv[1] == "--raw":
        raw_consume(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="predictions (and labels)")
    parser.add_argument("--models", type=int, default=24, help="models the events spread over")
    parser.add_argument("--services", default="router,monitor", help="services to measure")
    parser.add_argument("--cpus", default="0,1", help="CPUs: replica k runs on the k-th")
    parser.add_argument("--replicas", default="1,2", help="replica counts to measure")
    parser.add_argument("--feedback", action="store_true", help="also measure feedback-received")
    parser.add_argument("--baseline", type=Path, help="another checkout's router, measured too")
    parser.add_argument(
        "--baseline-events", type=int, default=5000, help="events timed for the baseline"
    )
    parser.add_argument("--port", type=int, default=18100, help="the first replica's HTTP port")
    parser.add_argument("--py-spy", type=Path, help="folder for py-spy samples of replica 0")
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait per run, s")
    args = parser.parse_args()
    cpus = args.cpus.split(",")
    infra, started = ensure_infra()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{when}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as workdir:
        ctx = prepare(infra, Path(workdir), args)
        print(HEADER, flush=True)
        try:
            topics = TOPICS if args.feedback else TOPICS[:1]
            for count in (int(n) for n in args.replicas.split(",")):
                for topic in topics:
                    _kept(runs, measure_raw(cpus[:count], topic, ctx))
                    for service in args.services.split(","):
                        _kept(runs, measure_service(service, ROOT, cpus[:count], topic, ctx))
                    if args.baseline is not None and count == 1:
                        # One event at a time: only the first ``--baseline-events`` are timed.
                        checkout = args.baseline.resolve()
                        base = measure_service(
                            "router", checkout, cpus[:1], topic, ctx, args.baseline_events
                        )
                        _kept(runs, replace(base, who="router (baseline)"))
        finally:
            delete_models(infra, ctx.names)
            for name in reversed(started):
                stop(infra.run_dir, name)
    report(runs)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
