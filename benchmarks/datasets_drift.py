"""Populations for the drift-quality harness: real tables that ship inside PyPI packages.

Nothing is downloaded: every table is a file bundled with scikit-learn,
statsmodels or river. A population is sampled with replacement (rows, not
columns, so the joint distribution is kept), which makes a stream stationary by
construction; the two synthetic populations are the Gaussian setting of issue 5
and the 2,000-category Zipf table of issue 9. river's Shuttle and Bananas and
statsmodels' randhie are kept out on purpose: they are for outside checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Sample = tuple[np.ndarray, np.ndarray | None]
"""Numeric rows (n × features) and, where the population has one, its categorical column."""


@dataclass(frozen=True)
class Population:
    """A data source the harness draws references and streams from."""

    name: str
    description: str
    feature_names: tuple[str, ...]
    draw: Callable[[np.random.Generator, int], Sample]
    means: np.ndarray
    sds: np.ndarray
    levels: np.ndarray
    """Distinct values per numeric feature (a large number for continuous synthetic data)."""
    categories: tuple[str, ...] = ()
    """Categories by falling frequency (empty without a categorical feature)."""
    category_shares: tuple[float, ...] = ()
    tuned: bool = False
    """Whether the defaults were chosen looking at this population (the others are held out)."""


def from_table(
    name: str,
    description: str,
    table: np.ndarray,
    names: tuple[str, ...],
    labels: np.ndarray | None = None,
    tuned: bool = False,
) -> Population:
    """A population that resamples the rows of ``table`` (and ``labels``) with replacement."""
    table = np.asarray(table, dtype=float)

    def draw(rng: np.random.Generator, n: int) -> Sample:
        rows = rng.integers(table.shape[0], size=n)
        return table[rows], (labels[rows] if labels is not None else None)

    categories: tuple[str, ...] = ()
    shares: tuple[float, ...] = ()
    if labels is not None:
        values, counts = np.unique(labels, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        categories = tuple(str(v) for v in values[order])
        shares = tuple(float(c) for c in counts[order] / counts.sum())
    levels = np.array([np.unique(table[:, j]).size for j in range(table.shape[1])])
    return Population(
        name, description, names, draw, table.mean(axis=0), table.std(axis=0), levels,
        categories, shares, tuned,
    )  # fmt: skip


def gaussian() -> Population:
    """Issue 5's setting: 20 independent N(0, 1) features."""

    def draw(rng: np.random.Generator, n: int) -> Sample:
        return rng.normal(size=(n, 20)), None

    names = tuple(f"f{j}" for j in range(20))
    big = np.full(20, 10**9)
    return Population(
        "gaussian", "20 × N(0, 1), synthetic", names, draw, np.zeros(20), np.ones(20), big,
        tuned=True,
    )  # fmt: skip


def zipf(categories: int = 2000, exponent: float = 1.1) -> Population:
    """Issue 9's sparse table: 2,000 Zipf categories beside 5 normal features."""
    weights = 1 / np.arange(1, categories + 1) ** exponent
    shares = weights / weights.sum()
    names = np.array([f"c{i}" for i in range(categories)])

    def draw(rng: np.random.Generator, n: int) -> Sample:
        return rng.normal(size=(n, 5)), names[rng.choice(categories, size=n, p=shares)]

    return Population(
        "zipf-2000", f"{categories} Zipf({exponent}) categories + 5 × N(0, 1), synthetic",
        tuple(f"f{j}" for j in range(5)), draw, np.zeros(5), np.ones(5), np.full(5, 10**9),
        tuple(str(n) for n in names), tuple(float(s) for s in shares),
    )  # fmt: skip


def fair() -> Population:
    """statsmodels ``fair``: 6,366 survey rows, 8 integer/coded answers and hours of affairs."""
    from statsmodels.datasets import fair as source

    frame = source.load_pandas().data
    # A composite key of six coded answers: a real categorical with hundreds of levels.
    key_columns = ["age", "yrs_married", "children", "religious", "educ", "occupation"]
    key = frame[key_columns].astype(str).agg("|".join, axis=1).to_numpy()
    return from_table(
        "fair", "statsmodels fair: 6,366 rows, 9 integer/count features + a 6-answer profile key",
        frame.to_numpy(), tuple(frame.columns), key, tuned=True,
    )  # fmt: skip


def breast_cancer() -> Population:
    """scikit-learn's breast cancer table: 569 rows, 30 continuous measurements."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return from_table(
        "breast_cancer", "sklearn breast_cancer: 569 rows, 30 continuous features",
        data.data, tuple(data.feature_names), tuned=True,
    )  # fmt: skip


def diabetes() -> Population:
    """scikit-learn's diabetes table unscaled: 442 rows, integer age, binary sex, lab values."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    return from_table(
        "diabetes", "sklearn diabetes (unscaled): 442 rows, 10 features, integers and a binary",
        data.data, tuple(data.feature_names),
    )  # fmt: skip


def digits() -> Population:
    """scikit-learn's digits: 1,797 rows, the 20 most variable of 64 pixel counts 0–16."""
    from sklearn.datasets import load_digits

    data = load_digits()
    # 20 columns, as in the other settings, keep a window's scoring cost comparable.
    chosen = np.sort(np.argsort(-data.data.var(axis=0), kind="stable")[:20])
    return from_table(
        "digits", "sklearn digits: 1,797 rows, 20 most variable pixels, integers 0–16",
        data.data[:, chosen], tuple(data.feature_names[i] for i in chosen),
    )  # fmt: skip


def anes96() -> Population:
    """statsmodels ``anes96``: 944 voters, 7-point scales, age, income bands."""
    from statsmodels.datasets import anes96 as source

    frame = source.load_pandas().data
    return from_table(
        "anes96", "statsmodels anes96: 944 rows, 11 integer scales and counts",
        frame.to_numpy(), tuple(frame.columns),
    )  # fmt: skip


def yeast() -> Population:
    """river's Yeast: 2,417 genes, 20 of 103 continuous features; the label set as a category."""
    import pandas as pd
    from river.datasets import Yeast

    frame = pd.read_csv(Yeast().path)  # type: ignore[no-untyped-call]
    classes = [c for c in frame.columns if c.startswith("Class")]
    features = frame[[f"Att{i}" for i in range(1, 21)]]  # 20 of 103, as in the other settings
    # Which of 14 functions a gene has, as one value: a real categorical with ~200 levels.
    label_set = frame[classes].astype(str).agg("".join, axis=1).to_numpy()
    return from_table(
        "yeast", "river Yeast: 2,417 rows, 20 continuous features + its label set (198 levels)",
        features.to_numpy(), tuple(features.columns), label_set,
    )  # fmt: skip


POPULATIONS: dict[str, Callable[[], Population]] = {
    "gaussian": gaussian,
    "fair": fair,
    "breast_cancer": breast_cancer,
    "diabetes": diabetes,
    "digits": digits,
    "anes96": anes96,
    "yeast": yeast,
    "zipf-2000": zipf,
}
