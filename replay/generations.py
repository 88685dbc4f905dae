"""Generations: complete copies of derived state, one of which is live.

A generation is a Redis key namespace (``hw:{gen}:*``) plus its ClickHouse history tables
(``transactions_{gen}``...). The stream job writes one generation; a replay rebuilds another from the log
while the live one keeps serving. The live pointer (``hw:live`` in Redis) names the generation the gRPC
server reads; the server resolves it inside each read script, so promotion is one atomic ``SET`` and no
request ever reads two generations. Until a generation is promoted the configured
``settings.online.generation`` is live.

Example:
    >>> [g.name for g in list_generations(settings)]   # doctest: +SKIP
    ['g1', 'r1']
    >>> promote(settings, "r1")                        # doctest: +SKIP
    'g1'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import redis

from highwater.settings import Settings
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.offline import UnknownGenerationError
from sinks.redis_online import LIVE_GENERATION_KEY, KeyLayout, generation_layouts, live_generation, text
from streams.features import REGISTRY, FeatureRegistry

PREVIOUS_LIVE_KEY = "hw:live:previous"
_META = re.compile(rb"^hw:([a-z0-9_-]+):meta:")


@dataclass(frozen=True)
class GenerationInfo:
    """What ``highwater generations list`` shows about one generation."""

    name: str
    live: bool
    clock_ms: int | None
    applied: int
    next_offsets: int
    history_rows: int | None
    replay: dict[str, str]
    unheld: list[str]
    """Features of the code's definitions the generation's recorded layout cannot hold (backfill them)."""


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=30.0, socket_connect_timeout=5.0)


def online_generations(client: redis.Redis) -> set[str]:
    """Generations with any metadata in Redis (checkpoints, clock, counters or replay record)."""
    names = set()
    for key in client.scan_iter(match="hw:*:meta:*", count=1000):
        match = _META.match(key)
        if match:
            names.add(match.group(1).decode())
    return names


def list_generations(settings: Settings, registry: FeatureRegistry = REGISTRY) -> list[GenerationInfo]:
    """Every generation found online (Redis) or offline (ClickHouse), sorted by name."""
    client = _redis(settings)
    live = live_generation(settings, client)
    offline = ClickHouseOfflineStore.from_settings(settings)
    try:
        offline_names = set(offline.generations())
        infos = []
        for name in sorted(online_generations(client) | offline_names | {live}):
            keys = KeyLayout(name)
            clock = client.get(keys.clock)
            counters = client.hgetall(keys.counters)
            checkpoints = client.hgetall(keys.checkpoints)
            rows = None
            if name in offline_names:
                table = offline.query_arrow("SELECT count() AS n FROM {transactions} FINAL", name)
                rows = int(table.column("n")[0].as_py())
            infos.append(
                GenerationInfo(
                    name=name,
                    live=name == live,
                    clock_ms=int(clock) if clock is not None else None,
                    applied=int(counters.get(b"applied", 0)),
                    next_offsets=sum(int(text(v).split(":")[0]) for v in checkpoints.values()),
                    history_rows=rows,
                    replay=read_hash(client, replay_key(name)),
                    unheld=list(registry.unheld(generation_layouts(client, name, registry))),
                )
            )
        return infos
    finally:
        offline.close()


def read_hash(client: redis.Redis, key: str) -> dict[str, str]:
    """A Redis hash as text."""
    return {text(k): text(v) for k, v in client.hgetall(key).items()}


def replay_key(generation: str) -> str:
    """The hash describing how ``generation`` was built by a replay (from, to, targets, status)."""
    return f"{KeyLayout(generation).prefix}:meta:replay"


def require_generation(settings: Settings, generation: str, client: redis.Redis | None = None) -> None:
    """UnknownGenerationError unless ``generation`` has online metadata or offline tables."""
    client = client or _redis(settings)
    known = online_generations(client)
    if generation in known:
        return
    offline = ClickHouseOfflineStore.from_settings(settings)
    try:
        known |= set(offline.generations())
    finally:
        offline.close()
    if generation not in known:
        raise UnknownGenerationError(generation, sorted(known))


def promote(settings: Settings, generation: str) -> str:
    """Make ``generation`` live (one atomic SET); returns the generation that was live before.

    Refuses a generation without a clock (nothing applied yet): serving it would answer nothing.
    """
    client = _redis(settings)
    require_generation(settings, generation, client)
    if client.get(KeyLayout(generation).clock) is None:
        raise ValueError(f"generation {generation!r} has no applied events yet; finish its replay first")
    previous = live_generation(settings, client)
    pipe = client.pipeline(transaction=True)
    pipe.set(LIVE_GENERATION_KEY, generation)
    pipe.set(PREVIOUS_LIVE_KEY, previous)
    pipe.execute()
    return previous


def drop(settings: Settings, generation: str) -> int:
    """Delete ``generation``'s Redis keys and ClickHouse tables; returns the Redis keys deleted.

    Refuses the live generation.
    """
    client = _redis(settings)
    require_generation(settings, generation, client)
    if generation == live_generation(settings, client):
        raise ValueError(f"generation {generation!r} is live; promote another one before dropping it")
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{KeyLayout(generation).prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += int(client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(client.unlink(*batch))
    offline = ClickHouseOfflineStore.from_settings(settings)
    try:
        offline.drop_generation(generation)
    finally:
        offline.close()
    return deleted
