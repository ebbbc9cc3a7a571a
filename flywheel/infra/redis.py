"""A local Redis server: reuse whatever answers PING on the port, else start redis-server."""

from __future__ import annotations

import os
import shutil
import subprocess

import redis as redis_client
from redis.backoff import NoBackoff
from redis.retry import Retry

from flywheel.infra.config import InfraConfig
from flywheel.infra.errors import MissingToolError
from flywheel.infra.processes import (
    ComponentStatus,
    ensure_port_free,
    ensure_running,
    running_pid,
    spawn,
)

NAME = "redis"
NO_RETRY = Retry(NoBackoff(), 0)


def redis_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a Redis server answers PING on a port."""
    client = redis_client.Redis(
        host=host, port=port, socket_timeout=1, socket_connect_timeout=1, retry=NO_RETRY
    )
    try:
        return bool(client.ping())
    except (redis_client.RedisError, OSError):
        return False
    finally:
        client.close()


def _apt_install_redis() -> None:
    """Install redis-server with apt-get (root only)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, timeout=600)


def ensure_redis_server() -> str:
    """Return the redis-server path, installing it with apt-get when running as root."""
    path = shutil.which("redis-server")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            _apt_install_redis()
        except (subprocess.SubprocessError, OSError) as error:
            raise MissingToolError(
                f"`redis-server` is missing and `apt-get install redis-server` failed ({error})."
            ) from error
        path = shutil.which("redis-server")
    if path is None:
        raise MissingToolError(
            "`redis-server` is not on PATH; install it (e.g. `sudo apt-get install redis-server`)."
        )
    return path


def preflight_redis(config: InfraConfig) -> None:
    """Raise PortTakenError if the port is held by something that is neither ours nor Redis."""
    if running_pid(config.run_dir, NAME) is None and not redis_answers(config.redis_port):
        ensure_port_free(config.redis_port, "FLYWHEEL_REDIS_PORT")


def redis_argv(config: InfraConfig, server: str = "redis-server") -> list[str]:
    """The redis-server command line: append-only file in ``<run_dir>/redis``.

    ``appendfsync everysec``: a restart (``flywheel down && up``, a crash of the
    process) keeps every acknowledged write; a crash of the machine loses at most
    the last second. No RDB snapshots: the AOF alone is the state.
    """
    argv = [server, "--port", str(config.redis_port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(config.run_dir / "redis"), "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no"]
    return argv


def _launch(config: InfraConfig) -> int:
    """Spawn redis-server in the foreground of a detached session, persisting to its AOF."""
    ensure_port_free(config.redis_port, "FLYWHEEL_REDIS_PORT")
    (config.run_dir / "redis").mkdir(parents=True, exist_ok=True)
    return spawn(NAME, redis_argv(config, ensure_redis_server()), config.run_dir)


def start_redis(config: InfraConfig, timeout: float = 30.0) -> str:
    """Reuse a Redis answering on the port, or start one and wait for PING; return its URL."""
    if redis_answers(config.redis_port):
        return config.redis_url
    ensure_running(
        NAME,
        config.run_dir,
        lambda: _launch(config),
        lambda: redis_answers(config.redis_port),
        f"Redis on port {config.redis_port}",
        timeout,
    )
    return config.redis_url


def redis_status(config: InfraConfig) -> ComponentStatus:
    """Report whether our Redis runs, or a foreign one answers on the port."""
    pid = running_pid(config.run_dir, NAME)
    if pid is not None:
        state = "running"
    elif redis_answers(config.redis_port):
        state = "running (not started by flywheel)"
    else:
        state = "stopped"
    return ComponentStatus(NAME, state, pid, config.redis_url)
