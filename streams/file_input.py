"""Read a user's event file (``.jsonl`` or ``.csv``) into records, rejecting bad rows with a reason.

Each row comes out either as a :class:`Row` (a complete record, optional fields filled with their
defaults, ready for the producer) or as a :class:`Rejection` with its 1-based line number and a reason
that names the field, e.g. ``amount: must be >= 0, got -5.0``. Reading never stops at a bad row, so one
pass reports every problem in the file.

Formats:
    ``.jsonl``: one JSON object per line; blank lines are skipped.
    ``.csv``: a header row of field names, then one record per row. Cells are converted to the Avro
    type of the topic's schema: ``long``/``int`` (timestamps also as ISO-8601, e.g.
    ``2026-03-02T10:00:00Z``), ``double``, ``boolean`` (``true``/``false``/``1``/``0``), ``string``; an
    empty cell is null for an optional field and missing for a required one.

Example:
    >>> from streams.file_input import read_events_file
    >>> rows = list(read_events_file("tests/data/transactions.csv", "transactions"))
    >>> rows[0].line, rows[0].record["amount"]
    (2, 12.5)
    >>> print(rows[5])
    line 7: amount: must be >= 0, got -5.0
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from schemas.catalog import CATALOG
from schemas.validate import validate_event

_MISSING = object()


@dataclass(frozen=True)
class Row:
    """A good row: its 1-based line number in the file and the record to write."""

    line: int
    record: dict[str, Any]


@dataclass(frozen=True)
class Rejection:
    """A row that may not be written: its 1-based line (or position) and why, naming the field."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


RowResult = Row | Rejection

FILE_TYPES = (".jsonl", ".ndjson", ".csv")
"""File suffixes :func:`read_events_file` reads (``.ndjson`` is JSON lines too)."""


@dataclass(frozen=True)
class _Field:
    name: str
    avro_type: str
    nullable: bool
    has_default: bool
    default: Any
    timestamp: bool


@cache
def _fields(topic: str) -> dict[str, _Field]:
    """The topic's fields with their (single) non-null Avro type (cached; callers must not mutate)."""
    fields: dict[str, _Field] = {}
    for spec in CATALOG.schema(topic)["fields"]:
        type_spec = spec["type"]
        branches = type_spec if isinstance(type_spec, list) else [type_spec]
        non_null = [b for b in branches if b != "null"]
        base = non_null[0] if non_null else "null"
        timestamp = isinstance(base, dict) and str(base.get("logicalType", "")).startswith("timestamp")
        avro_type = base["type"] if isinstance(base, dict) else str(base)
        fields[spec["name"]] = _Field(
            name=spec["name"],
            avro_type=avro_type,
            nullable="null" in branches,
            has_default="default" in spec,
            default=spec.get("default"),
            timestamp=timestamp,
        )
    return fields


def record_errors(topic: str, record: dict[str, Any]) -> list[str]:
    """Why ``record`` may not be written to ``topic``; empty when it may.

    Adds to :func:`schemas.validate.validate_event` the checks it leaves to the caller: fields the schema
    does not have (they would be dropped silently by the encoder) and required fields that are absent.

    Example:
        >>> record_errors("fraud-labels", {"transaction_id": "t1", "card_id": "c1", "is_fraud": True,
        ...     "label_time": 1, "source": "analyst", "note": "x"})
        ['note: unknown field (not in the fraud-labels schema)']
    """
    if topic not in CATALOG.topics():
        return [f"topic {topic!r} has no schema (known: {', '.join(CATALOG.topics())})"]
    fields = _fields(topic)
    errors = [f"{name}: unknown field (not in the {topic} schema)" for name in record if name not in fields]
    for f in fields.values():
        value = record.get(f.name, _MISSING)
        if (value is _MISSING and not f.has_default) or (value is None and not f.nullable):
            errors.append(f"{f.name}: required field is missing")
    return errors or validate_event(topic, record)


