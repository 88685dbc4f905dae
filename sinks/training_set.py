"""Training sets: every feature of every spine row as of the row's timestamp, from offline history.

A *spine* is a table of rows to describe: the entity key(s) of the requested features (``card_id`` for
card features, ``merchant_id`` for merchant features), a timestamp T, and any other columns (passed
through untouched). Each feature is computed as of T from the generation's complete history (late events
included, duplicates of a ``transaction_id`` counted once), with the semantics of ``docs/features.md``
and values bit-identical to what the online store computes over the same events
(:mod:`sinks.point_in_time`). An event after T never counts.

Labels (``labels=True``): ``is_fraud`` is the latest label of the row's ``transaction_id`` (largest
``label_time``, ties to the largest log position) among labels with ``label_time <= label_cutoff``; null
when it has none by then. The cutoff keeps labels that arrived after the training period out.

Example:
    >>> spine = pa.table({"card_id": ["card-00001"], "transaction_id": ["txn-00000042"],
    ...                   "timestamp": pa.array([1_772_450_000_000], pa.timestamp("ms", tz="UTC"))})
    >>> table = build_training_set(Settings(), spine, ["card_txn_count_1h", "card_amount_sum_24h"],
    ...     labels=True, label_cutoff=datetime(2026, 4, 1, tzinfo=UTC))  # doctest: +SKIP
    >>> table.column_names  # doctest: +SKIP
    ['card_id', 'transaction_id', 'timestamp', 'card_txn_count_1h', 'card_amount_sum_24h', 'is_fraud']

Bad input raises :class:`TrainingSetError` (a ``ValueError``) naming the problem: a missing spine column,
an unknown feature, null keys or timestamps, timestamps outside the history, an unknown generation
(:class:`UnknownTrainingGenerationError`, also an :class:`sinks.offline.UnknownGenerationError`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from highwater.settings import Settings, get_settings
from serving.timeconv import format_ms, to_ms
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.offline import UnknownGenerationError
from sinks.point_in_time import AS_OF, LABEL, ROW, entity_layouts, point_in_time_sql, spine_table
from sinks.redis_online import live_generation
from streams.features import REGISTRY, Feature

TRANSACTION_ID = "transaction_id"


class TrainingSetError(ValueError):
    """Input a training set (or the feature log) cannot be built from; the message names the problem."""


class UnknownTrainingGenerationError(TrainingSetError, UnknownGenerationError):
    """The requested generation has no offline tables."""

    def __init__(self, error: UnknownGenerationError) -> None:
        Exception.__init__(self, str(error))
        self.generation = error.generation


def resolve_features(names: Sequence[str] | None) -> list[Feature]:
    """The features called ``names`` (all when None), in the order given; unknown names are an error."""
    if names is None:
        return REGISTRY.all_features()
    if not names:
        raise TrainingSetError("no features requested")
    known = {f.name for f in REGISTRY.all_features()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TrainingSetError(
            f"unknown feature{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )
    if len(set(names)) != len(names):
        raise TrainingSetError(
            f"features requested twice: {sorted({n for n in names if names.count(n) > 1})}"
        )
    return [REGISTRY.feature(n) for n in names]


def require_generation(store: ClickHouseOfflineStore, generation: str) -> None:
    """:class:`UnknownTrainingGenerationError` unless ``generation`` has offline tables."""
    try:
        store.require(generation)
    except UnknownGenerationError as error:
        raise UnknownTrainingGenerationError(error) from None


@contextmanager
def open_store(source: Settings | ClickHouseOfflineStore) -> Iterator[ClickHouseOfflineStore]:
    """The store itself, or one opened from settings (and closed on exit)."""
    if isinstance(source, ClickHouseOfflineStore):
        yield source
        return
    store = ClickHouseOfflineStore.from_settings(source)
    try:
        yield store
    finally:
        store.close()


def default_generation(source: Settings | ClickHouseOfflineStore) -> str:
    """The live generation (the one the server reads; see ``highwater generations promote``)."""
    settings = source if isinstance(source, Settings) else get_settings()
    return live_generation(settings)


def read_spine(path: str | Path) -> pa.Table:
    """A spine from a Parquet or CSV file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingSetError(f"spine file {str(path)!r} does not exist")
    try:
        if path.suffix.lower() == ".csv":
            return pacsv.read_csv(path)
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise TrainingSetError(f"cannot read spine {str(path)!r}: {error}") from None


