"""Drift quality on real tables over many references: false alarms and detection delays.

Run: ``.venv/bin/python benchmarks/drift_quality.py`` (≈ 15 minutes on 2 vCPU;
``--quick`` for a smoke run; ``--only fair,zipf-2000`` for some populations).

Each population (``benchmarks/datasets_drift.py``) is sampled with replacement,
so every stream is stationary by construction. For reference ``r`` a fresh
sample of ``--reference-rows`` rows is drawn (seed r) and the monitor's
``DriftDetector`` with its defaults is built on it, as the service would at
reference-load time. Then:

- **Stationary**: ``--events`` events per reference; false drift-detected per
  1M events pooled over the references (exact Poisson 95 % CI), the spread of
  the per-reference rates (min–max), and the share of windows with any feature
  flagged (Wilson 95 % CI).
- **Shifts**, one run per reference cycled: one numeric feature (chosen at
  random among those with ≥ 10 distinct values) moves by +0.3 sd or is scaled
  ×1.5 around its mean; or the most frequent category gains 5 points of share,
  taken from all other categories alike. The change starts at a random position
  inside the third window; the delay runs from the change to the event that
  closed the alarming window; a run without an alarm within ``HORIZON`` events
  after the change is a miss; an alarm before the change is counted apart.
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from datasets_drift import POPULATIONS, Population, Sample
from drift_simulation import poisson, wilson

from services.monitor.core import DriftDetector, Reference

WINDOW, HORIZON, CHUNK = 1_000, 10_000, 50_000
TARGET_DELAY = 2_000
Shift = Callable[[np.random.Generator, Sample], Sample]


def generator(population: Population, seed: int, purpose: int) -> np.random.Generator:
    """Independent random streams per population, reference and purpose."""
    return np.random.default_rng([zlib.crc32(population.name.encode()), seed, purpose])


def detector_for(population: Population, seed: int, rows: int) -> DriftDetector:
    """The monitor's default detector on a fresh reference sample (seed ``seed``)."""
    numbers, labels = population.draw(generator(population, seed, 0), rows)
    columns = {n: numbers[:, j] for j, n in enumerate(population.feature_names)}
    categorical = {"category": labels} if labels is not None else None
    return DriftDetector(Reference.from_columns(f"{population.name}-{seed}", columns, categorical))


def feed(detector: DriftDetector, sample: Sample) -> list[bool]:
    """Alarms of the windows this sample closes."""
    numbers, labels = sample
    per_row = None if labels is None else [[str(v)] for v in labels]
    return [v.alarm for v in detector.add_numeric(numbers, per_row)]


def stationary(population: Population, seed: int, events: int, rows: int) -> tuple[int, int, int]:
    """Alarms, windows and windows with any feature flagged on a stationary stream."""
    detector = detector_for(population, seed, rows)
    rng = generator(population, seed, 1)
    alarms = windows = flagged = 0
    for start in range(0, events, CHUNK):
        numbers, labels = population.draw(rng, min(CHUNK, events - start))
        per_row = None if labels is None else [[str(v)] for v in labels]
        for verdict in detector.add_numeric(numbers, per_row):
            windows += 1
            alarms += verdict.alarm
            flagged += any(f.drifted for f in verdict.features)
    return alarms, windows, flagged


def mean_shift(population: Population, feature: int, sds: float) -> Shift:
    """Add ``sds`` population standard deviations to one feature."""

    def apply(rng: np.random.Generator, sample: Sample) -> Sample:
        numbers = sample[0].copy()
        numbers[:, feature] += sds * population.sds[feature]
        return numbers, sample[1]

    return apply


def scale_shift(population: Population, feature: int, factor: float) -> Shift:
    """Scale one feature's deviations from its population mean by ``factor``."""

    def apply(rng: np.random.Generator, sample: Sample) -> Sample:
        numbers = sample[0].copy()
        mean = population.means[feature]
        numbers[:, feature] = mean + factor * (numbers[:, feature] - mean)
        return numbers, sample[1]

    return apply


def share_shift(population: Population, points: float) -> Shift:
    """Move ``points`` of share to the most frequent category from all others alike."""
    top, top_share = population.categories[0], population.category_shares[0]

    def apply(rng: np.random.Generator, sample: Sample) -> Sample:
        assert sample[1] is not None
        labels = sample[1].copy()
        moved = (labels != top) & (rng.random(labels.size) < points / (1 - top_share))
        labels[moved] = top
        return sample[0], labels

    return apply


