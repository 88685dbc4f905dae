"""Redis implementation of the online store.

Key layout (``{gen}`` is the generation namespace, default ``g1``; ``{entity:id}`` is a Redis Cluster
hash tag so an entity's two keys share a slot):

=================================  ======  =========================================================
``hw:{gen}:ev:{entity:id}``        zset    member = event id (transaction_id), score = event_time ms
``hw:{gen}:pl:{entity:id}``        hash    event id -> the entity's feature fields, 0x1f-separated
``hw:{gen}:meta:checkpoints``      hash    ``topic:partition`` -> ``next_offset:max_event_time``
``hw:{gen}:meta:clock``            string  highest applied event_time (the serving clock), ms
``hw:{gen}:meta:counters``         hash    applied, late, malformed:<kind>, duplicate_entity_updates
=================================  ======  =========================================================

Why raw events rather than pre-aggregated tiles: every window boundary (T-W, T] is then exact for any
T, windows empty out by themselves as T moves, and idempotency is by event id (``HSETNX``): applying the
same offsets twice changes nothing. Events older than the longest window plus the online retention are
trimmed as the partition's clock moves; idle entities expire by TTL (processing time).

A batch is applied by one Lua script (atomic): events, partition checkpoints, counters and clock move
together, so a crash never leaves offsets committed for writes that did not happen or the reverse. That
script touches many keys, which suits a standalone Redis (or one primary); for Redis Cluster the batch
would be split per slot.

Example:
    >>> store = RedisOnlineStore.from_settings(Settings())   # doctest: +SKIP
    >>> store.read("card", ["card-1"], ["card_txn_count_1h"], as_of_ms=1_772_409_600_000)  # doctest: +SKIP
    [{'card_txn_count_1h': FeatureValue(value=2, latest_event_time_ms=1772409000000)}]
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from highwater.settings import Settings
from sinks.online import FeatureValue, PartitionCheckpoint, WriteBatch
from sinks.redis_lua import APPLY_BATCH, READ_FEATURES
from streams.features import REGISTRY, FeatureRegistry

FIELD_SEPARATOR = "\x1f"


class KeyLayout:
    """Names of the Redis keys of one generation."""

    def __init__(self, generation: str) -> None:
        self.prefix = f"hw:{generation}"
        self.checkpoints = f"{self.prefix}:meta:checkpoints"
        self.clock = f"{self.prefix}:meta:clock"
        self.counters = f"{self.prefix}:meta:counters"

    def events(self, entity: str, entity_id: str) -> str:
        """The time index of one entity id."""
        return f"{self.prefix}:ev:{{{entity}:{entity_id}}}"

    def payloads(self, entity: str, entity_id: str) -> str:
        """The payloads of one entity id's events."""
        return f"{self.prefix}:pl:{{{entity}:{entity_id}}}"


