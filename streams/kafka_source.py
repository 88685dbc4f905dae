"""A Bytewax source reading Kafka partitions from positions the online store committed.

Bytewax's own Kafka connector keeps positions in Bytewax recovery snapshots; Highwater instead commits
each partition's next offset atomically with the online writes it covers (see ``sinks.redis_online``),
so the source resumes from exactly there. One Bytewax partition per Kafka partition keeps each
partition's records in log order, which the event-time decisions rely on.

Example:
    >>> ranges = read_ranges(settings, "transactions", start={0: 1200}, until_end=True)  # doctest: +SKIP
    >>> source = KafkaPartitionSource(settings, "transactions", ranges)                  # doctest: +SKIP
    >>> op.input("transactions", flow, source)                                          # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from highwater.settings import Settings
from highwater.topics import partitions_of
from streams.classify_batch import RawBatch

_IDLE_BACKOFF = timedelta(milliseconds=5)
_WATERMARK_FETCH_WAIT_MS = 10


def data_messages(messages: Iterable[Message]) -> Iterator[Message]:
    """The records among ``messages`` from ``Consumer.consume``: partition-end events are skipped, any
    other error is raised as :class:`confluent_kafka.KafkaException`.

    Example:
        >>> for message in data_messages(consumer.consume(500, 1.0)):   # doctest: +SKIP
        ...     handle(message.partition(), message.offset(), message.value())
    """
    for message in messages:
        error = message.error()
        if error is None:
            yield message
        elif error.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(error)


class LogResetError(RuntimeError):
    """A stored position lies beyond the end of its partition: the log was recreated or truncated."""


@dataclass(frozen=True)
class PartitionRange:
    """Where reading one partition starts and, when reading to the end, where it stops."""

    start: int
    end: int | None


def log_end_offsets(settings: Settings, topic: str, wait_s: float = 5.0) -> dict[int, tuple[int, int]]:
    """Each partition's (low, high) offsets, with ``high`` taken from the first fetch response.

    Tansu 0.6 answers ListOffsets(latest) with a wrong offset (always 1), while the high watermark in
    its fetch responses is right; reading it from a fetch works on every broker.
    """
    # An empty partition's fetch is answered only after fetch.wait.max.ms (librdkafka's default 500 ms):
    # only the response's high watermark is wanted here, not records.
    consumer = _consumer(settings, **{"fetch.wait.max.ms": _WATERMARK_FETCH_WAIT_MS})
    try:
        partitions = partitions_of(settings, topic)
        lows = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)[0] for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, lows[p]) for p in partitions])
        ends: dict[int, tuple[int, int]] = {}
        deadline = time.monotonic() + wait_s
        while len(ends) < len(partitions):
            if time.monotonic() > deadline:
                missing = sorted(set(partitions) - set(ends))
                raise TimeoutError(f"{topic}: no fetch response for partitions {missing} within {wait_s} s")
            consumer.poll(0.05)
            for p in partitions:
                high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
                if high >= 0:  # -1001 until the first fetch response for the partition
                    ends[p] = (lows[p], high)
        return ends
    finally:
        consumer.close()


def read_ranges(
    settings: Settings, topic: str, start: dict[int, int], until_end: bool
) -> dict[int, PartitionRange]:
    """Each partition's start offset (stored position or the beginning) and end (high watermark)."""
    ranges: dict[int, PartitionRange] = {}
    for partition, (low, high) in log_end_offsets(settings, topic).items():
        begin = start.get(partition, low)
        if begin > high:
            raise LogResetError(
                f"{topic}:{partition}: the online store's checkpoint is at offset {begin} but the log "
                f"ends at {high}; the log was recreated. Flush the online store (or use a new "
                f"generation) and rebuild it from the log."
            )
        ranges[partition] = PartitionRange(max(begin, low), high if until_end else None)
    return ranges


