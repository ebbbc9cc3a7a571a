"""A LightGBM trainer: the worked example of docs/custom-trainers.md (entry point ``lightgbm``).

A spec with ``trainer: lightgbm`` is trained by this function instead of Flywheel's
candidates; everything around the training (triggers, MLflow, gates, serving) stays.
"""

from __future__ import annotations

import warnings

import pandas as pd
from lightgbm import LGBMClassifier, LGBMRegressor, early_stopping
from lightgbm.basic import LGBMDeprecationWarning
from sklearn.pipeline import Pipeline

from shared.spec import ModelSpec
from shared.tabular import TabularEncoder


def train(
    train: pd.DataFrame, validation: pd.DataFrame, spec: ModelSpec
) -> tuple[Pipeline, dict[str, float]]:
    """Boosted trees on the encoded features, stopped early on the validation frame."""
    # Numeric features scaled, categorical ones one-hot (an unseen category: all zeros);
    # the fitted encoder travels inside the pipeline, so serving sends raw rows.
    encoder = TabularEncoder(spec.numeric_features, spec.categorical_features).fit(train)
    booster = LGBMRegressor if spec.is_regression else LGBMClassifier
    # One thread: OpenMP threads spin on a busy host (8 s instead of 0.3 s measured on
    # 2 shared cores), and a one-row prediction gains nothing from more.
    model = booster(n_estimators=400, learning_rate=0.05, n_jobs=1, random_state=42, verbose=-1)
    with warnings.catch_warnings():
        # eval_set is deprecated in 4.7, but its successor eval_y skips the class encoding
        # (string classes fail); eval_set works on every 4.x.
        warnings.simplefilter("ignore", LGBMDeprecationWarning)
        model.fit(
            encoder.transform(train),
            train[spec.label],
            eval_set=[(encoder.transform(validation), validation[spec.label])],
            callbacks=[early_stopping(stopping_rounds=30, verbose=False)],
        )
    pipeline = Pipeline([("features", encoder), ("model", model)])
    return pipeline, {"best_iteration": float(model.best_iteration_)}
