"""Choosing the Redis client (one server or a cluster) and splitting keys by hash slot."""

from __future__ import annotations

import logging
import socket

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from shared.redis_client import _without_password, redis_client, slot_groups, uses_cluster
from shared.settings import BaseServiceSettings


def _nothing_listening() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://:secret@127.0.0.1:{port}/0"


def test_true_and_false_decide_without_asking_the_server() -> None:
    url = _nothing_listening()
    assert uses_cluster(url, "true") is True
    assert uses_cluster(url, "false") is False
    assert isinstance(redis_client(url, "true"), RedisCluster)
    assert isinstance(redis_client(url, "false"), Redis)


def test_auto_with_no_answer_uses_one_server_and_says_how_to_choose(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = _nothing_listening()
    with caplog.at_level(logging.WARNING, logger="shared.redis_client"):
        assert uses_cluster(url, "auto") is False
    assert "REDIS_CLUSTER=true" in caplog.text
    assert "secret" not in caplog.text  # the URL is logged without its password


def test_the_setting_defaults_to_auto_and_refuses_other_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_CLUSTER", raising=False)
    assert BaseServiceSettings().redis_cluster == "auto"
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    assert BaseServiceSettings().redis_cluster == "true"
    monkeypatch.setenv("REDIS_CLUSTER", "sometimes")
    with pytest.raises(ValidationError):
        BaseServiceSettings()


def test_keys_are_grouped_by_slot_on_a_cluster_and_kept_together_on_one_server() -> None:
    keys = ["flywheel:gateway:prediction:a", "x:{m}:1", "flywheel:gateway:prediction:b", "y:{m}:2"]
    assert slot_groups(Redis(), keys) == [[0, 1, 2, 3]]
    assert slot_groups(Redis(), []) == []
    groups = slot_groups(RedisCluster(host="127.0.0.1", port=7000), keys)
    assert sorted(groups) == sorted(_by_slot(keys).values())
    assert [1, 3] in groups  # one hash tag, one slot
    assert len(groups) == 3


def _by_slot(keys: list[str]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        found.setdefault(key_slot(key.encode()), []).append(position)
    return found


def test_a_password_never_reaches_the_log() -> None:
    assert _without_password("redis://user:pw@host:6379/0") == "redis://host:6379/0"
    assert _without_password("redis://host:6379/0") == "redis://host:6379/0"
