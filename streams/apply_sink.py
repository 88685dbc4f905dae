"""The Bytewax sink that makes a batch of classified records durable, in a crash-safe order.

For each batch: late records go to ``late-events`` and malformed ones to ``dead-letter`` (produced and
flushed first, so none is lost); then every valid record (applied or late) is written to history in the
offline store, tagged with the batch's apply sequence number; then the applied events, each partition's
checkpoint (next offset and event-time high-water mark) and the counters are written to the online store
in one atomic step; then the same offsets are committed to the consumer group, for lag monitoring.

A crash before the online write re-reads the batch on restart: the online state does not double count
(the write is atomic and idempotent by event id) and the counters move once; history keeps one row per
offset (the re-written rows replace the first ones, with the new batch's sequence number); side-topic
records of that batch may be produced twice, keyed ``topic:partition:offset`` so consumers can drop the
repeat. Topics without entities (fraud labels) only go to history.

Example:
    >>> op.output("apply", classified, ApplySink(settings))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, TopicPartition

from highwater.settings import Settings
from schemas.catalog import DEAD_LETTER, LATE_EVENTS
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.offline import HistoryEvent, OfflineStore
from sinks.online import AppliedEvent, EntityUpdate, OnlineStore, PartitionCheckpoint, WriteBatch
from sinks.redis_online import RedisOnlineStore
from streams.event_time import Classified, Fate
from streams.features import REGISTRY, EntityLayout, FeatureRegistry, payload
from streams.producer import EventProducer

log = logging.getLogger(__name__)

# (event id field, event time field, [(entity, key field, payload fields)]) of one source topic;
# None: history only
_TopicLayout = tuple[str, str, list[tuple[str, str, tuple[str, ...]]]] | None
_new_tuple = tuple.__new__


class RoutedRecords:
    """Produces late and malformed records to their topics, with provenance and reason."""

    def __init__(self, settings: Settings) -> None:
        self._producer = EventProducer(settings)

    def route(self, item: Classified) -> None:
        """Queue ``item`` for its side topic, keyed ``topic:partition:offset`` of the source record."""
        raw = item.raw
        key = f"{raw.topic}:{raw.partition}:{raw.offset}".encode()
        if item.fate is Fate.LATE:
            assert item.event is not None and item.watermark_ms is not None
            late = {
                "reason": item.reason,
                "source_topic": raw.topic,
                "source_partition": raw.partition,
                "source_offset": raw.offset,
                "event_time": int(item.event["event_time"]),
                "watermark": item.watermark_ms,
                "lateness_ms": item.lateness_ms,
                "original": raw.value or b"",
            }
            self._producer.produce(LATE_EVENTS, late, key=key)
        else:
            dead = {
                "error_type": item.error_type,
                "error": item.reason,
                "source_topic": raw.topic,
                "source_partition": raw.partition,
                "source_offset": raw.offset,
                "original_key": raw.key,
                "original": raw.value,
            }
            self._producer.produce(DEAD_LETTER, dead, key=key)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is acknowledged; DeliveryError if any was not."""
        self._producer.flush(timeout)


