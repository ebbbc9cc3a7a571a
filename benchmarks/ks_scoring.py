"""KS drift scoring speed: Flywheel's scoring vs a loop over scipy's ks_2samp, and end to end.

Run: ``.venv/bin/python benchmarks/ks_scoring.py``. All sides score the same
windows (20 numeric features, 10,000-row reference, W = 1,000) and must agree
on every statistic. Printed side by side, events/s on one core:

- scipy: a loop over ``scipy.stats.ks_2samp(..., method="asymp")`` per feature;
- per-feature: ``ks_statistic`` one feature at a time (the earlier scoring);
- vectorised: ``ks_statistics`` on the whole window at once (what the monitor runs);
- end to end: Kafka-record JSON bytes → ``PredictionLogged`` validation →
  ``DriftDetector.add_rows`` (bad-input checks, window fill, scoring, decision).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np
from scipy.stats import ks_2samp

from services.monitor.core import DriftDetector, Reference, ks_statistic, ks_statistics
from shared.events import PredictionLogged

FEATURES, REFERENCE_ROWS, WINDOW, WINDOWS = 20, 10_000, 1_000, 30


def _time(
    score: Callable[[np.ndarray], list[float]], windows: list[np.ndarray]
) -> tuple[float, list[float]]:
    started = time.perf_counter()
    stats = [score(window) for window in windows]
    return time.perf_counter() - started, [s for row in stats for s in row]


def _end_to_end(reference: np.ndarray, windows: list[np.ndarray]) -> float:
    names = [f"f{j}" for j in range(FEATURES)]
    ref = Reference.from_columns("1", {n: reference[:, j] for j, n in enumerate(names)})
    detector = DriftDetector(ref, window_size=WINDOW)
    records = [
        PredictionLogged(
            producer="gateway",
            request_id="r",
            model_name="m",
            version="1",
            variant="champion",
            features=dict(zip(names, map(float, row), strict=True)),
            predicted_class="a",
            confidence=0.5,
            latency_ms=1.0,
        )
        .model_dump_json()
        .encode()
        for window in windows
        for row in window
    ]
    started = time.perf_counter()
    for start in range(0, len(records), 500):
        events = [PredictionLogged.model_validate_json(r) for r in records[start : start + 500]]
        detector.add_rows([e.features for e in events])
    return len(records) / (time.perf_counter() - started)


def main() -> None:
    """Score the same windows every way and print events/s side by side."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, honestly
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(REFERENCE_ROWS, FEATURES)).round(2)
    windows = [rng.normal(size=(WINDOW, FEATURES)).round(2) for _ in range(WINDOWS)]
    sorted_reference = [np.sort(reference[:, j]) for j in range(FEATURES)]

    def vectorised(window: np.ndarray) -> list[float]:
        return [float(d) for d in ks_statistics(sorted_reference, window)]

    def per_feature(window: np.ndarray) -> list[float]:
        return [ks_statistic(sorted_reference[j], window[:, j]) for j in range(FEATURES)]

    def scipy_loop(window: np.ndarray) -> list[float]:
        return [
            float(ks_2samp(reference[:, j], window[:, j], method="asymp").statistic)
            for j in range(FEATURES)
        ]

    fast_s, fast = _time(vectorised, windows)
    each_s, each = _time(per_feature, windows)
    base_s, base = _time(scipy_loop, windows)
    assert fast == base, "vectorised statistics differ from scipy"
    assert each == base, "per-feature statistics differ from scipy"
    events = WINDOWS * WINDOW
    e2e = _end_to_end(reference, windows)
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, python {platform.python_version()}, 1 core")
    print(f"{FEATURES} features, reference {REFERENCE_ROWS}, window {WINDOW}, {WINDOWS} windows")
    print(f"scipy ks_2samp loop           : {events / base_s:>12,.0f} events/s")
    for label, seconds in (("per feature         ", each_s), ("vectorised (monitor)", fast_s)):
        ratio = base_s / seconds
        print(f"flywheel {label} : {events / seconds:>12,.0f} events/s  ({ratio:.1f}x)")
    print(f"end to end, JSON → decision   : {e2e:>12,.0f} events/s")


if __name__ == "__main__":
    main()
