"""Conversions between the times the serving layer meets: epoch milliseconds, datetimes, protobuf Timestamps
and the ISO-8601 text users type.

Highwater's event time is integer milliseconds since the Unix epoch (UTC) everywhere inside; these helpers
are the one place that turns it into and out of the other forms, so precision and time-zone rules stay
the same in the server, the client and the CLI. Naive datetimes are taken as UTC.

Example:
    >>> ms = parse_as_of("2024-05-01T12:00:00Z")
    >>> ms
    1714564800000
    >>> format_ms(ms)
    '2024-05-01T12:00:00.000Z'
    >>> timestamp_to_ms(ms_to_timestamp(ms)) == ms
    True
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def ms_to_timestamp(ms: int) -> Timestamp:
    """A protobuf Timestamp for epoch milliseconds."""
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def timestamp_to_ms(ts: Timestamp) -> int:
    """Epoch milliseconds of a Timestamp (sub-millisecond parts are dropped, rounding towards the past)."""
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def ms_to_datetime(ms: int) -> datetime:
    """A UTC-aware datetime for epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(value: datetime) -> int:
    """Epoch milliseconds of a datetime; a naive one is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def to_ms(value: datetime | int) -> int:
    """Epoch milliseconds of a datetime or of an int that already is epoch milliseconds."""
    if isinstance(value, bool):
        raise TypeError("as_of must be a datetime or epoch milliseconds, not a bool")
    if isinstance(value, datetime):
        return datetime_to_ms(value)
    if isinstance(value, int):
        return value
    raise TypeError(f"as_of must be a datetime or epoch milliseconds, not {type(value).__name__}")


def parse_as_of(text: str) -> int:
    """Epoch milliseconds of user text: ISO-8601 (``2024-05-01T12:00:00Z``, naive = UTC) or an integer of ms.

    Raises ValueError naming the text when it is neither.
    """
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    try:
        return datetime_to_ms(datetime.fromisoformat(stripped))
    except ValueError:
        raise ValueError(
            f"cannot parse {text!r}: expected ISO-8601 like 2024-05-01T12:00:00Z or epoch milliseconds"
        ) from None


def format_ms(ms: int) -> str:
    """ISO-8601 UTC text with milliseconds, e.g. ``2024-05-01T12:00:00.000Z``."""
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def format_duration_ms(ms: int) -> str:
    """A short human duration, e.g. ``24h``, ``90s``, ``1500ms``, ``1d2h``."""
    if ms % 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
