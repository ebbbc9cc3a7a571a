"""Redis memory per prediction: what the gateway's feedback records cost (issue 13).

Run: ``.venv/bin/python benchmarks/record_memory.py [--records 100000]``.

A Redis of the script's own is started (Debian's ``redis-server`` as ``flywheel up``
starts it, on a free port, without persistence) so nothing else moves its memory, or
``--redis-url`` names one (its used memory must be quiet meanwhile). ``--records``
predictions of one model (single rows, request ids as the gateway makes them) are
recorded in batches of ``GATEWAY_PUBLISH_BATCH`` (500), each layout into an emptied
database:

* **before**: the layout of earlier gateways, the event's JSON without features (a
  pipeline of ``SET … EX``: the same keys and values its script wrote);
* **compact**: through the gateway's adapter (``RedisPredictionRecords.remember``);
* **compact, during an experiment**: the same with an experiment id and share;
* **feedback markers**: a claim then a confirm through the adapter, per record.

Each reports the growth of Redis's ``used_memory`` per record (what the records really
cost: key, value, the key table's and the expiry table's entries) and the mean
``MEMORY USAGE`` of 1,000 of its keys (the key and value alone). The sampled runs pass
the same predictions through the gateway's ``RecordPolicy`` first. Then the memory
held at 1,000 predictions/s over a record TTL: rate × TTL × bytes per record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from flywheel.infra.processes import port_bindable
from services.gateway.adapters import RedisPredictionRecords
from services.gateway.feedback import RecordPolicy
from shared.events import PredictionLogged

MODEL = "customer-segment"
#: TTLs the memory at 1,000 predictions/s is shown for: the default (twice the router's
#: 30 s outcome window), an hour-long and a day-long outcome window, and the 7 days
#: records were kept before.
TTLS_S = (60, 2 * 3600, 2 * 86_400, 7 * 86_400)
RATE = 1000
#: Records handed to the adapter at once: the gateway's drain step (GATEWAY_PUBLISH_BATCH).
BATCH = 500
GIB = 2**30


@dataclass(frozen=True)
class Measured:
    """What one layout's records cost."""

    name: str
    records: int
    bytes_per_record: float
    memory_usage: float


def predictions(count: int, experiment: bool) -> list[PredictionLogged]:
    """``count`` single-row predictions as the gateway logs them (ids fresh UUIDs)."""
    experiment_id = str(uuid.uuid4()) if experiment else None
    events = []
    for i in range(count):
        request_id = str(uuid.uuid4())
        events.append(
            PredictionLogged(
                producer="gateway",
                correlation_id=request_id,
                request_id=request_id,
                model_name=MODEL,
                version="3",
                variant="challenger" if experiment and i % 2 else "champion",
                entity_id=f"cust-{i:06d}",
                features={"age": 41.0, "tenure_months": 18.0, "plan": "premium"},
                predicted_class=("steady", "growing", "churn-risk")[i % 3],
                confidence=0.5 + (i % 500) / 1000,
                latency_ms=0.8 + (i % 100) / 100,
                experiment_id=experiment_id,
                challenger_share=0.5 if experiment else None,
            )
        )
    return events


async def used_memory(redis: Redis) -> int:
    """Redis's ``used_memory`` after a moment for lazy frees to finish."""
    await asyncio.sleep(0.2)
    return int((await redis.info("memory"))["used_memory"])


async def measure(
    redis: Redis,
    name: str,
    events: Sequence[PredictionLogged],
    store: Callable[[list[PredictionLogged]], Awaitable[None]],
    pattern: str = "flywheel:gateway:prediction:*",
) -> Measured:
    """The growth of ``used_memory`` per record ``store`` keeps of ``events`` (handed over
    in batches, as the gateway's recording stage does), and ``MEMORY USAGE`` per key."""
    await redis.flushdb()
    before = await used_memory(redis)
    for start in range(0, len(events), BATCH):
        await store(list(events[start : start + BATCH]))
    grown = await used_memory(redis) - before
    keys = [key async for key in redis.scan_iter(match=pattern, count=1000)][:1000]
    usages = [await redis.memory_usage(key) or 0 for key in keys]
    mean_usage = sum(usages) / len(usages) if usages else 0.0
    return Measured(name, len(events), grown / max(len(events), 1), mean_usage)


