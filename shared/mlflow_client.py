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

#: A request to a stopped server fails at once (one immediate retry), to a hung one in
#: about 30 s (two 15 s timeouts), instead of after ~4 minutes; a longer outage is the
#: caller's to retry (handlers redeliver, clients get 503). 5 s was too short for a
#: server that is merely slow: on a saturated 2-core CI box (load ~50 while five
#: services started cold) alias look-ups took longer, and the gateway never loaded.
MLFLOW_HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}

# What MLflow's REST client says when the server did not answer (after its retries), and
# the cause in a few words; the most specific first.
_OUTAGE_CAUSES = (
    ("Connection refused", "connection refused"),
    ("Failed to establish a new connection", "no connection"),
    ("timed out", "timed out"),
    ("timeout exception", "timed out"),
    ("Connection aborted", "connection dropped"),
    ("RemoteDisconnected", "connection dropped"),
    # After its retries on 5xx ("too many 503 error responses"), or answered without them.
    ("too many 502", "502 Bad Gateway"),
    ("too many 503", "503 Service Unavailable"),
    ("too many 504", "504 Gateway Timeout"),
    ("error code 502", "502 Bad Gateway"),
    ("error code 503", "503 Service Unavailable"),
    ("error code 504", "504 Gateway Timeout"),
    ("Max retries exceeded", "no answer"),
)


def bound_mlflow_requests(env: MutableMapping[str, str] | None = None) -> None:
    """Give MLflow's HTTP calls a short timeout and few retries, unless already configured.

    Examples
    --------
    >>> env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    >>> bound_mlflow_requests(env)
    >>> env["MLFLOW_HTTP_REQUEST_TIMEOUT"], env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    ('30', '1')
    """
    env = os.environ if env is None else env
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        env.setdefault(name, value)


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client for tracking and registry at ``tracking_uri``, with bounded calls."""
    bound_mlflow_requests()
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def outage_cause(error: Exception) -> str | None:
    """The cause, in a few words, when an MLflow error means "the server did not answer".

    None for any other error (a missing model, a bad request): retrying cannot help those.

    Examples
    --------
    >>> outage_cause(MlflowException("API request to http://x/api failed with exception "
    ...                              "Max retries exceeded (Caused by Connection refused)"))
    'connection refused'
    >>> outage_cause(MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model not found"))
    """
    text = str(error)
    if not isinstance(error, requests.RequestException) and "API request to" not in text:
        return None
    causes = (cause for marker, cause in _OUTAGE_CAUSES if marker in text)
    default = "no answer" if isinstance(error, requests.RequestException) else None
    return next(causes, default)


@contextlib.contextmanager
def mlflow_outages() -> Iterator[None]:
    """Turn "MLflow did not answer" into DependencyUnavailableError; other errors pass."""
    try:
        yield
    except (requests.RequestException, MlflowException) as error:
        cause = outage_cause(error)
        if cause is None:
            raise
        message = error.message if isinstance(error, MlflowException) else str(error)
        raise DependencyUnavailableError(f"MLflow unreachable ({cause}): {message}") from error