class RedisOnlineStore:
    """The online store on Redis; see the module docstring for layout and guarantees."""

    def __init__(self, client: redis.Redis, settings: Settings, registry: FeatureRegistry = REGISTRY) -> None:
        self._redis = client
        self._registry = registry
        self.keys = KeyLayout(settings.online.generation)
        self.retention_ms = settings.online.retention_ms
        self._ttl_ms = settings.online.ttl_ms
        self._keep_ms = (
            settings.online.retention_ms
            + registry.max_window_ms()
            + settings.stream.max_out_of_orderness_ms
            + settings.stream.allowed_lateness_ms
        )
        self._apply = client.register_script(APPLY_BATCH)
        self._read = client.register_script(READ_FEATURES)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisOnlineStore:
        """A store on the Redis at ``settings.redis_url``."""
        # Timeouts turn a hung Redis into a fast error (UNAVAILABLE for the server) instead of a stall.
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=30.0, socket_connect_timeout=5.0)
        return cls(client, settings)

    @property
    def keep_ms(self) -> int:
        """How far behind its partition's clock an event is still kept."""
        return self._keep_ms

    # --- writing ------------------------------------------------------------------------------------
    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically; events already applied (same id) are counted, not re-applied."""
        partition_max = max(
            (c.max_event_time_ms for c in batch.checkpoints if c.max_event_time_ms is not None), default=None
        )
        keys: list[str] = [self.keys.checkpoints, self.keys.clock, self.keys.counters]
        # Trimming by the batch's highest partition clock is safe: reads never reach below
        # clock - retention - longest window, and keep_ms is larger than that span.
        trim = (partition_max - self._keep_ms) if partition_max is not None else 0
        args: list[str | int] = [self._ttl_ms, trim, len(batch.events)]
        for event in batch.events:
            keys.append(self.keys.events(event.entity, event.entity_id))
            keys.append(self.keys.payloads(event.entity, event.entity_id))
            args.extend((event.event_id, event.event_time_ms, FIELD_SEPARATOR.join(event.fields)))
        args.append(len(batch.checkpoints))
        for ckpt in batch.checkpoints:
            max_time = "" if ckpt.max_event_time_ms is None else str(ckpt.max_event_time_ms)
            args.extend((f"{ckpt.topic}:{ckpt.partition}", f"{ckpt.next_offset}:{max_time}"))
        args.append(len(batch.counters))
        for name, increment in batch.counters.items():
            args.extend((name, increment))
        args.append("" if partition_max is None else partition_max)
        self._apply(keys=keys, args=args)

    # --- reading ------------------------------------------------------------------------------------
    def read(
        self, entity: str, entity_ids: Sequence[str], features: Sequence[str], as_of_ms: int
    ) -> list[dict[str, FeatureValue]]:
        """Per id, each feature as of ``as_of_ms`` (exact window semantics, see docs/features.md)."""
        if not entity_ids:
            return []
        fields = self._registry.fields_of(entity)
        specs = [self._registry.feature(name) for name in features]
        args: list[str | int] = [as_of_ms, len(specs)]
        for spec in specs:
            index = fields.index(spec.field) + 1 if spec.field else 0
            args.extend((spec.aggregation.value, spec.window_ms, index))
        keys: list[str] = []
        for entity_id in entity_ids:
            keys.append(self.keys.events(entity, entity_id))
            keys.append(self.keys.payloads(entity, entity_id))
        flat = self._read(keys=keys, args=args)
        results: list[dict[str, FeatureValue]] = []
        i = 0
        for _ in entity_ids:
            row: dict[str, FeatureValue] = {}
            for spec in specs:
                raw_value, raw_time = flat[i], flat[i + 1]
                i += 2
                value: float | int | None = None
                if raw_value != b"":
                    value = int(raw_value) if spec.aggregation.integral else float(raw_value)
                row[spec.name] = FeatureValue(value, int(raw_time) if raw_time != b"" else None)
            results.append(row)
        return results

    def clock_ms(self) -> int | None:
        """The highest applied event_time, or None before anything was applied."""
        raw = self._redis.get(self.keys.clock)
        return int(raw) if raw is not None else None

    def checkpoints(self, topic: str) -> dict[int, PartitionCheckpoint]:
        """Stored checkpoints of ``topic``'s partitions."""
        found: dict[int, PartitionCheckpoint] = {}
        for raw_field, raw_value in self._redis.hgetall(self.keys.checkpoints).items():
            ckpt_topic, _, partition = _text(raw_field).rpartition(":")
            if ckpt_topic != topic:
                continue
            offset, _, max_time = _text(raw_value).partition(":")
            found[int(partition)] = PartitionCheckpoint(
                topic, int(partition), int(offset), int(max_time) if max_time else None
            )
        return found

    def counters(self) -> dict[str, int]:
        """Pipeline counters stored with the checkpoints (exact across restarts)."""
        return {_text(k): int(v) for k, v in self._redis.hgetall(self.keys.counters).items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
