"""The Bytewax sink that makes a batch of classified records durable, in a crash-safe order.

For each batch: late records go to ``late-events`` and malformed ones to ``dead-letter`` (produced and
flushed first, so none is lost); then the applied events, each partition's checkpoint (next offset and
event-time high-water mark), the counters and a *pending history* entry (the batch's apply sequence
number and the offset span it covers in each partition) are written to the online store in one atomic
step; then the same offsets are committed to the consumer group, for lag monitoring. Every valid record
(applied or late) is written to history in the offline store, tagged with the batch's apply sequence
number, by a writer of its own that may trail the online writes by a few batches; once a batch's history
is written (and its online write is done), its pending entry is removed.

History is kept off the path to the online store because a ClickHouse insert takes tens of milliseconds
(more when the machine is busy) and a served feature should not wait for it. A crash therefore can leave
batches applied online whose history was never written: on restart, :mod:`streams.history_recovery`
reads their pending entries, re-reads exactly those records, decides the same fates from the recorded
high-water marks and writes their history with the batch's original sequence number, before the job
resumes from the online checkpoints. A crash before the online write re-reads the batch on restart: the
online state does not double count (the write is atomic and idempotent by event id) and the counters
move once; history keeps one row per offset (re-written rows replace the first ones); side-topic records
of that batch may be produced twice, keyed ``topic:partition:offset`` so consumers can drop the repeat.
Topics without entities (fraud labels) only go to history.

Example:
    >>> op.output("apply", classified, ApplySink(settings))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, TopicPartition

from highwater.settings import Settings
from schemas.catalog import DEAD_LETTER, LATE_EVENTS
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.offline import OfflineStore
from sinks.online import (
    EventColumns,
    HistorySpan,
    PartitionCheckpoint,
    WriteBatch,
)
from sinks.redis_bulk import BulkPlan, apply_bulk, finish_merge, plan_bulk
from sinks.redis_online import RedisOnlineStore
from streams.classify_batch import LATE, LATE_REASON, OFFSET, ClassifiedBatch
from streams.event_time import Classified, Fate
from streams.features import REGISTRY, EntityLayout, FeatureRegistry, as_text
from streams.producer import EventProducer

log = logging.getLogger(__name__)

# (event id field, event time field, [(entity, key field, payload fields)]) of one source topic;
# None: history only
_Layout = tuple[str, str, list[tuple[str, str, tuple[str, ...]]]]
_TopicLayout = _Layout | None
# Batches submitted and not yet applied online: bounds the memory a slow store lets queue up.
_MAX_IN_FLIGHT = 2
# Batches whose history is still being written: how far history may trail the online store before the
# job waits for it (the frames of each are held in memory, and a crash makes the restart re-read them).
_MAX_HISTORY_LAG = 8
# A replay's first chunk holds this share (1/n) of stream.apply_chunk_records.
_FIRST_CHUNK_SHARE = 4


class RoutedRecords:
    """Produces late and malformed records to their topics, with provenance and reason.

    Thread-safe: the job routes on its own thread while the online writer flushes, and the producer's
    delivery counts, updated by callbacks on whichever thread serves them, must not lose a failure.
    """

    def __init__(self, settings: Settings) -> None:
        self._producer = EventProducer(settings)
        self._lock = threading.Lock()

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
            with self._lock:
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
            with self._lock:
                self._producer.produce(DEAD_LETTER, dead, key=key)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is acknowledged; DeliveryError if any was not."""
        with self._lock:
            self._producer.flush(timeout)


