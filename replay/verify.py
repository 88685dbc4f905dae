"""Verify that two generations hold the same derived state, and list every difference.

A replay rebuilds a generation from the log; it is correct when it reproduces the state exactly. This
module compares two generations ``a`` and ``b`` part by part:

* **Online state** (Redis), entity id by entity id, over the ids of either generation (found by SCAN of
  ``hw:{gen}:ev:*``):

  - the raw state: each id's events (members and scores of its sorted set), paired by event id;
  - every feature of the id's entity, read through :class:`RedisOnlineStore` at the common clock plus
    each of ``as_of_offsets_ms`` (offsets beyond the retention are skipped), value and newest
    contributing event time;
  - the clock, the idempotency index (``meta:seen``), the partition checkpoints and the counters.

  Values compare exactly, floats by bits: the same events applied in the same order give the same
  floats, so any tolerance would hide a real difference.
* **History** (ClickHouse): for ``transactions`` and ``fraud_labels``, the rows of one generation that
  the other lacks, on the log position and every event column plus ``late``/``late_reason``; the
  processing-time columns ``ingested_at`` and ``apply_seq`` differ between runs by nature and are left
  out. The comparison runs in ClickHouse (``A FINAL EXCEPT B FINAL`` both ways); only counts and the first
  examples come back. A generation without offline tables skips it, with a note.

Difference kinds (``Difference.kind``) and where they point (``Difference.where``):

=====================  ========================================  ==========================================
kind                   where                                     a_value / b_value
=====================  ========================================  ==========================================
``online.clock``       ``meta:clock``                            the clocks (ms)
``online.event``       ``<entity>:<id> <event id>``              ``{"event_time_ms", "fields"}`` or None
``online.feature``     ``<entity>:<id> <feature> @ <as_of>``     ``FeatureValue`` of each
``online.seen``        ``meta:seen <event id>``                  its event time (ms) or None
``online.checkpoint``  ``<topic>:<partition>``                   ``PartitionCheckpoint`` or None
``online.counter``     ``<name>``                                the counts (None: absent)
``history.missing``    ``<table> <topic>:<partition>:<offset>``  the row (compared columns) or None
``history.changed``    ``<table> <topic>:<partition>:<offset>``  the differing columns of each row
``history.columns``    ``<table>``                               the compared columns of each table
=====================  ========================================  ==========================================

Example:
    >>> report = verify(Settings(), "g1", "g2")                          # doctest: +SKIP
    >>> report.ok, report.entity_ids, report.feature_values, report.totals  # doctest: +SKIP
    (False, 20000, 540000, {'online.counter': 1})
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from highwater.progress import progress_bar
from highwater.settings import Settings, validate_generation
from replay.generations import online_generations
from sinks.clickhouse_offline import ClickHouseOfflineStore, table_name
from sinks.offline import UnknownGenerationError
from sinks.online import FeatureValue, OnlineRead, PartitionCheckpoint
from sinks.redis_online import FIELD_SEPARATOR, RedisOnlineStore, split_withscores, text
from streams.features import REGISTRY, EntityLayout, FeatureRegistry

DEFAULT_AS_OF_OFFSETS_MS = (0, -3_600_000, -23 * 3_600_000)
HISTORY_TABLES = ("transactions", "fraud_labels")
IGNORED_HISTORY_COLUMNS = frozenset({"ingested_at", "apply_seq"})
"""Processing-time columns: they differ between two runs over the same log by nature."""
HISTORY_KEY = ("topic", "partition", "offset")
READ_CHUNK = 500
READ_THREADS = 3
SCAN_COUNT = 10_000
SEEN_CHUNK = 50_000
DEFAULT_MAX_EXAMPLES = 1_000
_PendingRead = tuple[int, "Future[OnlineRead]", "Future[OnlineRead]"]
_META = ("meta:clock", "meta:checkpoints", "meta:counters", "meta:seen", "meta:apply_seq")


class GenerationNotFoundError(UnknownGenerationError, ValueError):
    """A generation with neither online state (``hw:{gen}:meta:*``) nor offline tables."""

    def __init__(self, generation: str, online: Sequence[str], offline: Sequence[str]) -> None:
        super().__init__(generation, sorted(set(online) | set(offline)))
        self.args = (
            f"unknown generation {generation!r}: it has no online state and no offline tables "
            f"(online: {', '.join(online) or 'none'}; offline: {', '.join(offline) or 'none'})",
        )


@dataclass(frozen=True)
class Difference:
    """One difference between the generations: its kind, where it is, and each side's value."""

    kind: str
    where: str
    a_value: Any
    b_value: Any


