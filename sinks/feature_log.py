"""The feature log: what the online store served for each transaction, rebuilt from offline history.

**What "served" means here.** For a transaction t that was applied online (a history row not flagged
``late``), the *served* value of a feature is what a read as of ``t.event_time`` for t's entity (its
``card_id`` or ``merchant_id``) would have returned right after the apply batch that carried t (its
``apply_seq``) was applied. The online store applies batches atomically and in ``apply_seq`` order, so
that value aggregates, with the window semantics of ``docs/features.md``, exactly the events e of the same
entity key with

* ``late = false`` (late events are never applied online),
* ``e.apply_seq <= t.apply_seq`` (applied by then; events of t's own batch included),
* ``event_time`` in (T-W, T], T = ``t.event_time``,

and duplicates of a ``transaction_id`` resolved as the online store resolves them: the first *applied*
copy wins (smallest ``apply_seq`` among the non-late copies, then the smallest (partition, offset)). The
query is the training-set query (:func:`sinks.point_in_time.point_in_time_sql`) with ``served=True``.

:func:`feature_skew` compares that with the *complete-data* value at the same (key, T), the value a
training set built from the full history gives (late events included, every event counted whenever it
arrived), and explains each difference by the events inside the feature's window that the online store
had not applied when serving t: ``late`` ones (never applied) and ones *applied after* (a later batch:
out-of-order delivery within the allowed lateness, or another partition running behind).

**Limits.** The rebuild assumes the online store kept every event it needed. It does not model:

* events trimmed beyond the online horizon: the store skips and trims events older than its partition
  clock minus (retention + widest window + out-of-orderness + lateness) (counter
  ``beyond_online_horizon``); the feature log still counts them if they are not late;
* cross-partition clock skew beyond the retention: the server refuses reads older than the global clock
  minus ``online.retention_ms`` (``FAILED_PRECONDITION``); a transaction of a partition lagging by more
  than that was never servable online, yet the feature log gives it a value;
* reads that happened later than right after t's batch (events applied meanwhile), and duplicates whose
  copies differ in content (the offline store assumes they carry the same fields).

**Cost.** Every transaction is a spine row, so the work is that of one online read per transaction: the
events of its window, which for a busy merchant's 24 h window is large. Transactions go in chunks of
``CHUNK_ROWS`` per query, which bounds the memory, not the time. ``feature_skew`` runs both views and
explains only the first ``explain_limit`` differences when asked to (the command line's ``--limit``).

Example:
    >>> log = feature_log(store, "g1", ["card_txn_count_1h"])                  # doctest: +SKIP
    >>> log.column_names                                                      # doctest: +SKIP
    ['transaction_id', 'card_id', 'merchant_id', 'event_time', 'card_txn_count_1h']
    >>> feature_skew(store, "g1").to_pylist()[0]                              # doctest: +SKIP
    {'transaction_id': 'txn-00000412', 'event_time': ..., 'entity': 'card', 'entity_id': 'card-00007',
     'feature': 'card_txn_count_1h', 'served': 2.0, 'complete': 3.0, 'unserved_count': 1,
     'late_ids': ['txn-00000398'], 'applied_after_ids': []}
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.point_in_time import (
    AS_OF,
    BUCKETS_PER_WINDOW,
    ROW,
    SEQ,
    entity_layouts,
    history_sql,
    point_in_time_sql,
    spine_table,
)
from sinks.training_set import TRANSACTION_ID, require_generation, resolve_features
from streams.features import REGISTRY, Feature

_TS = pa.timestamp("ms", tz="UTC")
_KEYS = [e.key_field for e in REGISTRY.entities()]
_SPINE_COLUMNS = [(ROW, "UInt64"), (TRANSACTION_ID, "String"), *((k, "String") for k in _KEYS)]
_SPINE_COLUMNS += [(AS_OF, "Int64"), (SEQ, "UInt64")]

SKEW_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("event_time", _TS),
        ("entity", pa.string()),
        ("entity_id", pa.string()),
        ("feature", pa.string()),
        ("served", pa.float64()),
        ("complete", pa.float64()),
        ("unserved_count", pa.int64()),
        ("late_ids", pa.list_(pa.string())),
        ("applied_after_ids", pa.list_(pa.string())),
    ]
)
"""One row per (transaction, feature) whose served value differs from the complete-data value."""


CHUNK_ROWS = 25_000
"""Transactions per query: the work of a chunk is its rows' window events, so chunks bound the memory."""


@dataclass(frozen=True)
class _Chunk:
    """Spine rows [start, stop) and their (earliest, latest) time."""

    start: int
    stop: int
    time_range: tuple[int, int]


