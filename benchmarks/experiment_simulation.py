"""Experiment quality by simulation: the router's own cores from counters to verdicts.

Run: ``.venv/bin/python benchmarks/experiment_simulation.py`` (≈ 10 minutes on 2
cores; ``--quick`` for 60 replicates per scenario, ``--reps N`` to choose).

Each replicate is one experiment. Predictions arrive at 10 per second and are
routed to the challenger with the share in force (the ramp 5 → 10 → 25 → 50 %).
Every prediction is right with its arm's accuracy, gets a label with its arm's
label rate, after a delay that may depend on whether it was right, and may fail
instead (a broken challenger). Every ``BATCH`` predictions the simulation closes
the outcome windows that have ended, writes the counters exactly as the router's
tally names them (``core.tally`` and ``core.outcomes.closing_increments`` give the
keys and the window rule; numpy only counts), reads them back with
``stats_from_counters`` and looks with ``lifecycle.look_due`` / ``lifecycle.look``
— the decision, guardrails, SRM, ramp and maximum duration are the router's code.
The first replicate of every scenario is checked outcome by outcome against
``closing_increments``.

Settings: the router's defaults (α = 0.05, n* = 2,000, min 100 labelled and 25
right and wrong per arm, max 20,000 per arm, 100 challenger outcomes per stage),
an outcome window of 600 s, and a look every 1,000 closed outcomes, checked every
100 s (the default is 50; the always-valid rule does not depend on how often it
looks, and fewer looks keep the run short). Rates carry Wilson 95 % intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from drift_simulation import wilson

from services.router.core.arms import LATENCY_EDGES_MS, share_key
from services.router.core.decision import DecisionConfig
from services.router.core.experiment import Experiment, ExperimentPlan
from services.router.core.lifecycle import look, look_due
from services.router.core.outcomes import Label, OutcomeWindow, PendingOutcome, closing_increments
from services.router.core.tally import stats_from_counters

RATE = 10.0  # predictions per second
BATCH = 1000  # predictions between chances to look (100 s)
WINDOW_S = 600.0  # no consumer lag in simulated time: windows close with no grace
FAST_S, SLOW_S = 30.0, 900.0  # mean label delays (exponential)
OPENED = datetime(2026, 11, 24, tzinfo=UTC)
ARMS = ("champion", "challenger")


@dataclass(frozen=True)
class Scenario:
    """One kind of experiment: the arms' truths and the label process."""

    name: str
    acc: tuple[float, float] = (0.80, 0.80)
    final_acc: tuple[float, float] | None = None  # accuracy from the last stage on (drift)
    label_rate: tuple[float, float] = (0.90, 0.90)
    delay: str = "instant"  # instant | equal | correct_fast | wrong_fast
    failure: float = 0.0  # challenger requests that fail
    served_share: float | None = None  # a broken split: the challenger gets this share instead
    max_duration_s: float = 7 * 24 * 3600.0
    expect: str = "none"  # the right verdict: promote | rollback | none (A/A)


SCENARIOS = [
    Scenario("A/A, instant labels"),
    Scenario("A/A, equal delays", delay="equal"),
    Scenario("A/A, right outcomes labelled sooner", delay="correct_fast"),
    Scenario("A/A, wrong outcomes labelled sooner", delay="wrong_fast"),
    Scenario("A/A, accuracy 0.78 → 0.82 at the 50 % stage", (0.78, 0.78), (0.82, 0.82)),
    Scenario("A/A, accuracy 0.82 → 0.78 at the 50 % stage", (0.82, 0.82), (0.78, 0.78)),
    Scenario(
        "A/A, 0.79 → 0.81, right labelled sooner", (0.79, 0.79), (0.81, 0.81), delay="correct_fast"
    ),
    Scenario("A/A, challenger label rate −3 points", label_rate=(0.90, 0.87)),
    Scenario("A/A, challenger label rate −4 points", label_rate=(0.90, 0.86)),
    Scenario("A/B +3 points", acc=(0.80, 0.83), expect="promote"),
    Scenario("A/B −3 points", acc=(0.80, 0.77), expect="rollback"),
    Scenario("A/B +3, right labelled sooner", (0.80, 0.83), delay="correct_fast", expect="promote"),
    Scenario("A/B −3, wrong labelled sooner", (0.80, 0.77), delay="wrong_fast", expect="rollback"),
    Scenario("challenger fails 10 % of requests", failure=0.10, expect="rollback"),
    Scenario("challenger fails every request", failure=1.0, expect="rollback"),
    Scenario(
        "broken split (challenger gets 80 % of its share), 2 h max",
        served_share=0.8,
        max_duration_s=7200.0,
        expect="none",
    ),
]


def _plan(s: Scenario) -> ExperimentPlan:
    return ExperimentPlan(
        look_every=1000,
        max_duration_s=s.max_duration_s,
        decision=DecisionConfig(),
        outcome_window=OutcomeWindow(seconds=WINDOW_S, grace_seconds=0.0),
    )