@dataclass
class VerifyReport:
    """What was compared and every difference found (examples capped, totals exact)."""

    a: str
    b: str
    entities: int = 0
    """Entity kinds (card, merchant, ...) with state in either generation."""
    entity_ids: int = 0
    """Entity ids compared (the union of both generations'); one events key each."""
    events: int = 0
    """Online events (sorted-set members) compared, counted once per event present in either."""
    feature_values: int = 0
    """Feature values compared (ids x features x as_of times)."""
    as_of_ms: list[int] = field(default_factory=list)
    """The as_of times the features were read at."""
    seen: int = 0
    checkpoints: int = 0
    counters: int = 0
    history_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per history table, its row count in ``a`` and in ``b``."""
    history_compared: bool = False
    notes: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    """The first ``max_examples`` differences of each kind, in the order found (``totals``: exact counts)."""
    totals: Counter[str] = field(default_factory=Counter)
    """Exact number of differences per kind."""
    max_examples: int = DEFAULT_MAX_EXAMPLES
    """Differences kept per kind."""
    seconds: float = 0.0
    _kept: Counter[str] = field(default_factory=Counter, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the generations are identical in everything compared."""
        return self.difference_count == 0

    @property
    def difference_count(self) -> int:
        """Every difference found, including those past the stored examples."""
        return sum(self.totals.values())

    def add(self, kind: str, where: str, a_value: Any, b_value: Any) -> None:
        """Count one difference, and keep it while fewer than ``max_examples`` of its kind are kept."""
        self.totals[kind] += 1
        if self._kept[kind] < self.max_examples:
            self._kept[kind] += 1
            self.differences.append(Difference(kind, where, a_value, b_value))


def verify(
    settings: Settings,
    a: str,
    b: str,
    *,
    as_of_offsets_ms: Sequence[int] = DEFAULT_AS_OF_OFFSETS_MS,
    registry: FeatureRegistry = REGISTRY,
    progress: bool = True,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    redis_client: redis.Redis | None = None,
    offline: ClickHouseOfflineStore | None = None,
) -> VerifyReport:
    """Compare generations ``a`` and ``b`` (see the module docstring); never changes either.

    ``redis_client`` and ``offline`` default to clients of ``settings``' Redis and ClickHouse (closed on
    return); pass your own to reuse them. Raises :class:`GenerationNotFoundError` (a ``ValueError``) for
    a generation that exists neither online nor offline, ``ValueError`` for an invalid name.
    """
    for generation in (a, b):
        validate_generation(generation)
    started = time.perf_counter()
    own_redis = redis_client is None
    own_offline = offline is None
    client = redis_client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=60.0, socket_connect_timeout=5.0
    )
    try:
        store = offline or ClickHouseOfflineStore.from_settings(settings)
        try:
            offline_generations = store.generations()
            for generation in (a, b):
                if generation not in offline_generations and not _has_online_state(client, generation):
                    raise GenerationNotFoundError(
                        generation, sorted(online_generations(client)), offline_generations
                    )
            report = VerifyReport(a, b, max_examples=max_examples)
            _compare_online(report, client, settings, registry, as_of_offsets_ms, progress)
            missing = [g for g in (a, b) if g not in offline_generations]
            if missing:
                report.notes.append(f"history not compared: no offline tables for {' and '.join(missing)}")
            else:
                _compare_history(report, store)
        finally:
            if own_offline:
                store.close()
    finally:
        if own_redis:
            client.close()
    report.seconds = time.perf_counter() - started
    return report


# --- online ---------------------------------------------------------------------------------------
def _has_online_state(client: redis.Redis, generation: str) -> bool:
    return bool(client.exists(*(f"hw:{generation}:{name}" for name in _META)))


