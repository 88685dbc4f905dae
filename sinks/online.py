"""The online store interface: what the stream writes and the server reads.

An online store keeps, per entity id, the applied events inside the feature windows, and answers "every
requested feature of these ids as of time T" exactly, with the semantics of ``docs/features.md``.
Implementations: :class:`sinks.redis_online.RedisOnlineStore`.

Example:
    >>> store = RedisOnlineStore.from_settings(settings)                  # doctest: +SKIP
    >>> store.read("card", ["c1"], ["card_txn_count_1h"], as_of_ms=1_700_000_000_000)  # doctest: +SKIP
    [{'card_txn_count_1h': FeatureValue(value=3, latest_event_time_ms=1699999990000)}]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class FeatureValue:
    """A feature's value as of a time (None is null, distinct from 0) and its newest contributing event."""

    value: float | int | None
    latest_event_time_ms: int | None


@dataclass(frozen=True)
class AppliedEvent:
    """One on-time event as the online store needs it: its id, time and the fields features read."""

    entity: str
    entity_id: str
    event_id: str
    event_time_ms: int
    fields: tuple[str, ...]


@dataclass(frozen=True)
class PartitionCheckpoint:
    """Where a source partition's processing stands: the next offset and its event-time high-water mark.

    Stored atomically with the writes it covers, so a restart resumes exactly after what was applied and
    rebuilds the same watermark.
    """

    topic: str
    partition: int
    next_offset: int
    max_event_time_ms: int | None


@dataclass
class WriteBatch:
    """Everything one flush makes durable together."""

    events: list[AppliedEvent] = field(default_factory=list)
    checkpoints: list[PartitionCheckpoint] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


class OnlineStore(Protocol):
    """What the stream job writes to and the feature server reads from."""

    retention_ms: int

    def write(self, batch: WriteBatch) -> None:
        """Apply events idempotently (by event id) and store checkpoints and counters atomically."""

    def read(
        self, entity: str, entity_ids: Sequence[str], features: Sequence[str], as_of_ms: int
    ) -> list[dict[str, FeatureValue]]:
        """Per id (in request order), each feature's value as of ``as_of_ms``."""

    def clock_ms(self) -> int | None:
        """The pipeline's event-time clock: the highest applied event_time; None before any event."""

    def checkpoints(self, topic: str) -> dict[int, PartitionCheckpoint]:
        """The stored checkpoint of each partition of ``topic`` that has one."""

    def counters(self) -> dict[str, int]:
        """Pipeline counters: applied, late, malformed (by kind), duplicates."""