def legacy_writer(redis: Redis, ttl_s: int) -> Callable[[list[PredictionLogged]], Awaitable[None]]:
    """Records in the layout before issue 13: the event's JSON without its features."""

    async def write(events: list[PredictionLogged]) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for event in events:
                value = event.model_dump_json(exclude={"features"})
                pipe.set(f"flywheel:gateway:prediction:{event.request_id}", value, ex=ttl_s)
            await pipe.execute()

    return write


def marker_writer(
    records: RedisPredictionRecords,
) -> Callable[[list[PredictionLogged]], Awaitable[None]]:
    """A feedback marker per prediction, as a feedback request leaves it (claimed, confirmed)."""

    async def write(events: list[PredictionLogged]) -> None:
        for start in range(0, len(events), 50):  # 50 at once: the client's connection pool
            chunk = events[start : start + 50]
            await asyncio.gather(*(records.claim_feedback(e.request_id) for e in chunk))
            await asyncio.gather(*(records.confirm_feedback(e.request_id) for e in chunk))

    return write


async def run(redis: Redis, count: int) -> list[Measured]:
    """Every layout and sample, each into an emptied database."""
    ttl_s = max(TTLS_S)  # nothing expires while it is measured
    records = RedisPredictionRecords(redis, ttl_s)
    plain, split = predictions(count, False), predictions(count, True)
    results = [
        await measure(redis, "before (the event's JSON)", plain, legacy_writer(redis, ttl_s)),
        await measure(redis, "compact", plain, records.remember),
        await measure(redis, "compact, during an experiment", split, records.remember),
    ]
    for sample in (0.1, 0.01):
        policy = RecordPolicy(ttl_s, sample)
        kept = [e for e in plain if policy.keeps(e)]
        name = f"compact, GATEWAY_RECORD_SAMPLE={sample:g} outside experiments"
        measured = await measure(redis, name, kept, records.remember)
        # Per prediction made, not per record kept: what the sample saves.
        per_prediction = measured.bytes_per_record * len(kept) / count
        results.append(Measured(name, count, per_prediction, measured.memory_usage))
    markers = await measure(
        redis,
        "feedback marker, per labelled prediction",
        plain,
        marker_writer(records),
        "flywheel:gateway:feedback:*",
    )
    return [*results, markers]


def table(results: list[Measured]) -> str:
    """The markdown table of bytes per prediction and GiB held at 1,000 predictions/s."""
    ttl_heads = " | ".join(f"GiB at 1k/s, TTL {_duration(t)}" for t in TTLS_S)
    lines = [
        f"| records | bytes per prediction (used_memory) | MEMORY USAGE per key | {ttl_heads} |",
        "|---|---:|---:|" + "---:|" * len(TTLS_S),
    ]
    for r in results:
        gib = " | ".join(f"{RATE * ttl * r.bytes_per_record / GIB:.3g}" for ttl in TTLS_S)
        lines.append(f"| {r.name} | {r.bytes_per_record:.0f} | {r.memory_usage:.0f} | {gib} |")
    return "\n".join(lines)


def _duration(seconds: int) -> str:
    for unit, size in (("days", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _free_port() -> int:
    port = 16500 + os.getpid() % 1000
    while not port_bindable(port):
        port += 1
    return port


@contextmanager
def own_redis() -> Iterator[str]:
    """A Redis of the script's own (no persistence) on a free port, stopped at the end."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


async def _until_ready(client: Redis) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            await client.ping()
            return
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def measure_on(url: str, count: int) -> None:
    """Measure on the Redis at ``url`` and print the table with what it ran on."""
    redis = Redis.from_url(url)
    try:
        await _until_ready(redis)
        version = (await redis.info("server"))["redis_version"]
        results = await run(redis, count)
    finally:
        await redis.aclose()
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"{when}, Redis {version}, {_cpu()}, {count} predictions, batches of {BATCH}")
    print(table(results))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--redis-url", default=None, help="measure on this Redis instead")
    args = parser.parse_args()
    if args.redis_url is not None:
        asyncio.run(measure_on(args.redis_url, args.records))
        return
    with own_redis() as url:
        asyncio.run(measure_on(url, args.records))


if __name__ == "__main__":
    main()