def _entity_ids(client: redis.Redis, generation: str) -> set[tuple[str, str]]:
    """``(entity, id)`` of every events key of ``generation``."""
    prefix = f"hw:{generation}:ev:{{"
    found: set[tuple[str, str]] = set()
    for key in client.scan_iter(match=f"{prefix}*", count=SCAN_COUNT):
        name = text(key)
        if not name.endswith("}"):
            continue
        entity, sep, entity_id = name[len(prefix) : -1].partition(":")
        if sep:
            found.add((entity, entity_id))
    return found


def _compare_online(
    report: VerifyReport,
    client: redis.Redis,
    settings: Settings,
    registry: FeatureRegistry,
    offsets: Sequence[int],
    progress: bool,
) -> None:
    store_a = RedisOnlineStore(client, settings.for_generation(report.a), registry)
    store_b = RedisOnlineStore(client, settings.for_generation(report.b), registry)
    clock_a, clock_b = store_a.clock_ms(), store_b.clock_ms()
    if clock_a != clock_b:
        report.add("online.clock", "meta:clock", clock_a, clock_b)
    report.as_of_ms = _as_of_times(report, clock_a, clock_b, store_a, store_b, offsets)

    ids_a, ids_b = _entity_ids(client, report.a), _entity_ids(client, report.b)
    by_entity: dict[str, list[str]] = {}
    for entity, entity_id in sorted(ids_a | ids_b):
        by_entity.setdefault(entity, []).append(entity_id)
    report.entities = len(by_entity)
    report.entity_ids = sum(len(ids) for ids in by_entity.values())
    known = {e.name for e in registry.entities()}
    for entity in by_entity:
        if entity not in known:
            report.notes.append(f"entity {entity!r} is not in the registry: raw events compared, no features")

    chunks = [
        (entity, ids[start : start + READ_CHUNK])
        for entity, ids in by_entity.items()
        for start in range(0, len(ids), READ_CHUNK)
    ]
    layouts_a, layouts_b = store_a.held_layouts(), store_b.held_layouts()
    unheld = {report.a: registry.unheld(layouts_a), report.b: registry.unheld(layouts_b)}
    features_of = {e: _comparable_features(report, registry, e, unheld) for e in by_entity}
    fields_of = {
        e: (_fields(layouts_a, e), _fields(layouts_b, e)) if e in known else (None, None) for e in by_entity
    }
    label = f"verify {report.a} vs {report.b}"
    # Feature reads run in threads, one chunk ahead: Redis aggregates the next chunk's reads while
    # Python compares this one's.
    with (
        progress_bar(label, report.entity_ids, enabled=progress) as advance,
        ThreadPoolExecutor(READ_THREADS, thread_name_prefix="verify-read") as pool,
    ):

        def submit(entity: str, chunk: list[str]) -> list[_PendingRead]:
            features = features_of[entity]
            if not features:
                return []
            return [
                (
                    as_of,
                    pool.submit(store_a.read, entity, chunk, features, as_of),
                    pool.submit(store_b.read, entity, chunk, features, as_of),
                )
                for as_of in report.as_of_ms
            ]

        ahead = submit(*chunks[0]) if chunks else []
        for i, (entity, chunk) in enumerate(chunks):
            reads, ahead = ahead, submit(*chunks[i + 1]) if i + 1 < len(chunks) else []
            _compare_events(report, client, store_a, store_b, entity, chunk, *fields_of[entity])
            for as_of, read_a, read_b in reads:
                rows_a, rows_b = read_a.result().rows, read_b.result().rows
                _compare_features(report, entity, chunk, features_of[entity], as_of, rows_a, rows_b)
            advance(len(chunk))

    _compare_seen(report, client, store_a.keys.seen, store_b.keys.seen)
    _compare_checkpoints(report, client, store_a, store_b)
    counters_a, counters_b = store_a.counters(), store_b.counters()
    report.counters = len(counters_a.keys() | counters_b.keys())
    for name in sorted(counters_a.keys() | counters_b.keys()):
        if counters_a.get(name) != counters_b.get(name):
            report.add("online.counter", name, counters_a.get(name), counters_b.get(name))


