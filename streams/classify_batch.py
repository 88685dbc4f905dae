"""The fate of a whole batch of one partition's records at once, as columns.

:class:`streams.event_time.Classifier` decides record by record; this module makes the same decisions
for a batch read from one partition (a :class:`RawBatch`) and keeps the valid events as a polars frame,
so the stream job touches each record in Python only where it must:

* decoding is :class:`schemas.batch_decode.BatchDecoder` (one Avro block per batch, same results as
  decoding one by one);
* business rules run one by one only on the rows a vectorized check cannot clear
  (:func:`schemas.validate.rows_to_check`);
* lateness is a running maximum over the event times in numpy (the clock only moves forward, and a
  late event is always below the clock, so "the clock after the applied events" is "the running maximum
  of the valid ones"); only late and malformed rows are visited in Python;
* late and malformed records, rare, become :class:`~streams.event_time.Classified` records for their
  side topics, with the exact reasons the record-by-record classifier gives.

``tests/test_classify_batch.py`` checks batch decisions against the record-by-record classifier.

Example:
    >>> classifier = BatchClassifier(serde, LatenessPolicy(5_000, 60_000))                 # doctest: +SKIP
    >>> raw = RawBatch("transactions", 0, offsets, keys, values)                           # doctest: +SKIP
    >>> out = classifier.classify(PartitionClock(None), raw)                               # doctest: +SKIP
    >>> out.events.filter(~pl.col(LATE)).height, out.counters                            # doctest: +SKIP
    (1998, {'applied': 1998, 'late': 1, 'malformed:undecodable': 1})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import polars as pl

from schemas.batch_decode import ROW, BatchDecoder
from schemas.serde import AvroSerde
from schemas.validate import business_rule_errors, rows_to_check
from streams.event_time import (
    Classified,
    LatenessPolicy,
    PartitionClock,
    RawRecord,
    late_record,
    malformed_record,
)

OFFSET = "_offset"
"""Column of :attr:`ClassifiedBatch.events`: the record's offset in its partition."""
LATE = "_late"
"""Column of :attr:`ClassifiedBatch.events`: whether the event is late (history only, not applied)."""
LATE_REASON = "_late_reason"
"""Column of :attr:`ClassifiedBatch.events`: why a late event is late ("" for applied ones)."""


class RawBatch(NamedTuple):
    """Consecutive records of one partition, exactly as read, as parallel lists."""

    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]

    def record(self, position: int) -> RawRecord:
        """The record at ``position`` of the batch."""
        return RawRecord(
            self.topic, self.partition, self.offsets[position], self.keys[position], self.values[position]
        )


@dataclass
class ClassifiedBatch:
    """A batch with its records' fates.

    ``events``: the valid records (applied and late), in log order: the event's fields, then
    :data:`OFFSET`, :data:`LATE` and :data:`LATE_REASON`. ``routed``: the late and malformed records, in
    log order, for the side topics. ``max_event_time_ms``: the partition's high-water mark after the
    batch; ``next_offset``: where reading the partition resumes after it; ``records``: how many records
    the batch had; ``first_offset`` and ``clock_before_ms``: the offset of its first record and the
    high-water mark before it (what re-reading the same records and deciding the same fates takes).
    """

    topic: str
    partition: int
    records: int
    events: pl.DataFrame
    routed: list[Classified]
    next_offset: int
    max_event_time_ms: int | None
    first_offset: int
    clock_before_ms: int | None
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def applied(self) -> pl.DataFrame:
        """The events applied online (the valid ones that are not late)."""
        return self.events.filter(~pl.col(LATE))


