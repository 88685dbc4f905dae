"""Point-in-time feature values from offline history, computed in ClickHouse.

:func:`point_in_time_sql` builds one query that computes, for each row of a *spine* (entity key(s) and an
as-of time T), each requested feature as of T from the raw history table of a generation, with the
semantics of ``docs/features.md``: a window of width W as of T aggregates the entity's events with
``event_time`` in (T-W, T]; count, sum and distinct_count over no events are 0, max, avg and
seconds_since_last null.

Two views of history (``served``):

* **complete data** (the default, training sets): every history row, late ones included, deduplicated by
  ``transaction_id`` keeping the row with the smallest (partition, offset).
* **served** (the feature log): only rows not ``late``, duplicates resolved as the online store resolves
  them (the first *applied* copy wins: smallest ``apply_seq``, then (partition, offset)), and only events
  whose ``apply_seq`` is at most the spine row's ``_seq`` (applied by then).

Values are bit-identical to the online store's Lua (``sinks.redis_lua.READ_FEATURES``) over the same
events: events are sorted by (event_time, transaction_id), the order of Redis' sorted set (score, then
member, whose prefix is the id); sums are a sequential left fold from 0 in that order, not ``sum()``,
whose order is undefined (it keeps partial sums). The fold is ``arrayCumSum(window)[-1]``: ClickHouse's
arrayCumSum starts each row at 0 and adds element by element (``accumulated += x``), the same IEEE
additions as Lua's ``sum = sum + v`` and as ``arrayFold((acc, x) -> acc + x, window, 0.)``, at a third of
its cost. avg is that sum divided by the count, seconds_since_last is ``(T - t_last) / 1000`` in doubles.
Lua formats numbers with ``%.17g``, which Python parses back exactly.

How the query runs (one ``f_<entity>`` step per entity the features need):

1. History is deduplicated once per query (``ORDER BY ... LIMIT 1 BY transaction_id``) and pruned to
   (earliest T - widest window, latest T].
2. A hash join on (key, time bucket) pairs each spine row with its key's events in the buckets its widest
   window touches (``BUCKETS_PER_WINDOW``; the spine row is repeated per bucket, on the build side), then
   filters (T - widest, T] and, served, ``apply_seq <= _seq``. The bucket keeps a busy key (a large
   merchant) from pairing every spine row with every event it ever had. chDB 26.9 also accepts the time
   range inside ``ON`` of this inner join, with no experimental setting, but it measured slower than the
   filter right after the join, which needs no setting on any version (25.8 in docker-compose).
3. ``groupArray`` per spine row gathers the events (time, id, the fields the features read; separate
   arrays: a tuple array costs three times more), and every feature is an array expression: counts by
   ``arrayCount`` over the times, max and distinct counts over the window's elements in any order, sums
   over the last n elements of the field sorted by time (by (time, id) only for rows with a tie in time).
4. Only the feature values are joined back to the spine (``LEFT JOIN`` on ``_row``, ``join_use_nulls = 0``):
   a spine row without events takes the column defaults, 0 for counts and sums, null for max, avg and
   seconds_since_last. The result is ordered by ``_row``.

The cost grows with the number of (spine row, event in its widest window) pairs: exact sequential sums
cannot reuse partial sums across windows, so a busy key with a wide window costs its window's events for
every spine row.

Example:
    >>> sql = point_in_time_sql([REGISTRY.feature("card_txn_count_1h")], "highwater.`spine_1`",
    ...                         time_range=(0, 10**13))                      # doctest: +SKIP
    >>> store.query_arrow(sql, "g1")                                         # doctest: +SKIP
    pyarrow.Table
    _row: uint64
    card_txn_count_1h: int64
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

from sinks.clickhouse_offline import ClickHouseOfflineStore
from streams.features import REGISTRY, Aggregation, Feature

ROW = "_row"
"""Spine column: the row's position (output order)."""
AS_OF = "_t"
"""Spine column: the as-of time T, epoch milliseconds."""
SEQ = "_seq"
"""Spine column (served view): the apply batch after which the row is evaluated."""
LABEL = "is_fraud"
BUCKETS_PER_WINDOW = 2
"""Time buckets per widest window in the range join (see ``point_in_time_sql``)."""


@dataclass(frozen=True)
class _Layout:
    """An entity the requested features need: its key field and the event fields they read."""

    entity: str
    key_field: str
    fields: tuple[str, ...]


def entity_layouts(features: Sequence[Feature]) -> list[_Layout]:
    """One layout per entity the features need, in registry order, with only the fields they read."""
    layouts = []
    for entity in REGISTRY.entities():
        mine = [f for f in features if f.entity == entity.name]
        if not mine:
            continue
        fields: list[str] = []
        for feature in mine:
            if feature.field and feature.field not in fields:
                fields.append(feature.field)
        layouts.append(_Layout(entity.name, entity.key_field, tuple(fields)))
    return layouts