def _delays(rng: np.random.Generator, correct: np.ndarray, kind: str) -> np.ndarray:
    n = correct.size
    if kind == "instant":
        return np.zeros(n)
    if kind == "equal":
        return rng.exponential(FAST_S + (SLOW_S - FAST_S) / 2, n)
    fast_when = correct if kind == "correct_fast" else ~correct
    return np.where(fast_when, rng.exponential(FAST_S, n), rng.exponential(SLOW_S, n))


def _batch(
    rng: np.random.Generator, s: Scenario, e: Experiment, start: float, strata: list[str]
) -> dict[str, np.ndarray]:
    share = e.challenger_share * (s.served_share or 1.0)
    t = start + np.arange(BATCH) / RATE
    arm = (rng.random(BATCH) < share).astype(np.int8)
    acc = np.array(s.final_acc if (s.final_acc and e.is_final_stage) else s.acc)
    correct = rng.random(BATCH) < acc[arm]
    has_label = rng.random(BATCH) < np.array(s.label_rate)[arm]
    delay = _delays(rng, correct, s.delay)
    failed = (arm == 1) & (rng.random(BATCH) < s.failure)
    key = share_key(e.challenger_share)
    if key not in strata:
        strata.append(key)
    return {
        "t": t,
        "arm": arm,
        "stratum": np.full(BATCH, strata.index(key), dtype=np.int16),
        "correct": correct,
        "labelled_in_time": has_label & (delay <= WINDOW_S) & ~failed,
        "late": has_label & (delay > WINDOW_S) & ~failed,
        "failed": failed,
        "log_ms": rng.normal(math.log(2.0), 0.3, BATCH),
    }


class Hash:
    """The router's counters for one experiment, filled as the tally would fill them.

    Assignments, requests, errors and latency count when a batch is routed; an
    outcome counts when its window closes (``close``), as ``closing_increments``
    would add it. One batch is routed under one share, so under one stratum.
    """

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.open: list[tuple[str, dict[str, np.ndarray]]] = []

    def _add(self, key: str, value: float) -> None:
        if value:
            self.counters[key] = self.counters.get(key, 0.0) + float(value)

    def route(self, key: str, batch: dict[str, np.ndarray]) -> None:
        """Count one routed batch and keep its outcomes open."""
        for ai, arm in enumerate(ARMS):
            mine = batch["arm"] == ai
            served = mine & ~batch["failed"]
            log_ms = batch["log_ms"][served]
            prefix = f"{key}|{arm}:"
            for name, value in (
                ("assigned", mine.sum()),
                ("requests", mine.sum()),
                ("errors", (mine & batch["failed"]).sum()),
                ("latency_n", served.sum()),
                ("log_latency_sum", log_ms.sum()),
                ("log_latency_sumsq", (log_ms * log_ms).sum()),
            ):
                self._add(prefix + name, value)
            bins = np.searchsorted(LATENCY_EDGES_MS, np.exp(log_ms), side="left")
            found, counts = np.unique(
                np.minimum(bins, len(LATENCY_EDGES_MS) - 1), return_counts=True
            )
            for b, c in zip(found, counts, strict=True):
                self._add(f"{prefix}latency_bin:{b}", c)
        self.open.append((key, batch))

    def close(self, now: float) -> None:
        """Count the outcomes whose windows ended by ``now``."""
        while self.open:
            key, batch = self.open[0]
            done = batch["t"] <= now - WINDOW_S
            self._close(key, {k: v[done] for k, v in batch.items()})
            if done.all():
                self.open.pop(0)
                continue
            self.open[0] = (key, {k: v[~done] for k, v in batch.items()})
            break

    def _close(self, key: str, closing: dict[str, np.ndarray]) -> None:
        for ai, arm in enumerate(ARMS):
            done = (closing["arm"] == ai) & ~closing["failed"]
            in_time = done & closing["labelled_in_time"]
            prefix = f"{key}|{arm}:"
            self._add(prefix + "closed", done.sum())
            self._add(prefix + "labelled", in_time.sum())
            self._add(prefix + "correct", (in_time & closing["correct"]).sum())
            self._add(prefix + "late", (done & closing["late"]).sum())


def _check_against_core(tape: dict[str, np.ndarray], strata: list[str]) -> None:
    """Closing every outcome one by one with ``closing_increments`` gives the same counters."""
    window = OutcomeWindow(seconds=WINDOW_S, grace_seconds=0.0)
    by_core: dict[str, float] = {}
    for i in np.flatnonzero(~tape["failed"]):
        pending = PendingOutcome(
            request_id=str(i),
            arm=ARMS[tape["arm"][i]],
            stratum=strata[tape["stratum"][i]],
            predicted_at=float(tape["t"][i]),
        )
        label = None
        if tape["labelled_in_time"][i] or tape["late"][i]:
            at = pending.predicted_at + (0.0 if tape["labelled_in_time"][i] else WINDOW_S + 1)
            label = Label(correct=bool(tape["correct"][i]), at=at)
        for k, v in closing_increments(pending, label, window, 0.0).items():
            by_core[k] = by_core.get(k, 0.0) + v
    ours = Hash()
    for si, key in enumerate(strata):
        ours._close(key, {k: v[tape["stratum"] == si] for k, v in tape.items()})
    assert by_core == ours.counters, (by_core, ours.counters)