def _as_of_times(
    report: VerifyReport,
    clock_a: int | None,
    clock_b: int | None,
    store_a: RedisOnlineStore,
    store_b: RedisOnlineStore,
    offsets: Sequence[int],
) -> list[int]:
    clocks = [c for c in (clock_a, clock_b) if c is not None]
    if not clocks:
        report.notes.append("features not compared: neither generation has a clock (nothing applied)")
        return []
    base = min(clocks)  # both generations have reached it
    if clock_a != clock_b:
        report.notes.append(f"the clocks differ: features read as of the lower one ({_iso(base)})")
    times: list[int] = []
    for offset in offsets:
        as_of = base + offset
        oldest = max(
            (c - s.retention_ms for c, s in ((clock_a, store_a), (clock_b, store_b)) if c is not None)
        )
        if as_of < oldest:
            report.notes.append(f"as_of clock{offset:+d} ms skipped: beyond the online retention")
        elif as_of not in times:
            times.append(as_of)
    return times


def _compare_events(
    report: VerifyReport,
    client: redis.Redis,
    store_a: RedisOnlineStore,
    store_b: RedisOnlineStore,
    entity: str,
    ids: Sequence[str],
    fields_a: Sequence[str] | None,
    fields_b: Sequence[str] | None,
) -> None:
    pipe = client.pipeline(transaction=False)
    # execute_command skips redis-py's per-score conversion (a third of the time): equal sets give equal
    # answers either way, and the few differing keys are decoded below.
    for entity_id in ids:
        pipe.execute_command("ZRANGE", store_a.keys.events(entity, entity_id), 0, -1, "WITHSCORES")
    for entity_id in ids:
        pipe.execute_command("ZRANGE", store_b.keys.events(entity, entity_id), 0, -1, "WITHSCORES")
    answers = pipe.execute()
    n = len(ids)
    for entity_id, events_a, events_b in zip(ids, answers[:n], answers[n:], strict=True):
        if events_a == events_b:
            report.events += len(split_withscores(events_a)[0])
            continue
        parsed_a, parsed_b = _events_by_id(events_a, fields_a), _events_by_id(events_b, fields_b)
        report.events += len(parsed_a.keys() | parsed_b.keys())
        for event_id in sorted(parsed_a.keys() | parsed_b.keys()):
            value_a, value_b = parsed_a.get(event_id), parsed_b.get(event_id)
            if value_a != value_b:
                report.add("online.event", f"{entity}:{entity_id} {event_id}", value_a, value_b)


def _fields(layouts: dict[str, EntityLayout], entity: str) -> Sequence[str] | None:
    layout = layouts.get(entity)
    return layout.fields if layout is not None else None


def _comparable_features(
    report: VerifyReport,
    registry: FeatureRegistry,
    entity: str,
    unheld: dict[str, dict[str, str]],
) -> list[str]:
    """The entity's features both generations hold; a note for each one only one of them holds.

    ``unheld``: generation -> the features it cannot serve, with the reason (``FeatureRegistry.unheld``).
    """
    if entity not in {e.name for e in registry.entities()}:
        return []
    both = []
    for feature in registry.features_of(entity):
        reasons = {g: r[feature.name] for g, r in unheld.items() if feature.name in r}
        if not reasons:
            both.append(feature.name)
        else:
            held_by = [g for g in (report.a, report.b) if g not in reasons]
            where = f"held by {held_by[0]} only" if held_by else "held by neither"
            report.notes.append(
                f"feature {feature.name} not compared: {where} ("
                + "; ".join(f"{g}: {r}" for g, r in reasons.items())
                + ")"
            )
    return both


