"""The offline store interface: history of every valid event, per generation, queried as Arrow.

The stream job writes each valid event it reads (applied on time or late) with the log position it came
from; training sets, the feature log and verification read it back. A generation's tables are created by
versioned migrations (``sinks/migrations``).
Implementations: :class:`sinks.clickhouse_offline.ClickHouseOfflineStore`.

Example:
    >>> store = ClickHouseOfflineStore.from_settings(settings)          # doctest: +SKIP
    >>> store.migrate("g1")                                             # doctest: +SKIP
    ['0001_history']
    >>> store.write_history("g1", [HistoryEvent("transactions", 0, 7, event, now_ms)])  # doctest: +SKIP
    >>> store.query_arrow("SELECT count() AS n FROM {transactions}", generation="g1")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import polars as pl
import pyarrow as pa


class HistoryEvent(NamedTuple):
    """One valid event as history keeps it: where it was read, its fields, and what the stream did with it.

    ``late`` events (beyond the allowed lateness) are kept too, flagged, so offline data is complete where
    the online store skipped them. ``apply_seq`` is the position of the online apply batch that carried the
    event; events of one batch share it.
    """

    topic: str
    partition: int
    offset: int
    event: Mapping[str, Any]
    ingested_at_ms: int
    late: bool = False
    late_reason: str = ""
    apply_seq: int = 0


class UnknownGenerationError(Exception):
    """A generation that has no offline tables."""

    def __init__(self, generation: str, known: Sequence[str]) -> None:
        listed = ", ".join(known) or "none"
        super().__init__(f"unknown generation {generation!r} (offline generations: {listed})")
        self.generation = generation


class OfflineStore(Protocol):
    """What the stream, training sets and verification need from the offline store."""

    def migrate(self, generation: str) -> list[str]:
        """Create or upgrade ``generation``'s tables; returns the migrations applied now (idempotent)."""
        ...

    def generations(self) -> list[str]:
        """Generations that have offline tables, sorted."""
        ...

    def drop_generation(self, generation: str) -> None:
        """Remove ``generation``'s tables and its migration records."""
        ...

    def write_history(self, generation: str, events: Sequence[HistoryEvent]) -> None:
        """Append ``events`` (any topics); re-writing the same (topic, partition, offset) leaves one row."""

    def write_history_frame(
        self, generation: str, topic: str, frame: pl.DataFrame, apply_seq: int, ingested_at_ms: int
    ) -> None:
        """Append ``topic``'s events in ``frame`` (one row per event: its fields, then ``partition``,
        ``offset``, ``late`` and ``late_reason``), as :meth:`write_history` would append them as
        :class:`HistoryEvent` records with that ``apply_seq`` and ``ingested_at_ms``."""
        ...

    def query_arrow(self, sql: str, generation: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        """Run ``sql`` with ``{transactions}``/``{fraud_labels}`` naming ``generation``'s tables."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
