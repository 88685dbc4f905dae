"""The online store interface: what the stream writes and the server reads.

An online store keeps, per entity id, the applied events inside the feature windows, and answers "every
requested feature of these ids as of time T" exactly, with the semantics of ``docs/features.md``.
Implementations: :class:`sinks.redis_online.RedisOnlineStore`.

Example:
    >>> store = RedisOnlineStore.from_settings(settings)                  # doctest: +SKIP
    >>> store.read("card", ["c1"], ["card_txn_count_1h"], as_of_ms=1_700_000_000_000).rows  # doctest: +SKIP
    [{'card_txn_count_1h': FeatureValue(value=3, latest_event_time_ms=1699999990000)}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    import polars as pl

    from streams.features import EntityLayout, FeatureRegistry


class FeatureValue(NamedTuple):
    """A feature's value as of a time (None is null, distinct from 0) and its newest contributing event."""

    value: float | int | None
    latest_event_time_ms: int | None


class EntityUpdate(NamedTuple):
    """What one event contributes to one entity id: the fields that entity's features read, as text."""

    entity: str
    entity_id: str
    fields: tuple[str, ...]


class AppliedEvent(NamedTuple):
    """One on-time event as the online store needs it: its id (the idempotency key), time and updates.

    An event is applied as a whole or not at all: a second event with an id already applied is a
    duplicate for every entity it names, whatever its content.
    """

    event_id: str
    event_time_ms: int
    updates: tuple[EntityUpdate, ...]


class PendingEvent(NamedTuple):
    """An event a read counts as applied, unless its id was applied already: e.g. a transaction being scored.

    A read with a pending event answers what it would answer once the event is applied (same windows,
    same order of equal times), so scoring a transaction before or after the stream job applied it gives
    the same feature values. Build it with :meth:`from_record`.

    ``entity_ids``: the id the event belongs to per entity (``{"card": "c1", "merchant": "m1"}``);
    ``fields``: the event's fields as the store keeps them (:func:`streams.features.payload`), by name,
    so the store can lay them out in the served generation's own layout.

    Example:
        >>> from streams.features import REGISTRY
        >>> txn = {"transaction_id": "t9", "card_id": "c1", "merchant_id": "m1", "amount": 2.5,
        ...        "event_time": 1_700_000_000_000}
        >>> pending = PendingEvent.from_record(txn, REGISTRY)
        >>> pending.event_id, pending.entity_ids, pending.fields["amount"]
        ('t9', {'card': 'c1', 'merchant': 'm1'}, '2.5')
    """

    event_id: str
    event_time_ms: int
    entity_ids: Mapping[str, str]
    fields: Mapping[str, str]

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], registry: FeatureRegistry, topic: str = "transactions"
    ) -> PendingEvent:
        """The pending event of ``record``, an event of ``topic`` (ids, time and key fields as the stream
        job reads them); KeyError when a field the topic's entities need is missing."""
        from streams.features import payload

        entities = registry.entities_of_topic(topic)
        if not entities:
            raise ValueError(f"no entity is computed from topic {topic!r}")
        first = entities[0]
        names = [name for name, value in record.items() if value is not None]
        return cls(
            str(record[first.event_id_field]),
            int(record[first.time_field]),
            {e.name: str(record[e.key_field]) for e in entities},
            dict(zip(names, payload(record, names), strict=True)),
        )


class ReadRequest(NamedTuple):
    """One read of :meth:`OnlineStore.read_many`: the arguments of :meth:`OnlineStore.read`.

    Example:
        >>> ReadRequest("card", ["c1"], ["card_txn_count_1h"], as_of_ms=1_700_000_000_000).entity
        'card'
    """

    entity: str
    entity_ids: Sequence[str]
    features: Sequence[str]
    as_of_ms: int | None = None
    pending: PendingEvent | None = None


class OnlineRead(NamedTuple):
    """The answer to a read: the ``as_of`` used, the event-time clock, a row per id, the generation read."""

    as_of_ms: int
    clock_ms: int | None
    rows: list[dict[str, FeatureValue]]
    generation: str = ""


class NoClockError(Exception):
    """A read without ``as_of`` before any event was applied: there is no clock to default to."""


class AsOfTooOldError(Exception):
    """``as_of`` is older than the clock minus the retention: the store no longer holds what it needs."""

    def __init__(self, as_of_ms: int, clock_ms: int, retention_ms: int) -> None:
        super().__init__(f"as_of {as_of_ms} is older than clock {clock_ms} minus retention {retention_ms} ms")
        self.as_of_ms = as_of_ms
        self.clock_ms = clock_ms
        self.retention_ms = retention_ms