class _ApplyPartition(StatelessSinkPartition[Classified]):
    def __init__(
        self,
        settings: Settings,
        store: RedisOnlineStore,
        offline: OfflineStore | None,
        registry: FeatureRegistry,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._store: OnlineStore = store
        # The generation's layout, not the code's: newer definitions never change an older generation.
        self._held = store.layouts() if settings.online.materialize else {}
        _warn_about_unheld(settings.online.generation, registry, self._held)
        self._sequence = store.next_apply_seq
        self._offline = offline
        self._generation = settings.online.generation
        self._materialize = settings.online.materialize
        self._registry = registry
        self._routed = RoutedRecords(settings) if settings.stream.route_side_topics else None
        self._committer = Consumer(
            settings.kafka_config(**{"group.id": settings.stream.consumer_group, "enable.auto.commit": False})
        )
        self._progress = progress
        self._layouts: dict[str, _TopicLayout] = {}
        # One write in flight: Redis applies batch N while Python classifies batch N+1. Writes stay in
        # order (one worker thread), and each batch's side-topic records are flushed before it is submitted.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-writer")
        self._inflight: Future[None] | None = None

    def write_batch(self, items: list[Classified]) -> None:
        batch = WriteBatch()
        history: list[Classified] = []
        keep_history = self._offline is not None
        last: dict[tuple[str, int], Classified] = {}
        for item in items:
            last[(item.raw.topic, item.raw.partition)] = item
            if item.fate is Fate.APPLIED:
                assert item.event is not None
                topic = item.raw.topic
                layout = self._layouts[topic] if topic in self._layouts else self._layout(topic)
                if layout is None:
                    counter = f"recorded:{topic}"
                else:
                    if self._materialize:
                        batch.events.append(self._applied_event(item, layout))
                    counter = "applied"
                if keep_history:
                    history.append(item)
            else:
                if self._routed is not None:
                    self._routed.route(item)
                if item.fate is Fate.LATE:
                    counter = "late"
                    if keep_history:
                        history.append(item)
                else:
                    counter = f"malformed:{item.error_type}"
            batch.counters[counter] = batch.counters.get(counter, 0) + 1
        if self._routed is not None:
            self._routed.flush()
        batch.checkpoints = [
            PartitionCheckpoint(topic, partition, item.raw.offset + 1, item.max_event_time_ms)
            for (topic, partition), item in last.items()
        ]
        self._wait_inflight()
        self._inflight = self._writer.submit(self._persist, batch, history, len(items))

    def _persist(self, batch: WriteBatch, history: list[Classified], records: int) -> None:
        if self._offline is not None and history:
            # History first: a crash after it re-reads the batch, and re-written offsets replace their rows.
            seq = self._sequence()
            now = int(time.time() * 1000)
            self._offline.write_history(self._generation, [_history_event(i, seq, now) for i in history])
        self._store.write(batch)
        self._committer.commit(
            offsets=[TopicPartition(c.topic, c.partition, c.next_offset) for c in batch.checkpoints],
            asynchronous=True,
        )
        if self._progress is not None:
            self._progress(records)

    def _wait_inflight(self) -> None:
        if self._inflight is not None:
            self._inflight.result()
            self._inflight = None

    def _applied_event(
        self, item: Classified, layout: tuple[str, str, list[tuple[str, str, tuple[str, ...]]]]
    ) -> AppliedEvent:
        event = item.event
        assert event is not None
        id_field, time_field, entities = layout
        # tuple.__new__ skips NamedTuple's generated __new__: this runs once per record and entity.
        return _new_tuple(
            AppliedEvent,
            (
                str(event[id_field]),
                int(event[time_field]),
                tuple(
                    _new_tuple(EntityUpdate, (entity, str(event[key_field]), payload(event, fields)))
                    for entity, key_field, fields in entities
                ),
            ),
        )

    def _layout(self, topic: str) -> _TopicLayout:
        """Which fields of ``topic``'s events make the id, the time and each entity's update."""
        entities = self._registry.entities_of_topic(topic)
        if not entities:
            self._layouts[topic] = None
            return None
        ids = {(e.event_id_field, e.time_field) for e in entities}
        if len(ids) != 1:
            raise ValueError(f"{topic}: its entities disagree on the event id and time fields: {sorted(ids)}")
        id_field, time_field = ids.pop()
        layout = (
            id_field,
            time_field,
            [(e.name, e.key_field, self._held[e.name].fields) for e in entities if e.name in self._held],
        )
        self._layouts[topic] = layout
        return layout

    def close(self) -> None:
        if self._routed is not None:
            self._routed.flush()
        self._wait_inflight()
        self._writer.shutdown()
        self._committer.close()
        if self._offline is not None:
            self._offline.close()


def _warn_about_unheld(generation: str, registry: FeatureRegistry, held: dict[str, EntityLayout]) -> None:
    """Log the features this code defines that the generation it writes cannot hold (see EntityLayout)."""
    if not held:
        return
    unheld = [f"{name} ({reason})" for name, reason in registry.unheld(held).items()]
    if unheld:
        log.warning(
            "generation %s keeps the layout it was created with, so it does not hold %s; replay into a new "
            "generation and promote it to serve them (highwater replay --generation NEW)",
            generation,
            "; ".join(unheld),
        )


def _history_event(item: Classified, apply_seq: int, ingested_at_ms: int) -> HistoryEvent:
    raw = item.raw
    assert item.event is not None
    late = item.fate is Fate.LATE
    return HistoryEvent(
        raw.topic,
        raw.partition,
        raw.offset,
        item.event,
        ingested_at_ms,
        late,
        item.reason if late else "",
        apply_seq,
    )


class ApplySink(DynamicSink[Classified]):
    """Applies classified records to the online store and routes the rest (see module docstring)."""

    def __init__(
        self,
        settings: Settings,
        registry: FeatureRegistry = REGISTRY,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._progress = progress

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ApplyPartition:
        store = RedisOnlineStore.from_settings(self._settings, self._registry)
        offline = (
            ClickHouseOfflineStore.from_settings(self._settings) if self._settings.offline.history else None
        )
        return _ApplyPartition(self._settings, store, offline, self._registry, self._progress)
