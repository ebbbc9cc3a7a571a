"""KS drift scoring speed: Flywheel's sorted-reference scoring vs a loop over scipy's ks_2samp.

Run: ``.venv/bin/python benchmarks/ks_scoring.py``. Both sides score the same
windows (20 numeric features, 10,000-row reference, W = 1,000) and must agree
on every statistic; the script prints events/s for each and the ratio.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import numpy as np
from scipy.stats import ks_2samp

from services.monitor.core import ks_statistic

FEATURES, REFERENCE_ROWS, WINDOW, WINDOWS = 20, 10_000, 1_000, 30


def _time(
    score: Callable[[np.ndarray], list[float]], windows: list[np.ndarray]
) -> tuple[float, list[float]]:
    started = time.perf_counter()
    stats = [score(window) for window in windows]
    return time.perf_counter() - started, [s for row in stats for s in row]


def main() -> None:
    """Score the same windows both ways and print the ratio."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(REFERENCE_ROWS, FEATURES)).round(2)
    windows = [rng.normal(size=(WINDOW, FEATURES)).round(2) for _ in range(WINDOWS)]
    sorted_reference = [np.sort(reference[:, j]) for j in range(FEATURES)]

    def flywheel(window: np.ndarray) -> list[float]:
        return [ks_statistic(sorted_reference[j], window[:, j]) for j in range(FEATURES)]

    def scipy_loop(window: np.ndarray) -> list[float]:
        return [
            float(ks_2samp(reference[:, j], window[:, j], method="asymp").statistic)
            for j in range(FEATURES)
        ]

    ours_s, ours = _time(flywheel, windows)
    base_s, base = _time(scipy_loop, windows)
    assert ours == base, "statistics differ from scipy"
    events = WINDOWS * WINDOW
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    print(f"{FEATURES} features, reference {REFERENCE_ROWS}, window {WINDOW}, {WINDOWS} windows")
    print(f"scipy ks_2samp loop : {events / base_s:>12,.0f} events/s")
    print(f"flywheel ks_statistic: {events / ours_s:>12,.0f} events/s")
    print(f"ratio               : {base_s / ours_s:>12.1f}x")


if __name__ == "__main__":
    main()