def _events_by_id(events: Sequence[Any], fields: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Event id -> its time and fields, from one events key's raw ZRANGE WITHSCORES answer."""
    parsed: dict[str, dict[str, Any]] = {}
    for member, score in zip(*split_withscores(events), strict=True):
        event_id, *values = text(member).split(FIELD_SEPARATOR)
        named: dict[str, str] | list[str] = (
            dict(zip(fields, values, strict=False)) if fields is not None else values
        )
        if event_id in parsed:  # one event stored twice with different fields: keep both visible
            event_id = f"{event_id} (again)"
        parsed[event_id] = {"event_time_ms": int(float(score)), "fields": named}
    return parsed


def _compare_features(
    report: VerifyReport,
    entity: str,
    ids: Sequence[str],
    features: Sequence[str],
    as_of: int,
    rows_a: Sequence[dict[str, FeatureValue]],
    rows_b: Sequence[dict[str, FeatureValue]],
) -> None:
    report.feature_values += len(ids) * len(features)
    for entity_id, row_a, row_b in zip(ids, rows_a, rows_b, strict=True):
        for name in features:
            value_a, value_b = row_a[name], row_b[name]
            if not _same_feature_value(value_a, value_b):
                report.add("online.feature", f"{entity}:{entity_id} {name} @ {_iso(as_of)}", value_a, value_b)


def _same_feature_value(x: FeatureValue, y: FeatureValue) -> bool:
    """Equal value (same type; floats bit for bit) and equal newest event time."""
    if x.latest_event_time_ms != y.latest_event_time_ms:
        return False
    vx, vy = x.value, y.value
    if vx.__class__ is not vy.__class__ or vx != vy:
        return _is_nan(vx) and _is_nan(vy)
    if isinstance(vx, float) and vx == 0.0:  # 0.0 == -0.0, but they are different floats
        return math.copysign(1.0, vx) == math.copysign(1.0, vy)  # type: ignore[arg-type]
    return True


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _compare_seen(report: VerifyReport, client: redis.Redis, key_a: str, key_b: str) -> None:
    seen_a, seen_b = _zset(client, key_a), _zset(client, key_b)
    report.seen = len(seen_a.keys() | seen_b.keys())
    if seen_a == seen_b:
        return
    for event_id in sorted(seen_a.keys() | seen_b.keys()):
        if seen_a.get(event_id) != seen_b.get(event_id):
            report.add("online.seen", f"meta:seen {event_id}", seen_a.get(event_id), seen_b.get(event_id))


def _zset(client: redis.Redis, key: str) -> dict[str, int]:
    """A whole sorted set as member -> score, read in chunks."""
    found: dict[str, int] = {}
    start = 0
    while True:
        members, scores = split_withscores(
            client.execute_command("ZRANGE", key, start, start + SEEN_CHUNK - 1, "WITHSCORES")
        )
        for member, score in zip(members, scores, strict=True):
            found[text(member)] = int(float(score))
        if len(members) < SEEN_CHUNK:
            return found
        start += SEEN_CHUNK


def _compare_checkpoints(
    report: VerifyReport, client: redis.Redis, store_a: RedisOnlineStore, store_b: RedisOnlineStore
) -> None:
    topics: set[str] = set()
    for key in (store_a.keys.checkpoints, store_b.keys.checkpoints):
        topics.update(text(name).rpartition(":")[0] for name in client.hkeys(key))
    for topic in sorted(topics):
        found_a, found_b = store_a.checkpoints(topic), store_b.checkpoints(topic)
        for partition in sorted(found_a.keys() | found_b.keys()):
            report.checkpoints += 1
            ckpt_a: PartitionCheckpoint | None = found_a.get(partition)
            ckpt_b: PartitionCheckpoint | None = found_b.get(partition)
            if ckpt_a != ckpt_b:
                report.add("online.checkpoint", f"{topic}:{partition}", ckpt_a, ckpt_b)


# --- history --------------------------------------------------------------------------------------
def _compare_history(report: VerifyReport, store: ClickHouseOfflineStore) -> None:
    report.history_compared = True
    for kind in HISTORY_TABLES:
        table_a = table_name(store.database, kind, report.a)
        table_b = table_name(store.database, kind, report.b)
        columns_a = _columns(store, f"{kind}_{report.a}")
        columns_b = _columns(store, f"{kind}_{report.b}")
        if not columns_a or not columns_b:
            report.notes.append(f"history of {kind} not compared: a generation lacks the table")
            continue
        if columns_a != columns_b:
            report.add("history.columns", kind, columns_a, columns_b)
        compared = [c for c in columns_a if c in columns_b and c not in IGNORED_HISTORY_COLUMNS]
        report.history_rows[kind] = (_count(store, table_a), _count(store, table_b))
        _compare_table(report, store, kind, table_a, table_b, compared)


def _columns(store: ClickHouseOfflineStore, table: str) -> list[str]:
    result = store.client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "ORDER BY position",
        parameters={"db": store.database, "t": table},
    )
    return [row[0] for row in result.result_rows]