def _maybe_due(e: Experiment, counters: Hash, now: float) -> bool:
    labelled = sum(v for k, v in counters.counters.items() if k.endswith(":labelled"))
    overdue = now > e.plan.max_duration_s
    return overdue or labelled - e.looked_at_labelled >= e.plan.look_every


def run_one(s: Scenario, seed: int, check: bool = False) -> dict[str, object]:
    """One experiment to its verdict (or the horizon): what it decided, when and why."""
    rng = np.random.default_rng(seed)
    plan = _plan(s)
    e = Experiment(
        experiment_id=f"sim-{seed}",
        model_name="m",
        status="running",
        champion_version="1",
        challenger_version="2",
        challenger_share=plan.shares[0],
        opened_at=OPENED,
        plan=plan,
    )
    counters = Hash()
    strata: list[str] = []
    kept: list[dict[str, np.ndarray]] = []
    now, horizon, at = 0.0, 3 * 24 * 3600.0, OPENED
    while e.is_running and now < horizon:
        batch = _batch(rng, s, e, now, strata)
        counters.route(share_key(e.challenger_share), batch)
        if check:
            kept.append(batch)
        now += BATCH / RATE
        counters.close(now)
        at = OPENED + timedelta(seconds=now)
        if not _maybe_due(e, counters, now):
            continue  # look_due would say no: skip reading the hash back
        stats = stats_from_counters(counters.counters)
        if look_due(e, stats, at):
            e = look(e, stats, at)
    if check:
        _check_against_core({k: np.concatenate([b[k] for b in kept]) for k in kept[0]}, strata)
    lasted = ((e.concluded_at or at) - OPENED).total_seconds()
    return {
        "status": e.status,
        "decision": e.decision,
        "reasons": list(e.reasons),
        "looks": e.looks,
        "lasted_s": lasted,
        "over_max": lasted > s.max_duration_s + BATCH / RATE,
        "challenger_requests": int(
            sum(v for k, v in counters.counters.items() if k.endswith("challenger:requests"))
        ),
    }


def _job(args: tuple[int, int]) -> tuple[int, dict[str, object]]:
    index, seed = args
    return index, run_one(SCENARIOS[index], seed, check=seed % 1000 == 0)


def _fmt(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{k / n:.1%} [{low:.1%}, {high:.1%}]"


def summarise(results: dict[int, list[dict[str, object]]]) -> list[dict[str, object]]:
    """One row per scenario: verdict shares with Wilson intervals, looks, duration."""
    rows = []
    for i, runs in sorted(results.items()):
        s, n = SCENARIOS[i], len(runs)
        count = {
            st: sum(r["status"] == st for r in runs)
            for st in ("promoted", "rolled_back", "inconclusive", "running")
        }
        right = {"promote": count["promoted"], "rollback": count["rolled_back"]}.get(s.expect)
        held = sum("sample_ratio_mismatch_assigned" in r["reasons"] for r in runs)  # type: ignore[operator]
        rows.append(
            {
                "scenario": s.name,
                "n": n,
                "promoted": _fmt(count["promoted"], n),
                "rolled_back": _fmt(count["rolled_back"], n),
                "inconclusive": _fmt(count["inconclusive"], n),
                "still_running": count["running"],
                "correct": "–" if right is None else _fmt(right, n),
                "ended_on_srm": held,
                "median_looks": float(np.median([r["looks"] for r in runs])),
                "median_hours": float(np.median([r["lasted_s"] for r in runs])) / 3600,
                "over_max_duration": sum(bool(r["over_max"]) for r in runs),
                "expect": s.expect,
            }
        )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    """The table for docs/benchmarks.md."""
    head = (
        "| scenario | n | promoted | rolled back | inconclusive | decided right | "
        "median looks | median h | > max duration |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r['scenario']} | {r['n']} | {r['promoted']} | {r['rolled_back']} | "
        f"{r['inconclusive']} | {r['correct']} | {r['median_looks']:.0f} | "
        f"{r['median_hours']:.1f} | {r['over_max_duration']} |\n"
        for r in rows
    )


def main() -> None:
    """Run every scenario, print the table and save the JSON beside it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", type=str, default="", help="scenarios whose name contains this")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=str, default="experiment_simulation.json")
    args = parser.parse_args()
    reps = 60 if args.quick else args.reps
    chosen = [i for i, s in enumerate(SCENARIOS) if args.only in s.name]
    jobs = [(i, 1000 * i + r) for i in chosen for r in range(reps)]
    started = time.perf_counter()
    results: dict[int, list[dict[str, object]]] = {i: [] for i in chosen}
    with multiprocessing.Pool(args.workers) as pool:
        for done, (index, result) in enumerate(pool.imap_unordered(_job, jobs, chunksize=4)):
            results[index].append(result)
            if done % 200 == 199:
                print(f"{done + 1} / {len(jobs)}", file=sys.stderr, flush=True)
    rows = summarise(results)
    print(markdown(rows))
    print(f"{len(jobs)} experiments in {time.perf_counter() - started:.0f} s")
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
