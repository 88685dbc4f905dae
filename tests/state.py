"""Snapshots of a generation's online state in Redis, for tests that compare generations exactly."""

from __future__ import annotations

from typing import Any

import redis

from highwater.settings import Settings


def online_state(settings: Settings, generation: str) -> dict[str, Any]:
    """Every event key's members and scores (keys without the ``hw:{gen}:`` prefix), plus the
    generation's checkpoints, counters, layout and clock."""
    client = redis.Redis.from_url(settings.redis_url)
    prefix = f"hw:{generation}:"
    state: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{prefix}ev:*", count=1000):
        state[key.decode().removeprefix(prefix)] = client.zrange(key, 0, -1, withscores=True)
    for name in ("checkpoints", "counters", "layout"):
        state[name] = client.hgetall(f"{prefix}meta:{name}")
    state["clock"] = client.get(f"{prefix}meta:clock")
    return state


def every_key(settings: Settings, generation: str) -> dict[str, Any]:
    """Every key of the generation (without the ``hw:{gen}:`` prefix) and its whole content: sorted sets
    with their scores, hashes, strings. For writes that must leave exactly the same state."""
    client = redis.Redis.from_url(settings.redis_url)
    prefix = f"hw:{generation}:"
    state: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = client.type(key)
        name = key.decode().removeprefix(prefix)
        if kind == b"zset":
            state[name] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            state[name] = client.hgetall(key)
        else:
            assert kind == b"string", f"{name}: a {kind!r} key, which the online store does not write"
            state[name] = client.get(key)
    return state