def delay(population: Population, seed: int, rows: int, shift: Shift) -> tuple[int | None, bool]:
    """Events from the change to the alarm (None: none within HORIZON); any alarm before."""
    detector = detector_for(population, seed, rows)
    rng = generator(population, seed, 2)
    change_at = 2 * WINDOW + int(rng.integers(WINDOW))
    before = feed(detector, population.draw(rng, change_at - change_at % WINDOW))
    head = population.draw(rng, change_at % WINDOW)
    after = shift(rng, population.draw(rng, HORIZON + WINDOW))
    tail = (np.r_[head[0], after[0]], None if head[1] is None else np.r_[head[1], after[1]])
    alarms = feed(detector, tail)
    closed = [(i + 1) * WINDOW + change_at - change_at % WINDOW for i in range(len(alarms))]
    found = [c - change_at for c, a in zip(closed, alarms, strict=True) if a]
    first = found[0] if found and found[0] <= HORIZON else None
    return first, any(before)


def scenarios(population: Population, seed: int) -> Iterator[tuple[str, Shift]]:
    """The changes tried on this population, the shifted feature chosen per run."""
    varied = np.flatnonzero((population.levels >= 10) & (population.sds > 0))
    feature = int(generator(population, seed, 3).choice(varied))
    yield "mean +0.3 sd", mean_shift(population, feature, 0.3)
    yield "scale ×1.5", scale_shift(population, feature, 1.5)
    if population.categories:
        yield "category +5 points", share_shift(population, 0.05)


@dataclass
class Tally:
    """Delays of one population × change."""

    delays: list[int | None]
    false_before: int = 0

    def row(self, name: str, change: str) -> str:
        """One markdown row."""
        runs = len(self.delays)
        within = sum(d is not None and d <= TARGET_DELAY for d in self.delays)
        low, high = wilson(within, runs)
        found = [d for d in self.delays if d is not None]
        median = f"{int(np.median(found)):,}" if found else "–"
        misses = runs - len(found)
        return (
            f"| {name} | {change} | {runs} | {within / runs:.1%} [{low:.1%}, {high:.1%}] "
            f"| {median} | {misses} | {self.false_before} |"
        )


def report_stationary(population: Population, references: int, events: int, rows: int) -> str:
    """One markdown row of false alarms over ``references`` references."""
    per_reference = [stationary(population, r, events, rows) for r in range(references)]
    alarms = sum(a for a, _, _ in per_reference)
    windows = sum(w for _, w, _ in per_reference)
    flagged = sum(f for _, _, f in per_reference)
    exposure = references * events / 1e6
    low, high = poisson(alarms, exposure)
    rates = [a / (events / 1e6) for a, _, _ in per_reference]
    wl, wh = wilson(flagged, windows)
    tuned = "tuned on" if population.tuned else "held out"
    return (
        f"| {population.name} | {tuned} | {references} | {references * events:,} | {alarms} "
        f"| {alarms / exposure:.2f} [{low:.2f}, {high:.2f}] | {min(rates):.1f}–{max(rates):.1f} "
        f"| {flagged / windows:.2%} [{wl:.2%}, {wh:.2%}] |"
    )


def report_shifts(population: Population, runs: int, rows: int) -> list[str]:
    """Markdown rows of detection delays, one per change."""
    tallies: dict[str, Tally] = {}
    for run in range(runs):
        for change, shift in scenarios(population, run):
            found, false_before = delay(population, run, rows, shift)
            tally = tallies.setdefault(change, Tally([]))
            tally.delays.append(found)
            tally.false_before += false_before
    return [t.row(population.name, change) for change, t in tallies.items()]


def main() -> None:
    """Run the harness and print markdown tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="few references, short streams")
    parser.add_argument("--only", default="", help="comma-separated population names")
    parser.add_argument("--references", type=int, default=20)
    parser.add_argument("--events", type=int, default=250_000, help="per reference")
    parser.add_argument("--runs", type=int, default=200, help="shift runs per change")
    parser.add_argument("--reference-rows", type=int, default=10_000)
    args = parser.parse_args()
    if args.quick:
        args.references, args.events, args.runs = 4, 50_000, 20
    names = args.only.split(",") if args.only else list(POPULATIONS)
    populations = [POPULATIONS[n]() for n in names]
    started = time.perf_counter()
    print(f"### Stationary streams ({args.reference_rows:,}-row references)\n")
    print("| population | defaults | references | events | alarms | per 1M [95 % CI] "
          "| per reference (min–max) | windows flagged [95 % CI] |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | --- | --- | --- |")
    for population in populations:
        print(report_stationary(population, args.references, args.events, args.reference_rows))
    print(f"\n### Changes ({args.reference_rows:,}-row references, one per run)\n")
    print("| population | change | runs | within 2,000 events [95 % CI] | median delay "
          f"| missed ({HORIZON:,}) | false alarm before |")  # fmt: skip
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for population in populations:
        for row in report_shifts(population, args.runs, args.reference_rows):
            print(row)
    print(f"\n(simulated in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