def read_spans(
    settings: Settings, topic: str, spans: Mapping[int, tuple[int, int]], stall_s: float = 30.0
) -> dict[int, RawBatch]:
    """The records at offsets ``[start, end)`` of each partition in ``spans`` (partition -> (start, end)),
    in log order; partitions without records there are left out.

    Raises :class:`LogResetError` when the log no longer reaches back to a ``start`` or ends before an
    ``end`` (checked for every span before any is read), and TimeoutError when no record arrives for
    ``stall_s`` seconds.

    Example:
        >>> batches = read_spans(settings, "transactions", {0: (1200, 1400)})   # doctest: +SKIP
        >>> batches[0].offsets[0], len(batches[0].offsets)                      # doctest: +SKIP
        (1200, 200)
    """
    held = log_end_offsets(settings, topic)
    for partition, (start, end) in spans.items():
        low, high = held[partition]
        if start < low or end > high:
            raise LogResetError(
                f"{topic}:{partition}: offsets {start}..{end} are needed again "
                f"but the log holds {low}..{high}"
            )
    batches = {}
    for partition, (start, end) in sorted(spans.items()):
        batch = _read_partition(settings, topic, partition, start, end, stall_s)
        if batch.offsets:
            batches[partition] = batch
    return batches


def _read_partition(
    settings: Settings, topic: str, partition: int, start: int, end: int, stall_s: float
) -> RawBatch:
    """The records at offsets ``[start, end)`` of one partition (see :func:`read_spans`)."""
    consumer = _consumer(settings)
    batch = RawBatch(topic, partition, [], [], [])
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        position = start
        deadline = time.monotonic() + stall_s
        while position < end:
            _append_records(consumer.consume(settings.stream.batch_size, 0.1), end, batch)
            # The position, not the last offset: it also moves past offsets that hold no record.
            moved = consumer.position([TopicPartition(topic, partition)])[0].offset
            if moved > position:
                position, deadline = moved, time.monotonic() + stall_s
            elif time.monotonic() > deadline:
                raise TimeoutError(f"{topic}:{partition}: no record after offset {position} for {stall_s} s")
    finally:
        consumer.close()
    return batch


def _consumer(settings: Settings, **overrides: object) -> Consumer:
    """A consumer of the job's group that never commits (positions live in the online store)."""
    config = {"group.id": settings.stream.consumer_group, "enable.auto.commit": False, **overrides}
    return Consumer(settings.kafka_config(**config))


def _append_records(messages: list[Message], end: int | None, batch: RawBatch) -> None:
    """Append the records among ``messages`` below offset ``end`` (None: no end) to ``batch``'s columns."""
    offsets, keys, values = batch.offsets, batch.keys, batch.values
    for message in data_messages(messages):
        offset = message.offset()
        assert offset is not None  # set on every message without an error
        if end is None or offset < end:
            offsets.append(offset)
            keys.append(message.key())
            values.append(message.value())


class _PartitionReader(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, settings: Settings, topic: str, partition: int, span: PartitionRange) -> None:
        self._topic = topic
        self._partition = partition
        self._end = span.end
        self._next = span.start
        self._batch_size = settings.stream.batch_size
        self._awake: datetime | None = None
        self._consumer = _consumer(
            settings,
            **{"enable.partition.eof": False, "fetch.wait.max.ms": settings.stream.poll_timeout_ms},
        )
        start = span.start if span.start >= 0 else OFFSET_BEGINNING
        self._consumer.assign([TopicPartition(topic, partition, start)])

    def next_batch(self) -> list[RawBatch]:
        if self._end is not None and self._next >= self._end:
            raise StopIteration()
        # Never block (Bytewax's contract): one worker polls every partition in turn, so a wait here
        # delays all the others. librdkafka prefetches in the background; take what has arrived and
        # back off a little when a partition is idle.
        messages = self._consumer.consume(self._batch_size, 0)
        self._awake = None if messages else datetime.now(UTC) + _IDLE_BACKOFF
        batch = RawBatch(self._topic, self._partition, [], [], [])
        _append_records(messages, self._end, batch)
        if not batch.offsets:
            return []
        self._next = batch.offsets[-1] + 1
        # One item per poll: the records travel as columns (see streams.classify_batch).
        return [batch]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._next

    def close(self) -> None:
        self._consumer.close()


class KafkaPartitionSource(FixedPartitionedSource[RawBatch, int]):
    """Reads every partition of ``topic`` from the given start offsets (default: the beginning)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        ranges: dict[int, PartitionRange],
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._ranges = ranges

    def list_parts(self) -> list[str]:
        return [str(p) for p in sorted(self._ranges)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _PartitionReader:
        partition = int(for_part)
        span = self._ranges[partition]
        if resume_state is not None:
            span = PartitionRange(resume_state, span.end)
        return _PartitionReader(self._settings, self._topic, partition, span)
