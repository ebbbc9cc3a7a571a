"""The one way services reach MLflow: bounded HTTP calls, and one translation of its outages.

MLflow's REST client retries 7 times with a backoff factor of 2 and a 120 s timeout
by default, so a request to a stopped server hangs about four minutes before it
fails. Services bound that through the environment variables MLflow reads on every
request (``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``); a value already set by the operator wins.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from shared.errors import DependencyUnavailableError

#: A request to a stopped server fails in about 3 s (retries after 0 s and 2 s), a hung
#: one in about 17 s (three 5 s timeouts), instead of ~4 minutes.
MLFLOW_HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}

# What MLflow's REST client says when the server did not answer (after its retries).
_OUTAGE_MARKERS = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "Connection aborted",
    "RemoteDisconnected",
    "timed out",
    "timeout exception",
    "502",
    "503",
    "504",
)


def bound_mlflow_requests(env: MutableMapping[str, str] | None = None) -> None:
    """Give MLflow's HTTP calls a short timeout and few retries, unless already configured.

    Examples
    --------
    >>> env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    >>> bound_mlflow_requests(env)
    >>> env["MLFLOW_HTTP_REQUEST_TIMEOUT"], env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    ('30', '2')
    """
    env = os.environ if env is None else env
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        env.setdefault(name, value)


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client for tracking and registry at ``tracking_uri``, with bounded calls."""
    bound_mlflow_requests()
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def is_outage(error: Exception) -> bool:
    """Tell whether an MLflow error means "the server did not answer" (retrying may help).

    Examples
    --------
    >>> is_outage(MlflowException("API request to http://x/api failed with exception "
    ...                           "Max retries exceeded with url: /api"))
    True
    >>> is_outage(MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model not found"))
    False
    """
    if isinstance(error, requests.RequestException):
        return True
    text = str(error)
    return "API request to" in text and any(marker in text for marker in _OUTAGE_MARKERS)


@contextlib.contextmanager
def mlflow_outages() -> Iterator[None]:
    """Turn "MLflow did not answer" into DependencyUnavailableError; other errors pass."""
    try:
        yield
    except (requests.RequestException, MlflowException) as error:
        if not is_outage(error):
            raise
        message = error.message if isinstance(error, MlflowException) else str(error)
        raise DependencyUnavailableError(f"MLflow unreachable: {message}") from error