def build_training_set(
    source: Settings | ClickHouseOfflineStore,
    spine: pa.Table | str | Path,
    features: Sequence[str] | None = None,
    *,
    timestamp_column: str = "timestamp",
    generation: str | None = None,
    labels: bool = False,
    label_cutoff: datetime | int | None = None,
) -> pa.Table:
    """The spine's columns, then one column per feature as of each row's timestamp, then ``is_fraud``.

    Args:
        source: the settings (the offline store is opened and closed here) or an open offline store.
        spine: an Arrow table, or the path of a Parquet (or ``.csv``) file. Needs ``timestamp_column`` and
            the key of each requested feature's entity (``card_id``, ``merchant_id``); with ``labels`` also
            ``transaction_id``. Rows keep their order; other columns pass through.
        features: feature names (``streams.features``); None means all, in definition order.
        timestamp_column: the as-of time T of each row: an Arrow timestamp (naive = UTC; sub-millisecond
            parts are dropped, which changes no window) or integer epoch milliseconds.
        generation: the offline generation to read; None means the live one.
        labels: add ``is_fraud`` (nullable bool), needs ``label_cutoff``.
        label_cutoff: only labels with ``label_time`` at or before it count (datetime, naive = UTC, or
            epoch ms).

    Returns:
        An Arrow table: count and distinct_count features as int64, the others as float64, null where the
        feature is null (max, avg or seconds_since_last over no events).

    Raises:
        TrainingSetError: a needed spine column is missing, a feature is unknown, a key or timestamp is
            null, the label options do not fit together, or a timestamp is outside the history: before
            the generation's first event or after its last (by ``event_time``, late events included).
        UnknownTrainingGenerationError: the generation has no offline tables (a TrainingSetError and a
            ``sinks.offline.UnknownGenerationError``).

    Example:
        >>> spine = pa.table({"card_id": ["card-00001"], "timestamp": [1_772_450_000_000]})
        >>> build_training_set(Settings(), spine, ["card_txn_count_1h"]).to_pylist()   # doctest: +SKIP
        [{'card_id': 'card-00001', 'timestamp': 1772450000000, 'card_txn_count_1h': 2}]
    """
    wanted = resolve_features(features)
    if labels and label_cutoff is None:
        raise TrainingSetError("labels need a label cutoff (label_time at or before it counts)")
    if not labels and label_cutoff is not None:
        raise TrainingSetError("a label cutoff was given without labels")
    cutoff_ms = _cutoff_ms(label_cutoff) if label_cutoff is not None else None
    table = read_spine(spine) if isinstance(spine, (str, Path)) else spine
    if not isinstance(table, pa.Table):
        raise TrainingSetError(f"spine must be a pyarrow Table or a file path, not {type(table).__name__}")
    keys = [layout.key_field for layout in entity_layouts(wanted)]
    needed = [timestamp_column, *keys, *([TRANSACTION_ID] if labels else [])]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise TrainingSetError(
            f"spine lacks column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(it has: {', '.join(table.column_names) or 'none'})"
        )
    outputs = [f.name for f in wanted] + ([LABEL] if labels else [])
    clashing = [c for c in outputs if c in table.column_names]
    if clashing:
        raise TrainingSetError(f"spine already has column(s) {clashing}, which the training set adds")
    upload = _upload_table(table, timestamp_column, [*keys, *([TRANSACTION_ID] if labels else [])])
    with open_store(source) as store:
        generation = generation or default_generation(source)
        require_generation(store, generation)
        if table.num_rows == 0:
            return _assemble(table, wanted, labels, None)
        earliest = pc.min(upload[AS_OF]).as_py()
        latest = pc.max(upload[AS_OF]).as_py()
        _check_history_range(store, generation, earliest, latest)
        columns = [(ROW, "UInt64"), *((c, "String") for c in upload.column_names[1:-1]), (AS_OF, "Int64")]
        with spine_table(store, columns, upload) as name:
            sql = point_in_time_sql(wanted, name, time_range=(earliest, latest), label_cutoff_ms=cutoff_ms)
            result = store.query_arrow(sql, generation)
    if result.num_rows != table.num_rows:
        raise RuntimeError(f"point-in-time query returned {result.num_rows} rows for {table.num_rows}")
    return _assemble(table, wanted, labels, result)


