"""The feature encoder saved inside every pipeline: one answer whatever the batch size."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from shared.datasets import generate_customers
from shared.spec import load_spec
from shared.tabular import SMALL_FRAME_ROWS, TabularEncoder

SPEC = load_spec()


def _fitted() -> tuple[TabularEncoder, pd.DataFrame]:
    frame = generate_customers(3 * SMALL_FRAME_ROWS, seed=8)[list(SPEC.feature_names)]
    encoder = TabularEncoder(numeric=SPEC.numeric_features, categorical=SPEC.categorical_features)
    return encoder.fit(frame), frame


def test_small_frames_encode_exactly_like_large_ones() -> None:
    encoder, frame = _fitted()
    whole = encoder.transform(frame)  # above SMALL_FRAME_ROWS: column by column
    one_by_one = np.vstack([encoder.transform(frame.iloc[[i]]) for i in range(len(frame))])
    np.testing.assert_array_equal(one_by_one, whole)


def test_encoding_matches_sklearns_scaler_and_one_hot_encoder() -> None:
    encoder, frame = _fitted()
    reference = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(SPEC.numeric_features)),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore"),
                list(SPEC.categorical_features),
            ),
        ],
        sparse_threshold=0,
    ).fit(frame)
    for rows in (frame.iloc[:3], frame):
        np.testing.assert_allclose(encoder.transform(rows), reference.transform(rows), atol=1e-6)
