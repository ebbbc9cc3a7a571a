"""The demo's models: each one's spec and a seeded generator of labelled batches.

Flywheel itself has no built-in model: a deployment registers its models
(``flywheel models create``). The demo registers these two, side by side:
customer-segment (three classes) and card-fraud (two classes, other features).
The end-to-end tests add a regressor, customer-value (a customer's spend over
the next year).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np
import pandas as pd
import yaml

from shared.datasets import generate_customers
from shared.spec import ModelSpec, load_spec

MERCHANTS = ("grocery", "fuel", "travel", "electronics", "restaurant", "online")
CHANNELS = ("chip", "contactless", "online")

#: (rows, seed, covariate_shift, concept_drift) → a labelled batch.
Generator = Callable[[int, int, float, bool], pd.DataFrame]


def generate_transactions(
    rows: int, seed: int, *, covariate_shift: float = 0.0, concept_drift: bool = False
) -> pd.DataFrame:
    """A labelled card-fraud batch (about a quarter fraud, so the demo learns fast).

    ``covariate_shift`` moves amounts and distances up by half that many standard
    deviations of their logs (data drift); ``concept_drift`` changes which
    transactions are fraud while leaving the features' distribution alone.

    >>> batch = generate_transactions(2000, 1)
    >>> sorted(batch["outcome"].unique()), bool(0.1 < (batch["outcome"] == "fraud").mean() < 0.4)
    (['fraud', 'legit'], True)
    """
    rng = np.random.default_rng(seed)
    log_amount = rng.normal(3.5 + 0.45 * covariate_shift, 0.9, rows)
    log_distance = rng.normal(2.0 + 0.6 * covariate_shift, 1.2, rows)
    frame = pd.DataFrame(
        {
            "amount": np.exp(log_amount).round(2),
            "hour": rng.integers(0, 24, rows).astype(float),
            "card_age_days": rng.gamma(2.0, 400.0, rows).round(0),
            "distance_km": np.exp(log_distance).clip(0, 20040).round(1),
            "transactions_24h": rng.poisson(3.0, rows).astype(float),
            "merchant": rng.choice(MERCHANTS, size=rows, p=[0.3, 0.15, 0.1, 0.1, 0.2, 0.15]),
            "channel": rng.choice(CHANNELS, size=rows, p=[0.4, 0.35, 0.25]),
        }
    )
    frame["outcome"] = _outcomes(frame, log_amount, log_distance, rng, concept_drift)
    return frame


def _outcomes(
    frame: pd.DataFrame,
    log_amount: np.ndarray,
    log_distance: np.ndarray,
    rng: np.random.Generator,
    concept_drift: bool,
) -> np.ndarray:
    # Fixed standardisation constants, so a covariate shift also moves the fraud rate.
    amount = (log_amount - 3.5) / 0.9
    distance = (log_distance - 2.0) / 1.2
    night = np.isin(frame["hour"].to_numpy(), [0, 1, 2, 3, 4]).astype(float)
    new_card = (frame["card_age_days"].to_numpy() < 90).astype(float)
    burst = (frame["transactions_24h"].to_numpy() - 3.0) / 1.7
    online = (frame["channel"].to_numpy() == "online").astype(float)
    risky = np.isin(frame["merchant"].to_numpy(), ["electronics", "travel"]).astype(float)
    if concept_drift:
        # Fraudsters moved to small, frequent, nearby purchases at ordinary hours.
        score = -1.0 * amount + 1.4 * burst + 1.0 * online - 0.6 * distance + 0.8 * new_card
    else:
        score = 1.0 * amount + 0.9 * distance + 1.2 * night + 1.0 * new_card + 0.8 * risky
    fraud = score + rng.logistic(0.0, 0.5, len(frame)) > 2.0
    return np.where(fraud, "fraud", "legit").astype(object)


PLAN_LEVELS = {"basic": 0.0, "plus": 1.0, "premium": 2.0}


def generate_annual_values(
    rows: int, seed: int, *, covariate_shift: float = 0.0, concept_drift: bool = False
) -> pd.DataFrame:
    """Customers (customer-value's features) labelled with their spend over the next year.

    The features are ``generate_customers``' (``covariate_shift`` moves spend and
    visits); ``concept_drift`` makes the value follow tenure and age rather than
    spend and visits, with about the same mean, so a model of the old relation
    misses by a few hundred while the features look the same.

    >>> old = generate_annual_values(3000, 1)
    >>> new = generate_annual_values(3000, 1, concept_drift=True)
    >>> value, new_value = old.pop("annual_value"), new.pop("annual_value")
    >>> bool(value.std() > 300), bool(abs(value.mean() - new_value.mean()) < 100)
    (True, True)
    >>> old.equals(new), bool(((value - new_value).abs() > 200).mean() > 0.3)
    (True, True)
    """
    frame = generate_customers(rows, seed, covariate_shift=covariate_shift)
    spend = frame["monthly_spend"].to_numpy()
    visits = frame["visits_per_month"].to_numpy()
    tenure = frame["tenure_months"].to_numpy()
    age = frame["age"].to_numpy()
    plan = frame["plan"].map(PLAN_LEVELS).to_numpy(dtype=float)
    if concept_drift:
        # Loyalty now pays: long-standing, older customers spend more whatever they spend now.
        value = 300 + 4 * spend + 25 * tenure + 8 * (age - 42) + 150 * plan
    else:
        value = 200 + 10 * spend + 40 * visits + 4 * tenure + 200 * plan
    # Noise from a stream of its own, so the features are generate_customers' exactly.
    noise = np.random.default_rng([seed, 1]).normal(0.0, 60.0, rows)
    columns = [f.name for f in customer_value_spec().features]
    return frame[columns].assign(annual_value=(value + noise).round(2))


def _customers(rows: int, seed: int, shift: float, concept: bool) -> pd.DataFrame:
    return generate_customers(rows, seed, covariate_shift=shift, concept_drift=concept)


def _customer_values(rows: int, seed: int, shift: float, concept: bool) -> pd.DataFrame:
    return generate_annual_values(rows, seed, covariate_shift=shift, concept_drift=concept)


def _transactions(rows: int, seed: int, shift: float, concept: bool) -> pd.DataFrame:
    return generate_transactions(rows, seed, covariate_shift=shift, concept_drift=concept)


@dataclass(frozen=True)
class DemoModel:
    """A model the demo registers, with its spec and how to generate its data."""

    spec: ModelSpec
    generate: Generator

    @property
    def name(self) -> str:
        """The registered model's name (the spec's)."""
        return self.spec.name

    def named(self, name: str) -> DemoModel:
        """The same model registered as ``name`` (tests give each run its own names).

        >>> demo_models()[1].named("fraud-1").spec.name
        'fraud-1'
        """
        return replace(self, spec=self.spec.model_copy(update={"name": name}))


def _packaged(file: str) -> ModelSpec:
    text = resources.files("flywheel.demo_models").joinpath(file).read_text()
    return ModelSpec.model_validate(yaml.safe_load(text))


def card_fraud_spec() -> ModelSpec:
    """The packaged card-fraud spec."""
    return _packaged("card-fraud.yaml")


def customer_value_spec() -> ModelSpec:
    """The packaged customer-value spec (the end-to-end tests' third model, a regressor)."""
    return _packaged("customer-value.yaml")


def demo_models() -> tuple[DemoModel, ...]:
    """The demo's two models: customer-segment first, then card-fraud.

    >>> [(m.name, m.spec.classes) for m in demo_models()]
    [('customer-segment', ('at_risk', 'steady', 'high_value')), ('card-fraud', ('legit', 'fraud'))]
    """
    return (DemoModel(load_spec(), _customers), DemoModel(card_fraud_spec(), _transactions))


def customer_value_model() -> DemoModel:
    """A third model, a regressor of the customers' spend over the next year.

    >>> model = customer_value_model()
    >>> batch = model.generate(500, 3, 0.0, False)
    >>> list(batch.columns) == [*model.spec.feature_names, model.spec.label]
    True
    >>> model.spec.task, str(batch["annual_value"].dtype)
    ('regression', 'float64')
    """
    return DemoModel(customer_value_spec(), _customer_values)
