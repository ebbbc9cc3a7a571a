"""Drift detection quality by simulation: false alarms, delays, misses; Flywheel vs river.

Run: ``.venv/bin/python benchmarks/drift_simulation.py`` (a few minutes; ``--quick``
for a smaller run). Setting of issue 5: 20 independent N(0, 1) features, a
10,000-row reference, tumbling windows of W = 1,000, Bonferroni α = 0.05, and the
monitor's defaults: an alarm when 2 consecutive windows drift, or one window is
beyond the strict α = 1e-4 level, or the last 8 windows pooled drift at
α = 2e-3 (the slow path for small lasting shifts); then a 10-window cool-down.

- Stationary stream: drift-detected per 1M events (exact Poisson 95 % CI) and the
  raw share of windows with any feature over its threshold (Wilson 95 % CI).
- Shifts: one feature moves by +0.3σ, +0.2σ, +0.1σ in mean, or ×1.5 in scale, at a
  uniformly random position inside a window (so a window is usually mixed). Delay =
  events from the shift to the event that closed the alarming window; share of runs
  detected within the target (Wilson 95 % CI); a run not detected within 20,000
  events is a miss. An alarm before the shift counts as a false alarm of that run.
- river baselines on the same streams: ADWIN (default δ = 0.002) on every feature,
  an alarm when any feature's detector fires. KSWIN (defaults: α = 0.005, window
  100, stat 30) costs ~0.4 ms per update, so it runs on the shifted feature only
  (its delays are a lower bound, its false alarms before the shift an
  underestimate) and its stationary rate is measured on one feature and scaled by
  20 (the union bound for 20 features).

The stationary rate here comes from one reference; a false-alarm rate is a
random quantity that varies with the reference, so ``drift_quality.py`` (which
reuses ``wilson`` and ``poisson`` from here) reports it over many references,
on the Gaussian setting and on real tables with ties and many categories.
"""

from __future__ import annotations

import argparse
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from river.drift import ADWIN, KSWIN
from scipy.stats import chi2, norm

from services.monitor.core import DriftDetector, Reference

FEATURES, REFERENCE_ROWS, WINDOW, ALPHA = 20, 10_000, 1_000, 0.05
HORIZON = 20_000
SCENARIOS: dict[str, tuple[float, float, int]] = {
    # name: (mean shift in σ, scale factor, target delay in events)
    "mean +0.3σ": (0.3, 1.0, 2_000),
    "scale ×1.5": (0.0, 1.5, 2_000),
    "mean +0.2σ": (0.2, 1.0, 3_000),
    "mean +0.1σ": (0.1, 1.0, 10_000),
}
TARGET_SHARE = {"mean +0.3σ": 0.99, "scale ×1.5": 0.99, "mean +0.2σ": 0.95, "mean +0.1σ": 0.90}


def wilson(successes: int, n: int, z: float = float(norm.ppf(0.975))) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def poisson(count: int, exposure: float) -> tuple[float, float]:
    """Exact (Garwood) 95 % interval of a rate, per unit of ``exposure``."""
    low = chi2.ppf(0.025, 2 * count) / 2 if count else 0.0
    high = chi2.ppf(0.975, 2 * count + 2) / 2
    return low / exposure, high / exposure


def _detector(rng: np.random.Generator, persistence: int = 2) -> DriftDetector:
    columns = {f"f{j}": rng.normal(size=REFERENCE_ROWS) for j in range(FEATURES)}
    return DriftDetector(
        Reference.from_columns("sim", columns),
        window_size=WINDOW,
        alpha=ALPHA,
        persistence=persistence,
    )