def _count(store: ClickHouseOfflineStore, table: str) -> int:
    return int(store.client.query(f"SELECT count() FROM {table} FINAL").result_rows[0][0])


def _compare_table(
    report: VerifyReport,
    store: ClickHouseOfflineStore,
    kind: str,
    table_a: str,
    table_b: str,
    columns: Sequence[str],
) -> None:
    cols = ", ".join(f"`{c}`" for c in columns)
    key = ", ".join(f"`{c}`" for c in HISTORY_KEY)
    # Rows of one side that the other lacks, tagged by side; a position on both sides is a changed row.
    differing = (
        f"SELECT 'a' AS side, * FROM (SELECT {cols} FROM {table_a} FINAL "
        f"EXCEPT SELECT {cols} FROM {table_b} FINAL) "
        f"UNION ALL SELECT 'b' AS side, * FROM (SELECT {cols} FROM {table_b} FINAL "
        f"EXCEPT SELECT {cols} FROM {table_a} FINAL)"
    )
    totals = store.client.query(
        f"WITH d AS ({differing}) SELECT countIf(has_a AND has_b), countIf(has_a AND NOT has_b), "
        f"countIf(has_b AND NOT has_a) FROM (SELECT max(side = 'a') AS has_a, max(side = 'b') AS has_b "
        f"FROM d GROUP BY {key})"
    ).result_rows[0]
    changed, only_a, only_b = (int(x) for x in totals)
    if not changed + only_a + only_b:
        return
    examples: Sequence[Sequence[Any]] = []
    names: Sequence[str] = []
    if report.max_examples > 0:
        result = store.client.query(
            f"WITH d AS ({differing}) SELECT * FROM d WHERE ({key}) IN (SELECT {key} FROM d "
            f"GROUP BY {key} ORDER BY {key} LIMIT {int(report.max_examples)}) ORDER BY {key}, side"
        )
        examples, names = result.result_rows, result.column_names
    by_position: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for row in examples:
        record = dict(zip(names, row, strict=True))
        side = record.pop("side")
        position = tuple(record[c] for c in HISTORY_KEY)
        by_position.setdefault(position, {})[side] = record
    shown = Counter[str]()
    for (topic, partition, offset), sides in by_position.items():
        where = f"{kind} {topic}:{partition}:{offset}"
        row_a, row_b = sides.get("a"), sides.get("b")
        if row_a is not None and row_b is not None:
            changed_columns = [c for c in columns if row_a[c] != row_b[c]]
            report.add(
                "history.changed",
                where,
                {c: row_a[c] for c in changed_columns},
                {c: row_b[c] for c in changed_columns},
            )
            shown["history.changed"] += 1
        else:
            report.add("history.missing", where, row_a, row_b)
            shown["history.missing"] += 1
    # Exact totals: count the differences past the examples without keeping them.
    for name, total in (("history.changed", changed), ("history.missing", only_a + only_b)):
        if total > shown[name]:
            report.totals[name] += total - shown[name]


# --- helpers --------------------------------------------------------------------------------------
def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_value(value: Any) -> str:
    """A difference's value as one short line of text (for tables and logs)."""
    if value is None:
        return "absent"
    if isinstance(value, FeatureValue):
        shown = "null" if value.value is None else repr(value.value)
        if value.latest_event_time_ms is None:
            return shown
        return f"{shown} (latest event {_iso(value.latest_event_time_ms)})"
    if isinstance(value, PartitionCheckpoint):
        return f"next offset {value.next_offset}, max event time {value.max_event_time_ms}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    return _short(value)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + format_value(value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, float):
        return repr(value)
    return "null" if value is None else str(value)