def history_sql(*, served: bool, columns: Sequence[str]) -> str:
    """History deduplicated by ``transaction_id``, one row per id, as ``t`` (epoch ms) plus ``columns``.

    Complete data keeps every row and the smallest (partition, offset) copy; ``served`` keeps rows not
    late and the copy applied first (smallest ``apply_seq``, then (partition, offset)), with its
    ``apply_seq``.
    """
    wanted = ["transaction_id", *(c for c in columns if c != "transaction_id")]
    select = ", ".join([*wanted, "toUnixTimestamp64Milli(event_time) AS t"])
    if served:
        return (
            f"SELECT {select}, apply_seq FROM {{transactions}} FINAL WHERE NOT late "
            "ORDER BY apply_seq, partition, offset LIMIT 1 BY transaction_id"
        )
    # In log order (the table's sorting key), the first copy of an id is its smallest (partition, offset).
    return (
        f"SELECT {select} FROM {{transactions}} FINAL "
        "ORDER BY topic, partition, offset LIMIT 1 BY transaction_id"
    )


def point_in_time_sql(
    features: Sequence[Feature],
    spine_table: str,
    *,
    time_range: tuple[int, int],
    served: bool = False,
    label_cutoff_ms: int | None = None,
    spine_columns: Sequence[str] = (),
) -> str:
    """The query computing ``features`` for every row of ``spine_table``, ordered by ``_row``.

    ``spine_table`` is a table name or a parenthesized subquery with ``_row``, ``_t``, the key columns of
    the features' entities, ``_seq`` when ``served``, ``transaction_id`` with labels.

    ``time_range`` is (earliest, latest) ``_t`` of the spine: history outside (earliest - widest window,
    latest] is pruned before the join. ``served`` switches to the online store's view (module docstring;
    the spine then needs ``_seq``). With ``label_cutoff_ms`` the result also has ``is_fraud``: the latest
    label (by label_time, then (partition, offset)) of the spine row's ``transaction_id`` among labels with
    ``label_time <= label_cutoff_ms``; null when there is none.

    Result columns: ``_row``, then ``spine_columns`` (copied from the spine), then one per feature (Int64
    for count and distinct_count, Float64 for sum, Nullable(Float64) otherwise), then ``is_fraud``
    (Nullable(Bool)). ``{transactions}``/``{fraud_labels}`` are left for
    :meth:`ClickHouseOfflineStore.query_arrow`.
    """
    earliest, latest = (int(v) for v in time_range)
    ctes: list[str] = []
    joins: list[str] = []
    values: list[str] = [f"s.`{c}` AS `{c}`" for c in spine_columns if c != ROW]
    for layout in entity_layouts(features):
        mine = [f for f in features if f.entity == layout.entity]
        widest = max(f.window_ms for f in mine)
        # The join pairs a spine row only with events of its key in the time buckets its widest window
        # touches (a range join on a hash join): without them, a busy key pairs every spine row with all
        # its events, before and after T. Each spine row is repeated in BUCKETS_PER_WINDOW + 1 buckets
        # at most, and meets events at most one bucket beyond each end of its window.
        bucket = -(-widest // BUCKETS_PER_WINDOW)
        key, name = layout.key_field, layout.entity
        history = history_sql(served=served, columns=[key, *layout.fields])
        seq_filter = f" AND e.apply_seq <= s.{SEQ}" if served else ""
        gathered = ", ".join(
            f"groupArray(e.{column}) AS {column}" for column in ("t", "transaction_id", *layout.fields)
        )
        # Only sums and averages depend on the order of events: their field is sorted by (event_time,
        # transaction_id), Redis' order. Ties in event_time are rare and sorting by a (time, id) tuple costs
        # more, so only rows with a tie pay for it.
        arrays = [
            "arraySort(t) AS t_sorted",
            "arrayExists((a, b) -> a = b, arrayPopFront(t_sorted), arrayPopBack(t_sorted)) AS ties",
        ]
        ordered = {f.field for f in mine if f.aggregation in (Aggregation.SUM, Aggregation.AVG)}
        for field in sorted(ordered, key=layout.fields.index):
            arrays.append(
                f"if(ties, arraySort((v, x, i) -> (x, i), {field}, t, transaction_id), "
                f"arraySort((v, x) -> x, {field}, t)) AS {field}_sorted"
            )
        for window_ms in sorted({f.window_ms for f in mine}):
            arrays.append(f"arrayCount(x -> x > {AS_OF} - {window_ms}, t) AS n{window_ms}")
        computed = ",\n    ".join([ROW, *arrays, *(_feature_value(f, widest) for f in mine)])
        # Features are computed right after the aggregation (in parallel, per spine row that has events);
        # only their values are joined back to the spine. A spine row without events gets the column
        # defaults: 0 for counts, distinct counts and sums, null for the rest, as the semantics say.
        ctes.append(
            f"f_{name} AS (\n"
            f"  SELECT\n    {computed}\n"
            f"  FROM (\n"
            f"    SELECT s.{ROW} AS {ROW}, any(s.{AS_OF}) AS {AS_OF}, {gathered}\n"
            f"    FROM (\n"
            f"      SELECT *, intDiv(t, {bucket}) AS bucket FROM ({history})\n"
            f"      WHERE t > {earliest - widest} AND t <= {latest}\n"
            f"    ) AS e\n"
            f"    INNER JOIN (\n"
            f"      SELECT *, arrayJoin(range(\n"
            f"        intDiv({AS_OF} - {widest - 1}, {bucket}), intDiv({AS_OF}, {bucket}) + 1)) AS bucket\n"
            f"      FROM {spine_table}\n"
            f"    ) AS s ON e.{key} = s.{key} AND e.bucket = s.bucket\n"
            f"    WHERE e.t > s.{AS_OF} - {widest} AND e.t <= s.{AS_OF}{seq_filter}\n"
            f"    GROUP BY s.{ROW}\n"
            f"  )\n)"
        )
        joins.append(f"LEFT JOIN f_{name} ON f_{name}.{ROW} = s.{ROW}")
        values.extend(f"f_{name}.`{f.name}` AS `{f.name}`" for f in mine)
    if label_cutoff_ms is not None:
        ctes.append(
            "labels AS (\n"
            "  SELECT transaction_id,\n"
            "    toNullable(argMax(is_fraud, (label_time, partition, offset))) AS label\n"
            "  FROM {fraud_labels} FINAL\n"
            f"  WHERE toUnixTimestamp64Milli(label_time) <= {int(label_cutoff_ms)}\n"
            "  GROUP BY transaction_id\n)"
        )
        joins.append("LEFT JOIN labels ON labels.transaction_id = s.transaction_id")
        values.append(f"labels.label AS {LABEL}")
    with_clause = "WITH\n" + ",\n".join(ctes) + "\n" if ctes else ""
    select = ",\n  ".join([f"s.{ROW} AS {ROW}", *values])
    return (
        f"{with_clause}SELECT\n  {select}\nFROM {spine_table} AS s\n"
        + "\n".join(joins)
        # Missing right-hand rows must take the column defaults (0, null), whatever the server's profile says.
        + f"\nORDER BY {ROW}\nSETTINGS join_use_nulls = 0"
    )


def _feature_value(feature: Feature, widest_ms: int) -> str:
    """One feature over a spine row's gathered events (arrays ``t``, ``transaction_id``, fields; unsorted).

    Every gathered event is in (T - widest, T], and at least one is; the window (T-W, T] holds ``n{W}`` of
    them, the last ones of the sorted arrays (``t_sorted``, ``{field}_sorted``).
    """
    n = f"n{feature.window_ms}"
    agg = feature.aggregation
    name = f"`{feature.name}`"
    null = "CAST(NULL AS Nullable(Float64))"
    if agg is Aggregation.COUNT:
        return f"toInt64({n}) AS {name}"
    if agg is Aggregation.SECONDS_SINCE_LAST:
        # The latest gathered event is in the window whenever any is (all are <= T).
        return f"if({n} = 0, {null}, toFloat64({AS_OF} - t_sorted[-1]) / 1000) AS {name}"
    assert feature.field is not None
    if feature.window_ms == widest_ms:
        unordered = feature.field
    else:
        unordered = f"arrayFilter((v, x) -> x > {AS_OF} - {feature.window_ms}, {feature.field}, t)"
    if agg is Aggregation.DISTINCT_COUNT:
        return f"toInt64(arrayUniq({unordered})) AS {name}"
    if agg is Aggregation.MAX:
        return f"if({n} = 0, {null}, toFloat64(arrayMax({unordered}))) AS {name}"
    column = f"{feature.field}_sorted"
    window = column if feature.window_ms == widest_ms else f"arraySlice({column}, length({column}) - {n} + 1)"
    # A sequential left fold from 0 in event order: arrayCumSum accumulates element by element from 0.
    total = f"toFloat64(arrayCumSum({window})[-1])"
    if agg is Aggregation.SUM:
        return f"{total} AS {name}"
    if agg is Aggregation.AVG:
        return f"if({n} = 0, {null}, {total} / {n}) AS {name}"
    raise ValueError(f"feature {feature.name}: no offline computation for aggregation {agg.value}")


@contextmanager
def spine_table(
    store: ClickHouseOfflineStore, columns: Sequence[tuple[str, str]], rows: pa.Table | None = None
) -> Iterator[str]:
    """A uniquely named spine table (``(name, ClickHouse type)`` columns), filled from ``rows`` if given.

    The table is dropped on exit, also on error.
    """
    name = f"{store.database}.`hw_spine_{uuid.uuid4().hex}`"
    definition = ", ".join(f"`{column}` {kind}" for column, kind in columns)
    store.client.command(f"CREATE TABLE {name} ({definition}) ENGINE = Memory")
    try:
        if rows is not None:
            store.client.insert_arrow(name, rows)
        yield name
    finally:
        store.client.command(f"DROP TABLE IF EXISTS {name}")