class FeatureNotHeldError(Exception):
    """The generation read was built without what a requested feature needs (added after it was created).

    ``reason`` says what is missing (a field its events do not carry online, or a window wider than it
    keeps). Serving the feature needs a backfill: a replay into a new generation, then its promotion.
    """

    def __init__(self, feature: str, generation: str, reason: str) -> None:
        super().__init__(f"feature {feature!r} is not held by generation {generation!r}: {reason}")
        self.feature = feature
        self.generation = generation
        self.reason = reason


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


@dataclass(frozen=True)
class HistorySpan:
    """Records ``[start_offset, end_offset)`` of one partition, and the partition's high-water mark
    before them: enough to read them again and decide the same fates (late or not)."""

    topic: str
    partition: int
    start_offset: int
    end_offset: int
    clock_before_ms: int | None


@dataclass(frozen=True)
class PendingHistory:
    """An applied batch whose history is not known to be written yet: its apply sequence number and
    the records it covered. Recorded atomically with the batch's online write and removed once its
    history is written, so a restart can write the history of exactly these records, with this number.
    """

    apply_seq: int
    spans: tuple[HistorySpan, ...]


class EventColumns(NamedTuple):
    """Applied events as columns: what a list of :class:`AppliedEvent` says, one list per attribute.

    ``updates``: per entity, ``(entity, each event's entity id, the entity's fields as columns)``: the
    k-th column holds every event's k-th field. The stream job builds these straight from its decoded
    columns, which spares Python objects per event and entity. A column is a sequence or a polars
    Series (the stream job's, which a bulk write keeps in polars).

    Example:
        >>> columns = EventColumns(["t1", "t2"], [1000, 2000], [("card", ["c1", "c1"], [["5.0", "7.5"]])])
        >>> store.write(WriteBatch(columns=[columns]))  # doctest: +SKIP
    """

    event_ids: Sequence[str] | pl.Series
    event_times_ms: Sequence[int] | pl.Series
    updates: Sequence[tuple[str, Sequence[str] | pl.Series, Sequence[Sequence[str] | pl.Series]]]


@dataclass
class WriteBatch:
    """Everything one flush makes durable together: ``events``, then ``columns``, in that order;
    ``history``: the records whose history the batch carries, recorded as pending (with the batch's
    apply sequence number) until that history is confirmed written."""

    events: list[AppliedEvent] = field(default_factory=list)
    checkpoints: list[PartitionCheckpoint] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    columns: list[EventColumns] = field(default_factory=list)
    history: tuple[HistorySpan, ...] | None = None


class OnlineStore(Protocol):
    """What the stream job writes to and the feature server reads from."""

    retention_ms: int

    def write(self, batch: WriteBatch) -> int | None:
        """Apply events idempotently (by event id) and store checkpoints and counters atomically.

        With ``batch.history`` spans, the batch also takes the next apply sequence number (1, 2, ...;
        never reused in a generation), recorded with the spans as pending history; it is returned.
        """

    def read(
        self,
        entity: str,
        entity_ids: Sequence[str],
        features: Sequence[str],
        as_of_ms: int | None = None,
        pending: PendingEvent | None = None,
    ) -> OnlineRead:
        """Per id (in request order), each feature's value as of ``as_of_ms`` (default: the clock).

        Reads the clock in the same step, so a caller needs one round trip. Raises
        :class:`NoClockError` when ``as_of_ms`` is None and nothing was applied yet, and
        :class:`AsOfTooOldError` when ``as_of_ms`` is older than the clock minus ``retention_ms``.
        ``pending``: an event counted as applied for the id it belongs to (see :class:`PendingEvent`),
        unless its id was applied already.
        """

    def read_many(self, requests: Sequence[ReadRequest]) -> list[OnlineRead | Exception]:
        """Several reads in one round trip: per request its answer, or the error :meth:`read` would have
        raised for it alone (:class:`NoClockError`, :class:`AsOfTooOldError`,
        :class:`FeatureNotHeldError`). A failure to reach the store raises."""

    def served_layouts(self) -> dict[str, EntityLayout]:
        """The layouts of the generation reads are served from now (records nothing): which features
        a read can serve (``FeatureRegistry.unheld``)."""

    def layouts(self) -> dict[str, EntityLayout]:
        """The layout of each entity the generation holds, fixed by its first writer (recorded then)."""

    def clock_ms(self) -> int | None:
        """The pipeline's event-time clock: the highest applied event_time; None before any event."""

    def checkpoints(self, topic: str) -> dict[int, PartitionCheckpoint]:
        """The stored checkpoint of each partition of ``topic`` that has one."""

    def counters(self) -> dict[str, int]:
        """Pipeline counters: applied, late, malformed (by kind), duplicates."""

    def pending_history(self) -> list[PendingHistory]:
        """Batches applied online whose history is not confirmed written, in apply order."""

    def confirm_history(self, apply_seq: int) -> None:
        """Forget the pending history of batch ``apply_seq``: its history is written."""