def _cutoff_ms(value: datetime | int) -> int:
    try:
        return to_ms(value)
    except TypeError as error:
        raise TrainingSetError(f"label cutoff: {error}".replace("as_of", "label_cutoff")) from None


def _upload_table(table: pa.Table, timestamp_column: str, key_columns: Sequence[str]) -> pa.Table:
    """``_row``, the key columns as strings, ``_t`` as epoch ms; null keys or times are an error."""
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        ROW: pa.array(range(table.num_rows), pa.uint64()),
    }
    for name in dict.fromkeys(key_columns):
        column = table[name]
        _no_nulls(column, name)
        try:
            columns[name] = pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise TrainingSetError(f"spine column {name!r} must hold text ids, not {column.type}") from None
    column = table[timestamp_column]
    _no_nulls(column, timestamp_column)
    columns[AS_OF] = _epoch_ms(column, timestamp_column)
    return pa.table(columns)


def _no_nulls(column: pa.ChunkedArray, name: str) -> None:
    if column.null_count:
        raise TrainingSetError(f"spine column {name!r} has {column.null_count} null value(s)")


def _epoch_ms(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_timestamp(kind):
        floored = pc.floor_temporal(column, unit="millisecond") if kind.unit in ("us", "ns") else column
        return pc.cast(pc.cast(floored, pa.timestamp("ms", tz=kind.tz), safe=False), pa.int64())
    if pa.types.is_integer(kind):
        return pc.cast(column, pa.int64())
    raise TrainingSetError(
        f"spine column {name!r} must be a timestamp or integer epoch milliseconds, not {kind}"
    )


def _check_history_range(store: ClickHouseOfflineStore, generation: str, earliest: int, latest: int) -> None:
    row = store.query_arrow(
        "SELECT count() AS n, toUnixTimestamp64Milli(min(event_time)) AS first, "
        "toUnixTimestamp64Milli(max(event_time)) AS last FROM {transactions} FINAL",
        generation,
    ).to_pylist()[0]
    if row["n"] == 0:
        raise TrainingSetError(f"generation {generation!r} has no transaction history")
    if earliest < row["first"] or latest > row["last"]:
        raise TrainingSetError(
            f"spine timestamps {format_ms(earliest)} .. {format_ms(latest)} fall outside the history of "
            f"generation {generation!r}: {format_ms(row['first'])} .. {format_ms(row['last'])} "
            "(first to last event_time)"
        )


def _assemble(table: pa.Table, wanted: Sequence[Feature], labels: bool, result: pa.Table | None) -> pa.Table:
    out = table
    for feature in wanted:
        kind = pa.int64() if feature.aggregation.integral else pa.float64()
        column = result[feature.name] if result is not None else pa.chunked_array([], kind)
        out = out.append_column(pa.field(feature.name, kind), pc.cast(column, kind))
    if labels:
        column = result[LABEL] if result is not None else pa.chunked_array([], pa.bool_())
        out = out.append_column(pa.field(LABEL, pa.bool_()), pc.cast(column, pa.bool_()))
    return out


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` to ``path`` through a temporary file in the same folder and a rename: readers see
    the old file or the whole new one, never a part; nothing is left behind on failure."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