@contextmanager
def _applied_spine(store: ClickHouseOfflineStore, generation: str) -> Iterator[tuple[str, list[_Chunk]]]:
    """A spine table of every applied transaction (its first applied copy), ordered by (event_time, id),
    with its ``apply_seq``; yields its name and its chunks of rows. Dropped on exit."""
    with spine_table(store, _SPINE_COLUMNS) as name:
        applied = history_sql(served=True, columns=_KEYS)
        store.command(
            f"INSERT INTO {name} SELECT toUInt64(row_number() OVER (ORDER BY t, transaction_id) - 1), "
            f"transaction_id, {', '.join(_KEYS)}, t, apply_seq FROM ({applied})",
            generation,
        )
        bounds = store.query_arrow(
            f"SELECT intDiv({ROW}, {CHUNK_ROWS}) AS chunk, min({ROW}) AS start, max({ROW}) + 1 AS stop, "
            f"min({AS_OF}) AS lo, max({AS_OF}) AS hi FROM {name} GROUP BY chunk ORDER BY chunk",
            generation,
        ).to_pylist()
        yield name, [_Chunk(b["start"], b["stop"], (b["lo"], b["hi"])) for b in bounds]


def _log_query(
    store: ClickHouseOfflineStore,
    generation: str,
    spine: str,
    chunks: Sequence[_Chunk],
    wanted: Sequence[Feature],
    *,
    served: bool,
) -> pa.Table:
    """The point-in-time query over the spine, chunk by chunk, in spine order."""
    parts = []
    for chunk in chunks:
        rows = f"(SELECT * FROM {spine} WHERE {ROW} >= {chunk.start} AND {ROW} < {chunk.stop})"
        sql = point_in_time_sql(
            wanted,
            rows,
            time_range=chunk.time_range,
            served=served,
            spine_columns=[TRANSACTION_ID, *_KEYS, AS_OF],
        )
        parts.append(store.query_arrow(sql, generation))
    if not parts:
        sql = point_in_time_sql(
            wanted, spine, time_range=(0, 0), served=served, spine_columns=[TRANSACTION_ID, *_KEYS, AS_OF]
        )
        parts.append(store.query_arrow(sql, generation))
    return pa.concat_tables(parts)


def _as_log(result: pa.Table, wanted: Sequence[Feature]) -> pa.Table:
    columns: dict[str, pa.ChunkedArray] = {
        TRANSACTION_ID: result[TRANSACTION_ID],
        **{k: result[k] for k in _KEYS},
        "event_time": pc.cast(pc.cast(result[AS_OF], pa.int64()), _TS),
    }
    for feature in wanted:
        kind = pa.int64() if feature.aggregation.integral else pa.float64()
        columns[feature.name] = pc.cast(result[feature.name], kind)
    return pa.table(columns)


def feature_log(
    store: ClickHouseOfflineStore, generation: str, features: Sequence[str] | None = None
) -> pa.Table:
    """One row per applied transaction (in (event_time, transaction_id) order): ``transaction_id``,
    ``card_id``, ``merchant_id``, ``event_time``, then each feature as served (module docstring).

    Raises TrainingSetError for an unknown feature, UnknownTrainingGenerationError for an unknown
    generation.
    """
    wanted = resolve_features(features)
    require_generation(store, generation)
    with _applied_spine(store, generation) as (spine, chunks):
        result = _log_query(store, generation, spine, chunks, wanted, served=True)
    return _as_log(result, wanted)


