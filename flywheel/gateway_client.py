"""One model's routes on the gateway, as the demo and the end-to-end tests call them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

#: Attempts of one call when the connection drops (a pooled keep-alive connection the
#: server closed as the client reused it: a busy demo machine saw it).
ATTEMPTS = 3


class ModelGateway:
    """``/v1/models/{name}/…`` of one model, over a shared HTTP client."""

    def __init__(self, client: httpx.AsyncClient, model: str) -> None:
        self.client = client
        self.model = model
        self._base = f"/v1/models/{model}"

    async def predict(self, rows: list[dict[str, Any]], batch: int = 100) -> list[dict[str, Any]]:
        """POST ``rows`` in batches of ``batch``; the answers, in order."""
        answers = []
        for start in range(0, len(rows), batch):
            instances = rows[start : start + batch]
            response = await self.client.post(
                f"{self._base}/predict", json={"instances": instances}
            )
            response.raise_for_status()
            answers.append(response.json())
        return answers

    async def predict_one(self, row: dict[str, Any], entity: str) -> dict[str, Any]:
        """One row for one entity (sticky: the entity stays on its variant)."""
        body = {"features": row, "entity_id": entity}
        response = await self._post("predict", body)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    async def feedback(self, request_id: str, label: str) -> None:
        """The true label of a classifier's answered request."""
        await self._feedback({"request_id": request_id, "true_label": label})

    async def feedback_value(self, request_id: str, value: float) -> None:
        """The true value of a regressor's answered request."""
        await self._feedback({"request_id": request_id, "true_value": value})

    async def _feedback(self, body: dict[str, Any]) -> None:
        for _ in range(10):  # another replica may not have stored the prediction's record yet
            response = await self._post("feedback", body)
            if response.status_code != 404:
                break
            await asyncio.sleep(0.2)
        response.raise_for_status()

    async def _post(self, route: str, body: dict[str, Any]) -> httpx.Response:
        """POST, again on a dropped connection (a repeated feedback is counted once)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await self.client.post(f"{self._base}/{route}", json=body)
            except httpx.TransportError:
                if attempt == ATTEMPTS:
                    raise
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def serving(self, variant: str) -> str | None:
        """The version the gateway serves as ``variant`` of this model, if any."""
        response = await self.client.get(f"{self._base}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        variants = response.json().get("variants", {})
        found = variants.get(variant, {}).get("version")
        return str(found) if found is not None else None

    async def wait_until_serving(self, version: str, variant: str, within_s: float) -> None:
        """Poll until ``variant`` serves ``version``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if await self.serving(variant) == version:
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(
            f"the gateway did not load {self.model} {variant} version {version} in {within_s:.0f} s"
        )
