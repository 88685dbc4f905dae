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