class BatchClassifier:
    """Decides the fate of each record of a batch, in log order, as :class:`Classifier` would."""

    def __init__(self, serde: AvroSerde, policy: LatenessPolicy, time_field: str = "event_time") -> None:
        self._decoder = BatchDecoder(serde)
        self._policy = policy
        self._time_field = time_field

    def classify(self, clock: PartitionClock, raw: RawBatch) -> ClassifiedBatch:
        """The fates of ``raw``'s records; advances ``clock`` past the batch's applied events."""
        if not raw.offsets:
            raise ValueError(f"{raw.topic}:{raw.partition}: an empty batch has no fates to decide")
        clock_before = clock.max_event_time_ms
        decoded = self._decoder.decode(raw.topic, raw.values)
        frame = decoded.frame
        malformed = {row: (error.kind, str(error)) for row, error in decoded.errors.items()}
        invalid = []
        for position in rows_to_check(raw.topic, frame):
            event = frame.row(position, named=True)
            row = event.pop(ROW)
            errors = business_rule_errors(raw.topic, event)
            if errors:
                malformed[row] = ("validation_failed", "; ".join(errors))
                invalid.append(position)
        if invalid:
            frame = frame.with_row_index("_position").filter(~pl.col("_position").is_in(invalid))
            frame = frame.drop("_position")

        rows = frame.get_column(ROW).to_numpy().astype(np.int64)
        times = frame.get_column(self._time_field).to_numpy().astype(np.int64)
        # The clock before each valid row: the running maximum of the times before it. Late events count
        # in it too, harmlessly: a late event is below the clock, so it never moves it.
        clocks = _clocks_before(clock.max_event_time_ms, times)
        policy = self._policy
        bounds = clocks - (policy.max_out_of_orderness_ms + policy.allowed_lateness_ms)
        late_at = np.flatnonzero((clocks != _NO_CLOCK) & (times < bounds))
        reasons: list[str] = [""] * len(rows) if late_at.size else []
        routed: list[tuple[int, Classified]] = []
        for position in late_at.tolist():
            event = frame.row(position, named=True)
            row = event.pop(ROW)
            before = PartitionClock(int(clocks[position]))
            event_time = int(times[position])
            bound = int(bounds[position])
            record = late_record(raw.record(row), event, event_time, bound - event_time, before, policy)
            routed.append((row, record))
            reasons[position] = record.reason
        start = _NO_CLOCK if clock.max_event_time_ms is None else clock.max_event_time_ms
        end = max(start, int(times.max())) if times.size else start  # the clock after the batch
        if malformed:
            # A malformed record carries the clock after the valid rows before it.
            after = np.append(clocks, end)
            for row in sorted(malformed):
                at = int(after[np.searchsorted(rows, row)])
                kind, reason = malformed[row]
                before = PartitionClock(None if at == _NO_CLOCK else at)
                routed.append((row, malformed_record(before, raw.record(row), kind, reason)))
            routed.sort(key=lambda pair: pair[0])
        if end != _NO_CLOCK:
            clock.observe(end)

        offsets = raw.offsets
        n_late = int(late_at.size)
        late = np.zeros(len(rows), np.bool_)
        late[late_at] = True
        events = frame.with_columns(
            pl.Series(OFFSET, np.asarray(offsets, np.int64)[rows]),
            pl.Series(LATE, late, pl.Boolean()) if n_late else pl.lit(False).alias(LATE),
            pl.Series(LATE_REASON, reasons, pl.String()) if n_late else pl.lit("").alias(LATE_REASON),
        ).drop(ROW)
        counters: dict[str, int] = {}
        if len(rows) - n_late:
            counters["applied"] = len(rows) - n_late
        if n_late:
            counters["late"] = n_late
        for kind, _ in malformed.values():
            counters[f"malformed:{kind}"] = counters.get(f"malformed:{kind}", 0) + 1
        return ClassifiedBatch(
            raw.topic,
            raw.partition,
            len(offsets),
            events,
            [record for _, record in routed],
            offsets[-1] + 1,
            clock.max_event_time_ms,
            offsets[0],
            clock_before,
            counters,
        )


_NO_CLOCK = np.iinfo(np.int64).min
"""What :func:`_clocks_before` gives a row no valid event precedes in a partition without a clock."""


def _clocks_before(start: int | None, times: np.ndarray) -> np.ndarray:
    """The partition clock just before each of ``times`` (in log order), from ``start``.

    Example:
        >>> _clocks_before(5, np.array([3, 9, 7])).tolist()
        [5, 5, 9]
    """
    clocks = np.empty_like(times)
    if times.size:
        clocks[0] = _NO_CLOCK if start is None else start
        np.maximum.accumulate(times[:-1], out=clocks[1:])
        np.maximum(clocks[1:], clocks[0], out=clocks[1:])
    return clocks
