"""A Bytewax source reading Kafka partitions from positions the online store committed.

Bytewax's own Kafka connector keeps positions in Bytewax recovery snapshots; Highwater instead commits
each partition's next offset atomically with the online writes it covers (see ``sinks.redis_online``),
so the source resumes from exactly there. One Bytewax partition per Kafka partition keeps each
partition's records in log order, which the event-time decisions rely on.

Example:
    >>> source = KafkaPartitionSource(settings, "transactions", start={0: 1200}, until_end=True)  # doctest: +SKIP
    >>> op.input("transactions", flow, source)                                                    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from highwater.settings import Settings
from highwater.topics import partitions_of
from streams.event_time import RawRecord


class LogResetError(RuntimeError):
    """A stored position lies beyond the end of its partition: the log was recreated or truncated."""


@dataclass(frozen=True)
class PartitionRange:
    """Where reading one partition starts and, when reading to the end, where it stops."""

    start: int
    end: int | None


def read_ranges(
    settings: Settings, topic: str, start: dict[int, int], until_end: bool
) -> dict[int, PartitionRange]:
    """Each partition's start offset (stored position or the beginning) and end (high watermark)."""
    consumer = Consumer(settings.kafka_config(**{"group.id": settings.stream.consumer_group}))
    try:
        ranges: dict[int, PartitionRange] = {}
        for partition in partitions_of(settings, topic):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10.0)
            begin = start.get(partition, low)
            if begin > high:
                raise LogResetError(
                    f"{topic}:{partition}: the online store's checkpoint is at offset {begin} but the log "
                    f"ends at {high}; the log was recreated. Flush the online store (or use a new "
                    f"generation) and rebuild it from the log."
                )
            ranges[partition] = PartitionRange(max(begin, low), high if until_end else None)
        return ranges
    finally:
        consumer.close()


class _PartitionReader(StatefulSourcePartition[RawRecord, int]):
    def __init__(self, settings: Settings, topic: str, partition: int, span: PartitionRange) -> None:
        self._topic = topic
        self._partition = partition
        self._end = span.end
        self._next = span.start
        self._batch_size = settings.stream.batch_size
        self._timeout = settings.stream.poll_timeout_ms / 1000
        self._consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": settings.stream.consumer_group,
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                    "fetch.wait.max.ms": settings.stream.poll_timeout_ms,
                }
            )
        )
        start = span.start if span.start >= 0 else OFFSET_BEGINNING
        self._consumer.assign([TopicPartition(topic, partition, start)])

    def next_batch(self) -> list[RawRecord]:
        if self._end is not None and self._next >= self._end:
            raise StopIteration()
        messages = self._consumer.consume(self._batch_size, self._timeout)
        batch: list[RawRecord] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            offset = message.offset()
            if self._end is not None and offset >= self._end:
                continue
            batch.append(RawRecord(self._topic, self._partition, offset, message.key(), message.value()))
            self._next = offset + 1
        return batch

    def snapshot(self) -> int:
        return self._next

    def close(self) -> None:
        self._consumer.close()


class KafkaPartitionSource(FixedPartitionedSource[RawRecord, int]):
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
