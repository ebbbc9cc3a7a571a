"""A bare FastAPI endpoint that answers every POST with a constant: the ceiling for the gateway.

Served like the gateway (uvicorn, one process, uvloop and httptools when installed,
no access log): ``python benchmarks/bare_endpoint.py --port 18002``.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI

ANSWER: dict[str, Any] = {
    "model_name": "constant",
    "model_version": "0",
    "variant": "champion",
    "predictions": [{"predicted_class": "a", "confidence": 1.0}],
}


def create_app() -> FastAPI:
    """An app whose ``POST /v1/predict`` returns :data:`ANSWER` without reading the body."""
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict() -> dict[str, Any]:
        return ANSWER

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    return app


def main() -> None:
    """Serve the app on ``--host``/``--port`` the way the gateway is served."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18002)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
