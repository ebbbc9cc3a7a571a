"""The admin routes' guard: ``Authorization: Bearer <token>``, the scheme in any case."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Header, HTTPException


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of a Bearer ``Authorization`` header, or None for any other.

    The scheme is case-insensitive (RFC 9110 §11.1), so ``bearer`` and ``BEARER`` count.

    Examples
    --------
    >>> bearer_token("bearer s3cret"), bearer_token("Basic s3cret"), bearer_token(None)
    ('s3cret', None, None)
    """
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def admin_guard(token: str | None) -> Callable[[str | None], None]:
    """A dependency answering 401 unless the request carries ``token`` as its bearer token."""

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        given = bearer_token(authorization) or ""
        if token is not None and hmac.compare_digest(given.encode(), token.encode()):
            return
        detail = (
            "the registry has no admin token configured (REGISTRY_ADMIN_TOKEN)"
            if token is None
            else "missing or wrong bearer token"
        )
        raise HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})

    return authorised