class _ApplyPartition(StatelessSinkPartition[ClassifiedBatch]):
    def __init__(
        self,
        settings: Settings,
        store: RedisOnlineStore,
        offline: OfflineStore | None,
        registry: FeatureRegistry,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._store = store
        # The generation's layout, not the code's: newer definitions never change an older generation.
        self._held = store.layouts() if settings.online.materialize else {}
        _warn_about_unheld(settings.online.generation, registry, self._held)
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
        # Three stages, each in order: Python classifies batch N+1 while Redis applies N, and ClickHouse
        # writes the history of the last few applied batches. Once an online write fails no later batch
        # is applied; a failed history write stops the job at its next batch. The online writer flushes
        # the side-topic records routed so far before each write.
        self._history_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-writer")
        self._online_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-writer")
        self._online: deque[Future[int | None]] = deque()
        self._history: deque[Future[None]] = deque()
        self._failed = False
        self._stopped_by: BaseException | None = None
        # Replays gather batches into chunks of this many records, written in bulk (0: each batch as it
        # comes, the live job's freshness). Bulk writes, like staged ones, need one writer per generation.
        self._chunk_records = settings.stream.apply_chunk_records
        # The first chunk is a quarter of the others: the writers (Redis, ClickHouse) start on the log's
        # first records instead of idling while a whole chunk is read.
        self._next_chunk_records = max(1, self._chunk_records // _FIRST_CHUNK_SHARE)
        self._gathered: list[ClassifiedBatch] = []
        self._gathered_records = 0
        # A chunk is planned (sinks.redis_bulk.plan_bulk: which events it applies, their commands) on a
        # thread of its own, mostly in polars, which frees the GIL: chunk k+1 is planned while the online
        # writer sends chunk k.
        self._planner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk-planner")
        self._last_plan: BulkPlan | None = None
        if self._materialize:
            finish_merge(store)  # a bulk write stopped after its commit left ids to record

    def write_batch(self, items: list[ClassifiedBatch]) -> None:
        if self._chunk_records:  # a replay: gather a chunk, then write it in bulk
            self._gathered += items
            self._gathered_records += sum(item.records for item in items)
            if self._gathered_records < self._next_chunk_records:
                return
            items, self._gathered, self._gathered_records = self._gathered, [], 0
            self._next_chunk_records = self._chunk_records
        self._write(items)

    def _write(self, items: list[ClassifiedBatch]) -> None:
        """Apply ``items`` online as one batch and queue their history (see the module docstring)."""
        batch = WriteBatch()
        history: list[tuple[str, pl.DataFrame]] = []
        keep_history = self._offline is not None
        first: dict[tuple[str, int], ClassifiedBatch] = {}
        last: dict[tuple[str, int], ClassifiedBatch] = {}
        records = 0
        for item in items:
            topic = item.topic
            first.setdefault((topic, item.partition), item)
            last[(topic, item.partition)] = item
            records += item.records
            if self._routed is not None:
                for routed in item.routed:
                    self._routed.route(routed)
            layout = self._layouts[topic] if topic in self._layouts else self._layout(topic)
            counters = dict(item.counters)
            if layout is None:
                applied = counters.pop("applied", 0)
                if applied:
                    counters[f"recorded:{topic}"] = applied
            elif self._materialize:
                batch.columns.append(_event_columns(item.applied, layout))
            if keep_history and item.events.height:
                history.append((topic, history_frame(item)))
            for name, n in counters.items():
                batch.counters[name] = batch.counters.get(name, 0) + n
        batch.checkpoints = [
            PartitionCheckpoint(topic, partition, item.next_offset, item.max_event_time_ms)
            for (topic, partition), item in last.items()
        ]
        if history:
            spans = (
                HistorySpan(t, p, first[(t, p)].first_offset, item.next_offset, first[(t, p)].clock_before_ms)
                for (t, p), item in last.items()
            )
            batch.history = tuple(spans)
        self._settle(self._online, keep=_MAX_IN_FLIGHT - 1)
        self._settle(self._history, keep=_MAX_HISTORY_LAG - 1)
        if self._chunk_records:
            planned = self._planner.submit(self._plan, batch, list(self._online))
            write = partial(self._apply_planned, planned)
        else:  # encoded here, so this thread's next batch overlaps the round trip, not the encoding
            write = partial(self._store.write_prepared, self._store.prepare(batch))
        online_write = self._online_writer.submit(self._apply_online, write, batch.checkpoints, records)
        self._online.append(online_write)
        if batch.history is not None:
            self._history.append(self._history_writer.submit(self._write_history, history, online_write))

    def _plan(self, batch: WriteBatch, earlier: list[Future[int | None]]) -> BulkPlan:
        # plan_bulk's condition: of the writes before this chunk's, only the last may be under way.
        wait(earlier[:-1])
        plan = plan_bulk(self._store, batch, self._last_plan)
        self._last_plan = plan
        return plan

    def _apply_planned(self, planned: Future[BulkPlan]) -> int | None:
        return apply_bulk(self._store, planned.result())

    def _write_history(
        self, history: list[tuple[str, pl.DataFrame]], online_write: Future[int | None]
    ) -> None:
        # The online write gives the batch its apply sequence number and records its history as pending.
        seq = online_write.result()
        assert self._offline is not None and seq is not None
        write_history(self._offline, self._generation, history, seq)
        self._store.confirm_history(seq)

    def _apply_online(
        self, write: Callable[[], int | None], checkpoints: list[PartitionCheckpoint], records: int
    ) -> int | None:
        if self._failed:
            raise RuntimeError("an earlier batch failed to be written; not applying later ones")
        try:
            if self._routed is not None:
                self._routed.flush()  # the batch's late and malformed records first: none is lost
            seq = write()
        except BaseException:
            self._failed = True
            raise
        self._committer.commit(
            offsets=[TopicPartition(c.topic, c.partition, c.next_offset) for c in checkpoints],
            asynchronous=True,
        )
        if self._progress is not None:
            self._progress(records)
        return seq

    def _settle(self, queue: deque[Future[int | None]] | deque[Future[None]], keep: int = 0) -> None:
        """Take finished writes off ``queue``, waiting until at most ``keep`` are unfinished; a failed
        write's error is logged (Bytewax does not show a sink's exception) and raised."""
        while queue and (len(queue) > keep or queue[0].done()):
            error = queue.popleft().exception()
            if error is not None:
                self._stopped_by = error
                log.error("stopping: a write failed: %s", error, exc_info=error)
                raise error

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
        try:
            if self._stopped_by is None:
                if self._gathered:  # the last chunk
                    self._write(self._gathered)
                    self._gathered = []
                self._settle(self._online)
                self._settle(self._history)
            else:  # the error went up already; raising again here would abort the process
                wait(self._online)
                wait(self._history)
        finally:
            self._history_writer.shutdown()
            self._online_writer.shutdown()
            self._planner.shutdown()
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


def _event_columns(applied: pl.DataFrame, layout: _Layout) -> EventColumns:
    """The applied events of a batch as the online store takes them (ids, times, each entity's fields),
    as polars columns: a bulk write keeps them in polars, a script write lists them."""
    id_field, time_field, entities = layout
    updates = []
    for entity, key_field, fields in entities:
        columns = [_field_texts(applied.get_column(name)) for name in fields]
        updates.append((entity, _texts(applied.get_column(key_field)), columns))
    return EventColumns(_texts(applied.get_column(id_field)), applied.get_column(time_field), updates)


def _field_texts(column: pl.Series) -> pl.Series:
    """A field's values as :func:`~streams.features.as_text` writes them (text columns as they are)."""
    if column.dtype == pl.String:
        return column.fill_null("None")  # as_text(None) is "None"
    if column.dtype == pl.Float64:
        # polars prints a double as repr() does wherever repr() uses positional notation
        # (1e-4 <= |x| < 1e16, and zeros); the few others, and nulls, go through as_text.
        size = column.abs()
        positional = (((size >= 1e-4) & (size < 1e16)) | (column == 0)).fill_null(False)
        texts = column.cast(pl.String)
        others = (~positional).arg_true()
        if others.is_empty():
            return texts
        return texts.scatter(others, [as_text(column[i]) for i in others.to_list()])
    if column.dtype.is_integer():
        return column.cast(pl.String).fill_null("None")
    return pl.Series(column.name, list(map(as_text, column.to_list())), pl.String)


def _texts(column: pl.Series) -> pl.Series:
    """Ids and keys as text, as ``str`` writes them."""
    if column.dtype == pl.String or column.dtype.is_integer():
        return column.cast(pl.String)
    return pl.Series(column.name, list(map(str, column.to_list())), pl.String)


def write_history(
    offline: OfflineStore, generation: str, frames: Sequence[tuple[str, pl.DataFrame]], apply_seq: int
) -> None:
    """Insert one batch's history ``(topic, frame)`` pairs, one insert per topic, tagged ``apply_seq``."""
    now = int(time.time() * 1000)
    by_topic: dict[str, list[pl.DataFrame]] = {}
    for topic, frame in frames:
        by_topic.setdefault(topic, []).append(frame)
    for topic, parts in by_topic.items():
        frame = parts[0] if len(parts) == 1 else pl.concat(parts)
        offline.write_history_frame(generation, topic, frame, apply_seq, now)


def history_frame(item: ClassifiedBatch) -> pl.DataFrame:
    """The batch's valid events in the layout of :meth:`OfflineStore.write_history_frame`."""
    return item.events.rename({OFFSET: "offset", LATE: "late", LATE_REASON: "late_reason"}).with_columns(
        pl.lit(item.partition, pl.Int64()).alias("partition")
    )


class ApplySink(DynamicSink[ClassifiedBatch]):
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
        settings = self._settings
        if worker_count > 1:
            # Staged and bulk writes of large batches assume one writer per generation (see
            # RedisOnlineStore.write_prepared and sinks.redis_bulk); several workers apply each batch
            # in one script.
            settings = settings.model_copy(deep=True)
            settings.online.script_max_entries = sys.maxsize
            settings.stream.apply_chunk_records = 0
        store = RedisOnlineStore.from_settings(settings, self._registry)
        offline = ClickHouseOfflineStore.from_settings(settings) if settings.offline.history else None
        return _ApplyPartition(settings, store, offline, self._registry, self._progress)
