"""Event time: per-partition watermarks, lateness, and the fate of every record.

For each source partition the watermark is the highest ``event_time`` seen so far minus the bounded
out-of-orderness D. A record whose event time is older than the watermark minus the allowed lateness L
is late: it is not applied online but routed to ``late-events`` with its reason. A record that cannot be
decoded or fails validation is malformed and routed to ``dead-letter``. Everything else is applied.

Every decision depends only on the records before it in the same partition, so re-reading the log
(after a crash, or in a replay) reproduces the same decisions, given the partition's high-water mark at
the resume offset (stored in the checkpoint).

Example:
    >>> clock = PartitionClock(max_event_time_ms=None)
    >>> policy = LatenessPolicy(max_out_of_orderness_ms=5_000, allowed_lateness_ms=60_000)
    >>> policy.lateness_ms(clock, 1_000_000)   # first event: never late
    >>> clock.observe(1_000_000)
    >>> policy.lateness_ms(clock, 1_000_000 - 65_001)
    1
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from schemas.serde import AvroSerde, SerdeError
from schemas.validate import business_rule_errors


class RawRecord(NamedTuple):
    """A record exactly as read from the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Fate(StrEnum):
    """What happens to a record."""

    APPLIED = "applied"
    LATE = "late"
    MALFORMED = "malformed"


class Classified(NamedTuple):
    """A record with its fate; ``max_event_time_ms`` is its partition's high-water mark after it."""

    raw: RawRecord
    fate: Fate
    max_event_time_ms: int | None
    event: dict[str, Any] | None = None
    error_type: str = ""
    reason: str = ""
    watermark_ms: int | None = None
    lateness_ms: int = 0


@dataclass
class PartitionClock:
    """The highest event time seen in one partition (None before the first valid event)."""

    max_event_time_ms: int | None

    def observe(self, event_time_ms: int) -> None:
        """Advance the high-water mark with an applied event."""
        if self.max_event_time_ms is None or event_time_ms > self.max_event_time_ms:
            self.max_event_time_ms = event_time_ms


@dataclass(frozen=True)
class LatenessPolicy:
    """D (bounded out-of-orderness) and L (allowed lateness), in milliseconds."""

    max_out_of_orderness_ms: int
    allowed_lateness_ms: int

    def watermark(self, clock: PartitionClock) -> int | None:
        """The partition's watermark: high-water mark minus D."""
        if clock.max_event_time_ms is None:
            return None
        return clock.max_event_time_ms - self.max_out_of_orderness_ms

    def lateness_ms(self, clock: PartitionClock, event_time_ms: int) -> int | None:
        """How far beyond the allowed lateness an event is; None when it is on time."""
        watermark = self.watermark(clock)
        if watermark is None:
            return None
        behind = (watermark - self.allowed_lateness_ms) - event_time_ms
        return behind if behind > 0 else None


NEVER_LATE = LatenessPolicy(max_out_of_orderness_ms=0, allowed_lateness_ms=2**62)
"""The policy of topics without online state (fraud labels): every valid record is on time."""


class Classifier:
    """Decides the fate of each record of one partition, in log order."""

    def __init__(self, serde: AvroSerde, policy: LatenessPolicy, time_field: str = "event_time") -> None:
        self._serde = serde
        self._policy = policy
        self._time_field = time_field

    def classify(self, clock: PartitionClock, raw: RawRecord) -> Classified:
        """The fate of ``raw``; advances ``clock`` when the record is applied."""
        try:
            event = self._serde.decode(raw.topic, raw.value)
        except SerdeError as exc:
            return malformed_record(clock, raw, exc.kind, str(exc))
        errors = business_rule_errors(raw.topic, event)
        if errors:
            return malformed_record(clock, raw, "validation_failed", "; ".join(errors))
        event_time = int(event[self._time_field])
        lateness = self._policy.lateness_ms(clock, event_time)
        if lateness is not None:
            return late_record(raw, event, event_time, lateness, clock, self._policy)
        clock.observe(event_time)
        return Classified(raw, Fate.APPLIED, clock.max_event_time_ms, event=event)


def late_record(
    raw: RawRecord,
    event: dict[str, Any],
    event_time_ms: int,
    lateness_ms: int,
    clock: PartitionClock,
    policy: LatenessPolicy,
) -> Classified:
    """A late record with its reason; ``clock`` is its partition's clock just before it."""
    watermark = policy.watermark(clock)
    reason = (
        f"event_time {event_time_ms} is {lateness_ms} ms older than watermark {watermark} minus "
        f"allowed lateness {policy.allowed_lateness_ms} ms (partition {raw.partition})"
    )
    return Classified(
        raw,
        Fate.LATE,
        clock.max_event_time_ms,
        event=event,
        error_type="late",
        reason=reason,
        watermark_ms=watermark,
        lateness_ms=lateness_ms,
    )


def malformed_record(clock: PartitionClock, raw: RawRecord, kind: str, reason: str) -> Classified:
    """A record that cannot be used, with the dead-letter error type ``kind`` and its reason."""
    return Classified(raw, Fate.MALFORMED, clock.max_event_time_ms, error_type=kind, reason=reason)
