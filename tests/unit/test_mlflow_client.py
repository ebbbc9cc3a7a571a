"""MLflow outages become DependencyUnavailableError with the cause; other errors pass through."""

from __future__ import annotations

import pytest
import requests
from mlflow.exceptions import MlflowException

from shared.errors import DependencyUnavailableError
from shared.mlflow_client import MLFLOW_HTTP_DEFAULTS, bound_mlflow_requests, mlflow_outages

URL = "API request to http://127.0.0.1:5030/api/2.0/mlflow/registered-models/search failed"
POOL = "HTTPConnectionPool(host='127.0.0.1', port=5030): Max retries exceeded with url: /api"


# Messages as MLflow 3's REST client words them after its retries.
@pytest.mark.parametrize(
    ("message", "cause"),
    [
        (
            f"{URL} with exception {POOL} (Caused by NewConnectionError(Failed to establish a "
            "new connection: [Errno 111] Connection refused))",
            "connection refused",
        ),
        (
            f"{URL} with exception {POOL} (Caused by ReadTimeoutError(Read timed out.))",
            "timed out",
        ),
        (
            f"{URL} with exception {POOL} (Caused by ResponseError('too many 503 error "
            "responses'))",
            "503 Service Unavailable",
        ),
    ],
)
def test_an_outage_names_its_cause(message: str, cause: str) -> None:
    with pytest.raises(DependencyUnavailableError) as raised, mlflow_outages():
        raise MlflowException(message)
    assert str(raised.value).startswith(f"MLflow unreachable ({cause}): ")
    assert raised.value.retryable


def test_a_requests_error_is_an_outage() -> None:
    expected = pytest.raises(DependencyUnavailableError, match=r"^MLflow unreachable \(no answer")
    with expected, mlflow_outages():
        raise requests.ConnectionError("artifact download: connection reset")


@pytest.mark.parametrize(
    "message",
    [
        "RESOURCE_DOES_NOT_EXIST: Registered Model with name=m not found",
        # A port that looks like a status is not one.
        "API request to endpoint http://127.0.0.1:5030/api failed with error code 404 != 200",
    ],
)
def test_other_mlflow_errors_pass_through(message: str) -> None:
    with pytest.raises(MlflowException, match="^" + message[:20]), mlflow_outages():
        raise MlflowException(message)


def test_the_operator_s_settings_win_over_the_defaults() -> None:
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7"}
    bound_mlflow_requests(env)
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == MLFLOW_HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
