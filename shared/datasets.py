"""Dataset batches: a seeded CRM-style generator, Parquet/CSV files, references by content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from shared.errors import InvalidInputError, NotFoundError
from shared.events import DatasetRef
from shared.spec import ModelSpec

PLANS = ("basic", "plus", "premium")


def generate_customers(
    rows: int,
    seed: int,
    *,
    covariate_shift: float = 0.0,
    concept_drift: bool = False,
    label: str = "segment",
) -> pd.DataFrame:
    """A labelled customer-segment batch.

    ``covariate_shift`` moves the spend and visit distributions by that many
    standard deviations (data drift); ``concept_drift`` changes how the
    features map to segments while leaving their distribution alone.
    """
    rng = np.random.default_rng(seed)
    log_spend = rng.normal(4.0 + 0.5 * covariate_shift, 0.5, rows)
    frame = pd.DataFrame(
        {
            "age": rng.normal(42.0, 12.0, rows).clip(18, 95).round(0),
            "tenure_months": rng.gamma(2.0, 12.0, rows).round(1),
            "monthly_spend": np.exp(log_spend).round(2),
            "visits_per_month": rng.poisson(6.0 + 2.45 * covariate_shift, rows).astype(float),
            "support_tickets": rng.poisson(1.0, rows).astype(float),
            "discount_rate": rng.beta(2.0, 5.0, rows).round(3),
            "days_since_last_purchase": rng.exponential(20.0, rows).round(1),
            "plan": rng.choice(PLANS, size=rows, p=[0.5, 0.3, 0.2]),
        }
    )
    frame[label] = _segments(frame, log_spend, rng, concept_drift)
    return frame


def _segments(
    frame: pd.DataFrame, log_spend: np.ndarray, rng: np.random.Generator, concept_drift: bool
) -> np.ndarray:
    # Fixed standardisation constants, so a covariate shift also shifts the segment mix.
    spend = (log_spend - 4.0) / 0.5
    visits = (frame["visits_per_month"].to_numpy() - 6.0) / 2.45
    recency = (frame["days_since_last_purchase"].to_numpy() - 20.0) / 20.0
    tickets = frame["support_tickets"].to_numpy() - 1.0
    discount = (frame["discount_rate"].to_numpy() - 0.286) / 0.16
    tenure = (frame["tenure_months"].to_numpy() - 24.0) / 17.0
    plan = frame["plan"].map({p: i for i, p in enumerate(PLANS)}).to_numpy() - 0.7
    if concept_drift:
        # Loyalty now comes from tenure and discounts rather than spend.
        value = 1.2 * tenure + 0.9 * discount + 0.2 * plan - 0.4 * recency
        risk = 1.0 * tickets - 0.8 * tenure + 0.5 * spend
    else:
        value = 1.1 * spend + 0.6 * visits + 0.5 * plan - 0.5 * recency + 0.2 * tenure
        risk = 0.9 * tickets + 1.0 * recency - 0.5 * visits + 0.3 * discount
    logits = np.column_stack([risk, np.zeros_like(risk) + 0.3, value])
    noisy = logits + rng.gumbel(0.0, 0.35, logits.shape)
    labels = np.asarray(("at_risk", "steady", "high_value"), dtype=object)
    return np.asarray(labels[noisy.argmax(axis=1)], dtype=object)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_batch(frame: pd.DataFrame, path: Path) -> DatasetRef:
    """Write ``frame`` as Parquet at ``path`` and return its reference."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return reference_to(path, rows=len(frame))


def reference_to(path: Path, rows: int | None = None) -> DatasetRef:
    """A reference (URI, hash, rows, format) to an existing Parquet or CSV file."""
    path = path.resolve()
    fmt = "csv" if path.suffix.lower() == ".csv" else "parquet"
    if rows is None:
        rows = len(_read(path, fmt))
    return DatasetRef(uri=path.as_uri(), sha256=sha256_of(path), rows=rows, format=fmt)


def load_batch(ref: DatasetRef, spec: ModelSpec) -> pd.DataFrame:
    """Read a referenced batch, check its hash and that it fits the spec."""
    path = path_of(ref.uri)
    if not path.is_file():
        raise NotFoundError(f"dataset {ref.uri} does not exist")
    if sha256_of(path) != ref.sha256:
        raise InvalidInputError(f"dataset {ref.uri} does not match its sha256 {ref.sha256[:12]}…")
    try:
        frame = _read(path, ref.format)
    except Exception as error:
        raise InvalidInputError(f"dataset {ref.uri} is unreadable: {error}") from error
    return validate_frame(frame, spec, labelled=True)


def path_of(uri: str) -> Path:
    """Local path of a ``file://`` URI (or a bare path)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise InvalidInputError(f"unsupported dataset URI scheme {parsed.scheme!r} in {uri}")
    return Path(parsed.path)


def validate_frame(frame: pd.DataFrame, spec: ModelSpec, *, labelled: bool) -> pd.DataFrame:
    """Check columns, types and categories against the spec; return the spec's columns."""
    wanted = [*spec.feature_names, *([spec.label] if labelled else [])]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"missing columns {missing}; the spec expects {wanted}")
    problems = [_column_problem(frame[f.name], f.name, f.categories) for f in spec.features]
    if labelled:
        problems.append(label_problem(frame[spec.label], spec))
    errors = [p for p in problems if p]
    if errors:
        raise InvalidInputError("; ".join(errors))
    if frame.empty:
        raise InvalidInputError("the batch has no rows")
    return frame[wanted].reset_index(drop=True)


def label_problem(column: pd.Series, spec: ModelSpec) -> str | None:
    """What is wrong with a label column: classes the spec lacks, or (regression) a non-number.

    A regression label must be a finite number; the first row that is not is named
    (its position in the batch, counting from 0).

    >>> from shared.spec import FeatureSpec
    >>> x = (FeatureSpec(name="x", type="numeric"),)
    >>> spec = ModelSpec(name="m", label="price", task="regression", features=x)
    >>> label_problem(pd.Series([1.5, 2.0]), spec) is None
    True
    >>> label_problem(pd.Series([1.5, float("inf"), None]), spec)
    'price: a regression label must be a finite number; row 1 is inf'
    >>> label_problem(pd.Series([3, "cheap"]), spec)
    "price: a regression label must be a finite number; row 1 is 'cheap'"
    """
    if not spec.is_regression:
        unknown = set(column.astype(str)) - set(spec.classes)
        return f"{spec.label}: unknown classes {sorted(unknown)}" if unknown else None
    # Text that reads as a number passes: a CSV column with one bad cell is all text.
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if not bad.size:
        return None
    value = column.iloc[int(bad[0])]
    shown = value.item() if isinstance(value, np.generic) else value
    return f"{spec.label}: a regression label must be a finite number; row {bad[0]} is {shown!r}"


def _column_problem(column: pd.Series, name: str, categories: tuple[str, ...]) -> str | None:
    if categories:
        unknown = set(column.dropna().astype(str)) - set(categories)
        return f"{name}: unknown categories {sorted(unknown)}" if unknown else None
    if not pd.api.types.is_numeric_dtype(column):
        return f"{name}: expected numbers, got {column.dtype}"
    if column.isna().any() or not np.isfinite(column.to_numpy(dtype=float)).all():
        return f"{name}: contains missing or infinite values"
    return None


def _read(path: Path, fmt: str) -> pd.DataFrame:
    return pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
