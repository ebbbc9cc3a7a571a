"""Approved versions into the BentoML model store, so ``bentoml serve``/``build`` can use them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def bento_tag(model_name: str, version: str) -> str:
    """The BentoML tag of a registered version, e.g. ``customer-segment:v3``.

    >>> bento_tag("customer-segment", "3")
    'customer-segment:v3'
    """
    return f"{model_name}:v{version}"


class BentoModelStore:
    """Saves sklearn pipelines (classifiers and regressors) with ``bentoml.sklearn`` under
    ``home`` (BENTOML_HOME); the handler skips other flavours."""

    def __init__(self, home: Path | None = None) -> None:
        self._home = home

    def package(self, name: str, version: str, model: Any, metadata: dict[str, Any]) -> str:
        """Save ``model`` as ``name:v<version>`` with ``metadata``; an existing tag is kept."""
        if self._home is not None:
            os.environ["BENTOML_HOME"] = str(self._home)
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        import bentoml  # slow to import; only when a version is approved
        from bentoml.exceptions import NotFound

        tag = bento_tag(name, version)
        try:
            bentoml.models.get(tag)
            return tag  # a redelivered approval: already packaged
        except NotFound:
            pass
        # A regressor has no predict_proba: BentoML would expose a method that cannot answer.
        methods = ("predict_proba", "predict") if hasattr(model, "predict_proba") else ("predict",)
        bentoml.sklearn.save_model(
            tag,
            model,
            signatures={method: {"batchable": True} for method in methods},
            labels={"registered_version": version, "framework": "flywheel"},
            metadata=metadata,
        )
        log.info("version packaged for BentoML", extra={"tag": tag})
        return tag
