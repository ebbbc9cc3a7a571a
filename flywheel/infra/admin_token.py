"""The registry's admin token on the local stack: generated once into the run directory.

``flywheel up`` writes ``<run dir>/admin-token`` (mode 0600) when there is none and
starts the registry with it; ``flywheel promote`` and ``rollback`` read it. The
``REGISTRY_ADMIN_TOKEN`` environment variable, when set, wins on both sides.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from flywheel.infra.errors import InfraError

ADMIN_TOKEN_ENV = "REGISTRY_ADMIN_TOKEN"


def admin_token_path(run_dir: Path) -> Path:
    """Where the local stack keeps its admin token."""
    return run_dir / "admin-token"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_admin_token(run_dir: Path) -> str:
    """Return the run directory's admin token, generating it (readable by us only) if missing."""
    path = admin_token_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: of two `flywheel up` racing, one writes and both read the same token.
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    token = _read(path)
    if token is None:
        raise InfraError(f"The admin token file {path} is empty; delete it and run `flywheel up`.")
    return token


def read_admin_token(run_dir: Path, env: Mapping[str, str] | None = None) -> str | None:
    """The admin token to use: ``REGISTRY_ADMIN_TOKEN`` if set, else the run directory's."""
    env = os.environ if env is None else env
    return env.get(ADMIN_TOKEN_ENV, "").strip() or _read(admin_token_path(run_dir))