def read_events_file(path: str | Path, topic: str) -> Iterator[RowResult]:
    """Every row of a ``.jsonl`` or ``.csv`` file as a :class:`Row` or a :class:`Rejection`.

    Raises ValueError for a file type other than ``.jsonl``/``.csv`` or a topic without a schema, and
    OSError if the file cannot be read.
    """
    if topic not in CATALOG.topics():
        raise ValueError(f"topic {topic!r} has no schema (known: {', '.join(CATALOG.topics())})")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .jsonl or .csv")
    yield from _read_csv(path, topic) if suffix == ".csv" else _read_jsonl(path, topic)


def count_rows(path: str | Path) -> int:
    """Non-blank lines of an event file, less the CSV header: the rows :func:`read_events_file` yields
    when no CSV cell spans lines (used to size progress bars)."""
    path = Path(path)
    with path.open(encoding="utf-8") as lines:
        non_blank = sum(1 for line in lines if line.strip())
    return max(0, non_blank - 1) if path.suffix.lower() == ".csv" else non_blank


def _finish(line: int, topic: str, record: dict[str, Any], fields: dict[str, _Field]) -> RowResult:
    errors = record_errors(topic, record)
    if errors:
        return Rejection(line, "; ".join(errors))
    full = {name: record.get(name, f.default) for name, f in fields.items()}
    return Row(line, full)


def _read_jsonl(path: Path, topic: str) -> Iterator[RowResult]:
    fields = _fields(topic)
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text.strip())
            except json.JSONDecodeError as exc:
                yield Rejection(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(value, dict):
                yield Rejection(number, f"expected a JSON object, got {type(value).__name__}")
                continue
            errors: list[str] = []
            record = {k: _from_json(fields[k], v, errors) if k in fields else v for k, v in value.items()}
            yield Rejection(number, "; ".join(errors)) if errors else _finish(number, topic, record, fields)


def _from_json(f: _Field, value: Any, errors: list[str]) -> Any:
    """JSON has no long/double distinction and no timestamps: accept ISO strings and whole doubles."""
    if f.timestamp and isinstance(value, str):
        return _convert(f, value, errors)
    if f.avro_type in ("double", "float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _read_csv(path: Path, topic: str) -> Iterator[RowResult]:
    fields = _fields(topic)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        duplicates = sorted({name for name in header if header.count(name) > 1})
        problems = [f"{name}: duplicate column" for name in duplicates]
        problems += [
            f"{name}: unknown column (not in the {topic} schema)" for name in header if name not in fields
        ]
        previous_end = reader.line_num
        for cells in reader:
            line, previous_end = previous_end + 1, reader.line_num
            if not cells:
                continue
            if problems:
                yield Rejection(line, "; ".join(problems))
                continue
            if len(cells) != len(header):
                yield Rejection(line, f"row has {len(cells)} cells, the header has {len(header)}")
                continue
            errors: list[str] = []
            record: dict[str, Any] = {}
            for name, cell in zip(header, cells, strict=True):
                f = fields[name]
                if cell.strip() == "":
                    if f.nullable:
                        record[name] = None
                    continue
                record[name] = _convert(f, cell.strip() if f.avro_type != "string" else cell, errors)
            yield Rejection(line, "; ".join(errors)) if errors else _finish(line, topic, record, fields)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(text)


def _parse_timestamp(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return math.floor(moment.timestamp() * 1000)


_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "long": (int, "an integer"),
    "int": (int, "an integer"),
    "double": (float, "a number"),
    "float": (float, "a number"),
    "boolean": (_parse_bool, "true/false/1/0"),
    "string": (str, "a string"),
    "bytes": (lambda text: text.encode("utf-8"), "bytes"),
}


def _convert(f: _Field, text: str, errors: list[str]) -> Any:
    parse: Callable[[str], Any]
    if f.timestamp:
        parse, expected = _parse_timestamp, "epoch milliseconds or an ISO-8601 time"
    elif f.avro_type in _PARSERS:
        parse, expected = _PARSERS[f.avro_type]
    else:
        errors.append(f"{f.name}: type {f.avro_type} cannot be given as text")
        return None
    try:
        return parse(text)
    except ValueError:
        errors.append(f"{f.name}: expected {expected}, got {text!r}")
        return None