def flywheel_stationary(events: int, seed: int, persistence: int) -> tuple[int, int, int]:
    """Alarms, windows, and windows with any feature over threshold, on a stationary stream."""
    rng = np.random.default_rng(seed)
    detector = _detector(rng, persistence)
    alarms = windows = drifted = 0
    for _ in range(events // WINDOW):
        for verdict in detector.add_numeric(rng.normal(size=(WINDOW, FEATURES))):
            windows += 1
            alarms += verdict.alarm
            drifted += any(f.drifted for f in verdict.features)
    return alarms, windows, drifted


@dataclass
class Run:
    """One simulated stream with a change: its data and where the change starts."""

    data: np.ndarray
    change_at: int


def make_run(rng: np.random.Generator, mean: float, scale: float) -> Run:
    """Two windows and a random part of a third before the change, then HORIZON after it."""
    change_at = 2 * WINDOW + int(rng.integers(WINDOW))
    data = rng.normal(size=(change_at + HORIZON, FEATURES))
    data[change_at:, 0] = data[change_at:, 0] * scale + mean
    return Run(data, change_at)


def flywheel_delay(run: Run, seed: int, persistence: int) -> tuple[int | None, bool]:
    """Delay to the first alarm at or after the change (None: missed); any alarm before."""
    detector = _detector(np.random.default_rng(seed), persistence)
    false_before = False
    for start in range(0, run.data.shape[0], WINDOW):
        for verdict in detector.add_numeric(run.data[start : start + WINDOW]):
            closed = start + WINDOW  # events seen when this window closed
            if verdict.alarm and closed <= run.change_at:
                false_before = True
            elif verdict.alarm:
                return closed - run.change_at, false_before
    return None, false_before


def river_delay(
    run: Run, make: Callable[[], ADWIN | KSWIN], features: int
) -> tuple[int | None, bool]:
    """Same for a river detector per feature (the first ``features`` features)."""
    detectors = [make() for _ in range(features)]
    false_before = False
    for i, row in enumerate(run.data[:, :features]):
        fired = False
        for detector, value in zip(detectors, row, strict=True):
            detector.update(float(value))  # type: ignore[no-untyped-call]
            fired |= detector.drift_detected
        if fired and i < run.change_at:
            false_before = True
        elif fired:
            return i + 1 - run.change_at, false_before
    return None, false_before


def river_stationary(make: Callable[[], ADWIN | KSWIN], events: int, seed: int) -> int:
    """Alarms of one river detector on a stationary stream of one feature."""
    detector = make()
    alarms = 0
    for value in np.random.default_rng(seed).normal(size=events):
        detector.update(float(value))  # type: ignore[no-untyped-call]
        alarms += detector.drift_detected
    return alarms


def _delay_row(name: str, method: str, results: list[tuple[int | None, bool]]) -> str:
    target = SCENARIOS[name][2]
    delays = [d for d, _ in results]
    within = sum(d is not None and d <= target for d in delays)
    low, high = wilson(within, len(results))
    found = sorted(d for d in delays if d is not None)
    median = f"{int(np.median(found)):,}" if found else "–"
    p90 = f"{int(np.quantile(found, 0.9)):,}" if found else "–"
    misses = sum(d is None for d in delays)
    false_before = sum(f for _, f in results)
    return (
        f"| {name} | {method} | {len(results)} | {within / len(results):.1%} "
        f"[{low:.1%}, {high:.1%}] (target ≥ {TARGET_SHARE[name]:.0%} within {target:,}) "
        f"| {median} | {p90} | {misses} | {false_before} |"
    )


def main() -> None:
    """Run every simulation and print markdown tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller streams")
    args = parser.parse_args()
    stationary_events = 2_000_000 if args.quick else 10_000_000
    runs, kswin_runs = (60, 8) if args.quick else (300, 30)
    river_events = 100_000 if args.quick else 500_000
    started = time.perf_counter()

    print("### Stationary stream (no change)\n")
    print(
        "| method | events | drift alarms | per 1M events [95 % CI] | raw windows over threshold |"
    )
    print("| --- | ---: | ---: | --- | --- |")
    for persistence in (2, 1):
        alarms, windows, drifted = flywheel_stationary(stationary_events, 1, persistence)
        low, high = poisson(alarms, stationary_events / 1e6)
        wl, wh = wilson(drifted, windows)
        label = "Flywheel (default)" if persistence == 2 else "Flywheel, persistence 1"
        rate = alarms / stationary_events * 1e6
        print(
            f"| {label} | {stationary_events:,} | {alarms} | {rate:.2f} "
            f"[{low:.2f}, {high:.2f}] | {drifted / windows:.2%} [{wl:.2%}, {wh:.2%}] |"
        )
    adwin = sum(river_stationary(ADWIN, river_events, s) for s in range(FEATURES))
    low, high = poisson(adwin, river_events / 1e6)
    print(
        f"| river ADWIN × 20 features (union) | {river_events:,} | {adwin} | "
        f"{adwin / river_events * 1e6:.1f} [{low:.1f}, {high:.1f}] (upper bound: sum) | – |"
    )
    kswin_events = 5_000 if args.quick else 20_000
    kswin = river_stationary(lambda: KSWIN(seed=7), kswin_events, 3)
    low, high = poisson(kswin, kswin_events / 1e6)
    print(
        f"| river KSWIN, 1 feature | {kswin_events:,} | {kswin} | "
        f"{kswin / kswin_events * 1e6:,.0f} [{low:,.0f}, {high:,.0f}]; × 20 features ≈ "
        f"{20 * kswin / kswin_events * 1e6:,.0f} | – |"
    )

    print("\n### One feature shifted\n")
    print("| change | method | runs | detected within target [95 % CI] | median delay | p90 delay "
          "| missed (20k) | false alarm before change |")  # fmt: skip
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for name, (mean, scale, _) in SCENARIOS.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))  # stable across runs
        streams = [make_run(rng, mean, scale) for _ in range(runs)]
        for persistence in (2, 1):
            results = [flywheel_delay(r, i, persistence) for i, r in enumerate(streams)]
            label = "Flywheel (default)" if persistence == 2 else "Flywheel, persistence 1"
            print(_delay_row(name, label, results))
        adwin_results = [river_delay(r, ADWIN, FEATURES) for r in streams]
        print(_delay_row(name, "river ADWIN × 20", adwin_results))
        kswin_results = [river_delay(r, lambda: KSWIN(seed=7), 1) for r in streams[:kswin_runs]]
        print(_delay_row(name, "river KSWIN, shifted feature only", kswin_results))
    print(f"\n(simulated in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
