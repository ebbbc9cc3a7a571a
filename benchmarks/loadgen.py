"""Load generators for ``benchmarks/serving.py``: wrk (closed loop) and a fixed-rate open loop.

wrk keeps N connections busy and reports the peak throughput; it cannot hold a
rate. Debian ships neither wrk2, vegeta nor oha, so the rate-fixed run uses the
small open-loop generator below: requests are sent on a fixed schedule whatever
the server does, and each latency is measured from the request's *scheduled*
time, so a stalled server cannot hide its queue (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uvloop

WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput and latency percentiles."""

    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    failures: int


def run_wrk(
    url: str,
    body_file: Path,
    connections: int,
    seconds: float,
    cpus: str,
    paths_file: Path | None = None,
) -> WrkResult:
    """POST ``body_file`` to ``url`` with one wrk thread pinned to ``cpus``.

    With ``paths_file`` (one URL path a line) each request goes to a path drawn at random
    from it, on ``url``'s host.
    """
    argv = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s"]
    argv += ["--timeout", "10s", "-s", str(WRK_SCRIPT), url]
    env = {**os.environ, "WRK_BODY_FILE": str(body_file)}
    if paths_file is not None:
        env["WRK_PATHS_FILE"] = str(paths_file)
    output = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in output.splitlines() if x.startswith('{"requests"'))
    stats = json.loads(line)
    return WrkResult(
        connections=connections,
        rps=stats["requests"] / (stats["duration_us"] / 1e6),
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        failures=stats["non_2xx"] + stats["socket_errors"],
    )


@dataclass(frozen=True)
class OpenLoopResult:
    """A fixed-rate run: the rate asked for and got, and latency from the scheduled send."""

    target_rps: float
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    failures: int


def run_open_loop(
    url: str,
    body: bytes,
    rate: float,
    seconds: float,
    warmup_s: float = 2.0,
    paths: Sequence[str] = (),
) -> OpenLoopResult:
    """Send ``rate`` requests per second for ``warmup_s + seconds``; measure after the warm-up.

    With ``paths`` each request goes to one of them (on ``url``'s host), drawn at random.
    """
    host, port, path = _split(url)
    requests = [_request(host, port, p, body) for p in paths or [path]]
    # The caller's heap (torch, MLflow, a trained model) makes a full collection take
    # ~0.2 s; one during the run would be charged to the server as latency.
    gc.collect()
    gc.disable()
    try:
        samples, failures, span = uvloop.run(
            _open_loop(host, port, requests, rate, seconds, warmup_s)
        )
    finally:
        gc.enable()
    return OpenLoopResult(
        target_rps=rate,
        achieved_rps=len(samples) / span,
        p50_ms=float(np.percentile(samples, 50)) * 1000,
        p99_ms=float(np.percentile(samples, 99)) * 1000,
        failures=failures,
    )


def _request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _split(url: str) -> tuple[str, int, str]:
    rest = url.removeprefix("http://")
    address, _, path = rest.partition("/")
    host, _, port = address.partition(":")
    return host, int(port), "/" + path


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_loop(
    host: str, port: int, requests: list[bytes], rate: float, seconds: float, warmup_s: float
) -> tuple[list[float], int, float]:
    """Return latencies (s) of requests scheduled after the warm-up, failures, and the span."""
    draw = random.Random(0)
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
    idle: list[Connection] = []
    latencies: list[float] = []
    last_done = 0.0
    failures = 0
    start = time.perf_counter() + 0.05
    measured_from = start + warmup_s

    async def fire(scheduled: float, request: bytes) -> None:
        nonlocal failures, last_done
        # A pooled connection the server closed while idle (keep-alive timeout) is retried
        # once on a fresh one; the latency still counts from the scheduled time.
        for fresh in (not idle, True):
            try:
                reader, writer = await asyncio.open_connection(host, port) if fresh else idle.pop()
                writer.write(request)
                status = await _read_response(reader)
                break
            except (OSError, asyncio.IncompleteReadError, ValueError):
                if fresh:
                    failures += 1
                    return
                writer.close()
        if scheduled >= measured_from:
            last_done = time.perf_counter()
            latencies.append(last_done - scheduled)
            failures += status != 200
        idle.append((reader, writer))

    tasks = []
    for i in range(int(rate * (warmup_s + seconds))):
        scheduled = start + i / rate
        if (delay := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(scheduled, draw.choice(requests))))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return latencies, failures, max(last_done - measured_from, seconds)


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    await reader.readexactly(length)
    return int(lines[0].split(" ", 2)[1])