def feature_skew(
    store: ClickHouseOfflineStore,
    generation: str,
    features: Sequence[str] | None = None,
    *,
    explain_limit: int | None = None,
) -> pa.Table:
    """Every (applied transaction, feature) whose served value differs from the complete-data value at the
    same key and time, with the events that explain it (:data:`SKEW_SCHEMA`; module docstring).

    Rows are in (event_time, transaction_id, feature definition) order. ``late_ids`` are the window's
    events never applied online (late), ``applied_after_ids`` those applied in a later batch than the
    transaction; both in (event_time, transaction_id) order. Only the first ``explain_limit`` rows are
    explained when it is given (the others have null explanation columns): explaining is the costly part.
    """
    wanted = resolve_features(features)
    require_generation(store, generation)
    order = {f.name: i for i, f in enumerate(wanted)}
    with _applied_spine(store, generation) as (spine, chunks):
        served = _log_query(store, generation, spine, chunks, wanted, served=True)
        complete = _log_query(store, generation, spine, chunks, wanted, served=False)
        differences: list[tuple[int, Feature]] = []
        for feature in wanted:
            a, b = served[feature.name], complete[feature.name]
            differ = pc.or_(pc.xor(pc.is_null(a), pc.is_null(b)), pc.fill_null(pc.not_equal(a, b), False))
            rows = pc.indices_nonzero(pc.fill_null(differ, False)).to_pylist()
            differences.extend((row, feature) for row in rows)
        differences.sort(key=lambda d: (d[0], order[d[1].name]))
        explained = differences if explain_limit is None else differences[:explain_limit]
        explanations = _explain(store, generation, spine, explained) if explained else {}
    ids = served[TRANSACTION_ID].to_pylist()
    times = served[AS_OF].to_pylist()
    keys = {k: served[k].to_pylist() for k in _KEYS}
    values = {f.name: (served[f.name].to_pylist(), complete[f.name].to_pylist()) for f in wanted}
    rows_out: list[dict[str, object]] = []
    for i, (row, feature) in enumerate(differences):
        entry: dict[str, object] = {
            "transaction_id": ids[row],
            "event_time": times[row],
            "entity": feature.entity,
            "entity_id": keys[REGISTRY.entity(feature.entity).key_field][row],
            "feature": feature.name,
            "served": _float(values[feature.name][0][row]),
            "complete": _float(values[feature.name][1][row]),
            "unserved_count": None,
            "late_ids": None,
            "applied_after_ids": None,
        }
        if i < len(explained):
            late, after = explanations.get((feature.entity, row, feature.window_ms), ([], []))
            entry.update(unserved_count=len(late) + len(after), late_ids=late, applied_after_ids=after)
        rows_out.append(entry)
    return pa.Table.from_pylist(rows_out, SKEW_SCHEMA)


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _explain(
    store: ClickHouseOfflineStore,
    generation: str,
    spine: str,
    differences: Sequence[tuple[int, Feature]],
) -> dict[tuple[str, int, int], tuple[list[str], list[str]]]:
    """(entity, row, window) -> (late ids, applied-after ids) of the complete-data events in the window
    that the served value lacks."""
    out: dict[tuple[str, int, int], tuple[list[str], list[str]]] = {}
    features = [f for _, f in differences]
    for layout in entity_layouts(features):
        pairs = sorted({(row, f.window_ms) for row, f in differences if f.entity == layout.entity})
        upload = pa.table(
            {
                ROW: pa.array([p[0] for p in pairs], pa.uint64()),
                "_w": pa.array([p[1] for p in pairs], pa.int64()),
            }
        )
        key = layout.key_field
        history = history_sql(served=False, columns=[key])
        bucket = -(-max(p[1] for p in pairs) // BUCKETS_PER_WINDOW)  # the range join of point_in_time_sql
        with spine_table(store, [(ROW, "UInt64"), ("_w", "Int64")], upload) as diffs:
            sql = f"""
SELECT {ROW}, _w, arrayMap(x -> x.2, events) AS ids, arrayMap(x -> x.3, events) AS never_applied
FROM (
SELECT d.{ROW} AS {ROW}, d._w AS _w,
  arraySort(groupArray((e.t, e.transaction_id, isNull(a.applied_seq)))) AS events
FROM (SELECT *, intDiv(t, {bucket}) AS bucket FROM ({history})) AS e
INNER JOIN (
  SELECT d.{ROW} AS {ROW}, d._w AS _w, s.{key} AS key, s.{AS_OF} AS {AS_OF}, s.{SEQ} AS {SEQ},
    arrayJoin(range(intDiv(s.{AS_OF} - d._w + 1, {bucket}), intDiv(s.{AS_OF}, {bucket}) + 1)) AS bucket
  FROM {diffs} AS d INNER JOIN {spine} AS s ON s.{ROW} = d.{ROW}
) AS d ON e.{key} = d.key AND e.bucket = d.bucket
LEFT JOIN (
  SELECT transaction_id, toNullable(min(apply_seq)) AS applied_seq
  FROM {{transactions}} FINAL WHERE NOT late GROUP BY transaction_id
) AS a ON a.transaction_id = e.transaction_id
WHERE e.t > d.{AS_OF} - d._w AND e.t <= d.{AS_OF} AND (a.applied_seq IS NULL OR a.applied_seq > d.{SEQ})
GROUP BY d.{ROW}, d._w
)"""
            result = store.query_arrow(sql, generation).to_pylist()
        for item in result:
            pairs_out = list(zip(item["ids"], item["never_applied"], strict=True))
            late = [event_id for event_id, never in pairs_out if never]
            after = [event_id for event_id, never in pairs_out if not never]
            out[(layout.entity, item[ROW], item["_w"])] = (late, after)
    return out
