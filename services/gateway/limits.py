"""A cap on request bodies, applied before anything parses them.

A pure ASGI middleware (no per-request task, unlike ``BaseHTTPMiddleware``): a
declared ``Content-Length`` over the cap is answered 413 at once; a body without
one (chunked) is read up to the cap first, then handed on, or refused once it
crosses the cap. Memory per request stays bounded by the cap either way.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Answers 413 to requests whose body exceeds ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            # The server holds the body to its declared length.
            if declared > self.max_bytes:
                await self._refuse(send, f"{declared} bytes")
                return
            await self.app(scope, receive, send)
            return
        messages = await self._read_up_to_cap(receive)
        if messages is None:
            await self._refuse(send, "a longer body")
            return
        await self.app(scope, _replay(messages, receive), send)

    async def _read_up_to_cap(self, receive: Receive) -> list[Message] | None:
        """The messages of a body without a declared length, or None once it crosses the cap."""
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return None
            if message["type"] != "http.request" or not message.get("more_body", False):
                return messages

    async def _refuse(self, send: Send, size: str) -> None:
        message = (
            f"request body too large: {size} sent, at most {self.max_bytes} bytes accepted "
            "(GATEWAY_MAX_BODY_BYTES); split the batch"
        )
        body = json.dumps({"detail": {"message": message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
