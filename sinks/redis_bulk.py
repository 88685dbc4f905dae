"""Bulk writes: one large batch (a replay's chunk) applied with plain commands, leaving exactly the state
the one APPLY_BATCH script of that batch leaves.

**Why.** The apply script works event by event in Lua: every value becomes a Lua string, every id is
checked and recorded, every tile the batch touches is rebuilt by parsing its events' members. That is
about 15 µs an event on the development machine, most of a replay's time, whatever the batch size. A
replay has no freshness to keep, so it gathers hundreds of thousands of records into one chunk
(``stream.replay_chunk_records``) and writes it here: the per-event work runs vectorised in polars in
the writer, commands are encoded by polars (:mod:`sinks.resp`), and Redis is left with little more than
inserting members: one plain ZADD per key with the chunk's events of that key, one ZADD per 5,000 ids,
trims and TTLs in a few EDIT_SORTED_SETS calls, tiles computed by the writer. Ids are checked in the
writer, against the index (``meta:seen``) read once when a run of chunks begins and kept up to date from
each chunk's plan: checking a million ids in Redis (ZMSCORE) cost it about 0.5-0.9 s of its one CPU.

**What it computes**, as the script does for one batch (:data:`sinks.redis_lua.APPLY_BATCH`):

* the first copy of an id in the batch wins; later copies count as duplicates;
* an event older than the batch's trim (:meth:`RedisOnlineStore.clock_and_trim`) is skipped and counted
  (``beyond_online_horizon``); the other ids are checked against ``meta:seen``: those applied before
  count as duplicates, the rest are applied;
* every events key of the batch gets its applied events, is trimmed and gets its TTL;
* every tile of a tiled entity that an event of the batch falls in (at or above the trim's tile) is
  rebuilt from the events its span holds afterwards, when they are at least ``TILE_MIN_EVENTS``: the
  span's events already in Redis are read back, merged with the batch's, put in the sorted set's order
  (time, then member bytes) and packed; tiles below the trim's tile go, TTLs are set;
* checkpoints, counters, clock, apply sequence and pending history move in one APPLY_BATCH of no events.

**Planned ahead.** Working out a chunk's write (:func:`plan_bulk`: which events it applies, their
commands, the tiles it touches, its merge record; polars, which frees the GIL) is apart from sending it
(:func:`apply_bulk`: tile spans read back, inserts, tiles, commit, merge). The stream job's sink plans
chunk k+1 on a thread of its own while its online writer sends chunk k, so the writer's CPU work for one
chunk overlaps Redis inserting the one before. A plan carries the index as chunk k's write leaves it, so
chunk k+1's plan reads nothing from Redis (see :func:`plan_bulk`). The writer holds that index in
memory, as Redis does: the ids within the kept horizon.

**Crash safety.** Events, trims, TTLs and tiles go first, ``ROUND_TRIP_COMMANDS`` commands per round
trip, none of more than about ``ID_STEP`` entries (so other clients are served in between). A stop among
them leaves events ahead of their checkpoints, as a staged write does; the restart re-reads the batch,
and applying an event again changes nothing. The ids must move with the checkpoints and counters,
atomically, but recording a chunk's 250,000 ids in one script would hold Redis for a quarter of a
second. So the commit script stores them as one string, the *merge record* (``meta:seen_merge``: the
trim, then per new id a line of its time and the id), and they are added to ``meta:seen`` afterwards,
``ID_STEP`` per command, then the record is deleted. Until then the record is part of the index: a
writer finishes any record it finds before it writes (:func:`finish_merge`; the stream job's sink does
so when it starts), and finishing a record twice changes nothing. Like staged writes, this assumes one
writer per generation (a replay's one process).

Example:
    >>> seq = write_bulk(store, batch)   # the state store.write(batch) leaves  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any, NamedTuple

import hiredis
import numpy as np
import polars as pl

from sinks.online import WriteBatch
from sinks.redis_lua import EDIT_SORTED_SETS, TILE_MIN_EVENTS
from sinks.redis_online import FIELD_SEPARATOR, RedisOnlineStore, split_withscores
from sinks.resp import bulk, literal, round_trips, variadic

ID_STEP = 5_000
"""Ids per ZMSCORE and per ZADD to ``meta:seen``, and most entries per ZADD to an events key."""
ROUND_TRIP_COMMANDS = 1_000
"""Commands sent per round trip."""

_EDIT_SHA = hashlib.sha1(EDIT_SORTED_SETS.encode()).hexdigest()
_Edit = tuple[str, list[Any], list[Any]]
"""A sorted set's edit: its key, its cuts ``[min, max] * n`` and entries ``[score, member] * n``."""
_EVENTS_SCHEMA = {"ord": pl.Int64, "event_id": pl.String, "event_time": pl.Int64}
_ENTRIES_SCHEMA = {"ord": pl.Int64, "key": pl.String, "event_time": pl.Int64, "member": pl.String}


def write_bulk(store: RedisOnlineStore, batch: WriteBatch) -> int | None:
    """Apply ``batch`` to ``store``'s generation as :meth:`RedisOnlineStore.write` would, with plain
    commands (see the module docstring); returns the apply sequence number its history got, if any."""
    finish_merge(store)
    return apply_bulk(store, plan_bulk(store, batch))


class BulkPlan(NamedTuple):
    """A chunk's bulk write, worked out (:func:`plan_bulk`) and waiting to be sent (:func:`apply_bulk`)."""

    batch: WriteBatch
    trim: int
    partition_max: int | None
    counters: dict[str, int]
    written: pl.DataFrame
    """The entries (ord, key, event_time, member) of the events the chunk applies."""
    tiled: list[_TiledEntity]
    inserts: list[tuple[bytes, int]]
    """Round trips of the events' ZADDs and the keys' trims and TTLs."""
    recorded: pl.DataFrame
    """(event_time, event_id) of the ids the chunk records in ``meta:seen``."""
    record: str | None
    """The merge record of those ids (None: the chunk has no ids, and ``meta:seen`` stays as it is)."""
    seen: pl.DataFrame
    """(event_time, event_id): ``meta:seen`` as the chunk's write leaves it."""


def plan_bulk(store: RedisOnlineStore, batch: WriteBatch, previous: BulkPlan | None = None) -> BulkPlan:
    """Everything of ``batch``'s bulk write that is not sent: which events it applies, and their commands.

    Without ``previous`` the generation's earlier writes must have finished: the plan reads the
    idempotency index (``meta:seen``) whole. With ``previous``, the plan of the chunk written just before
    this one, the index is ``previous.seen``: what ``previous``'s write leaves (its ids recorded, the index
    trimmed below its trim), whether or not that write has begun. So a writer plans chunk k+1 while Redis
    applies chunk k; every write since the plan that read the index must be one of the chain.

    Example:
        >>> plan2 = plan_bulk(store, chunk2, previous=plan1)  # while plan1 is applied  # doctest: +SKIP
        >>> apply_bulk(store, plan2)  # once apply_bulk(store, plan1) has returned  # doctest: +SKIP
    """
    partition_max, trim = store.clock_and_trim(batch)
    events, entries = _frames(store, batch)
    first = events.filter(pl.col("event_id").is_first_distinct())
    kept = first.filter(pl.col("event_time") >= trim)
    seen = _read_seen(store) if previous is None else previous.seen
    new = kept.filter(~pl.col("event_id").is_in(seen.get_column("event_id").implode()))
    entries = entries.filter(pl.col("ord").is_in(first.get_column("ord").implode()))  # the script's
    written = entries.filter(pl.col("ord").is_in(new.get_column("ord").implode()))
    # Events go in plain ZADDs, a reply per key (in a script, converting entries to Lua and back would cost
    # Redis about 1.4 s per million events more); trims and TTLs in few script calls, not two more replies
    # per key.
    inserts = round_trips(_event_commands(entries, written, trim, store.ttl_ms), ROUND_TRIP_COMMANDS)
    recorded = new.select("event_time", "event_id")
    counters = dict(batch.counters)
    skipped = {
        "duplicates": events.height - first.height + kept.height - new.height,
        "beyond_online_horizon": first.height - kept.height,
    }
    for name, n in skipped.items():
        if n:
            counters[name] = counters.get(name, 0) + n
    record = _merge_record(trim, recorded) if first.height else None
    if record is not None:  # as _merge_commands leaves meta:seen
        seen = pl.concat([seen, recorded]).filter(pl.col("event_time") >= trim)
    return BulkPlan(
        batch,
        trim,
        partition_max,
        counters,
        written,
        _tiled_entities(store, entries, trim),
        inserts,
        recorded,
        record,
        seen,
    )


def apply_bulk(store: RedisOnlineStore, plan: BulkPlan) -> int | None:
    """Send ``plan``'s write (see the module docstring); returns the apply sequence number its history got,
    if any. The generation's writes before it must have finished, in order."""
    _send(store, [_pack("SCRIPT", "LOAD", EDIT_SORTED_SETS)])
    # The touched tile spans are read back first, so they hold only events written before this chunk (or,
    # when the chunk is written again after a stop, some of its own: the rebuild takes the union). This
    # thread rebuilds the tiles while Redis inserts.
    held = _read_spans(store, plan.tiled)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk-sender") as sender:
        inserting = sender.submit(_send_trips, store, plan.inserts)
        tiles = _edit_commands(store.ttl_ms, _tile_edits(store, plan.tiled, held, plan.written, plan.trim))
        merges = _merge_commands(store, plan.trim, plan.recorded) if plan.record is not None else []
        inserting.result()
    _send(store, tiles)
    batch = plan.batch
    reply = store.apply_script(
        store.apply_command(
            plan.trim,
            [],
            [],
            {},
            batch.checkpoints,
            plan.counters,
            plan.partition_max,
            batch.history,
            plan.record,
        )
    )
    _merge(store, merges)
    return int(reply[2]) or None


def finish_merge(store: RedisOnlineStore) -> bool:
    """Add the ids of a merge record a stopped bulk write left to ``meta:seen``; whether there was one."""
    (record,) = _send(store, [_pack("GET", store.keys.seen_merge)])
    if record is None:
        return False
    head, _, body = record.decode().partition("\n")
    lines = pl.Series(body.split("\n") if body else [], dtype=pl.String)
    fields = lines.str.split_exact(FIELD_SEPARATOR, 1).struct.unnest()
    rows = fields.select(event_time=pl.col("field_0").cast(pl.Int64), event_id="field_1")
    _merge(store, _merge_commands(store, int(head), rows))
    return True


def _merge_record(trim: int, rows: pl.DataFrame) -> str:
    """The merge record of ids ``rows`` (event_time, event_id): the trim, then a line per id, its time
    and the id separated by 0x1f (which, like a newline, no id contains)."""
    lines = rows.select(pl.concat_str("event_time", "event_id", separator=FIELD_SEPARATOR).str.join("\n"))
    return f"{trim}\n{lines.item()}"


def _merge(store: RedisOnlineStore, trips: list[tuple[bytes, int]]) -> None:
    """Send a merge record's round trips (:func:`_merge_commands`)."""
    _send_trips(store, trips)


def _merge_commands(store: RedisOnlineStore, trim: int, rows: pl.DataFrame) -> list[tuple[bytes, int]]:
    """Round trips recording ids ``rows`` (event_time, event_id) in ``meta:seen``, trimming it as the
    script does, and deleting the merge record."""
    seen = store.keys.seen
    numbered = rows.with_columns(command=pl.int_range(pl.len()) // ID_STEP)
    head = literal("ZADD", seen)
    adds = variadic(numbered, "command", head, 2, bulk(pl.col("event_time")) + bulk(pl.col("event_id")), 2)
    finish = [_pack("ZREMRANGEBYSCORE", seen, "-inf", f"({trim}"), _pack("DEL", store.keys.seen_merge)]
    return [*round_trips(adds, ROUND_TRIP_COMMANDS), (b"".join(finish), len(finish))]


def _frames(store: RedisOnlineStore, batch: WriteBatch) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The batch's events (ord, id, time) and entries (ord, events key, time, member), in batch order
    (``ord``: the event's position), rows before column blocks as :meth:`RedisOnlineStore.prepare` takes
    them."""
    events: list[pl.DataFrame] = []
    entries: list[pl.DataFrame] = []
    base = 0
    if batch.events:
        rows: dict[str, list[Any]] = {name: [] for name in _ENTRIES_SCHEMA}
        for ord_, event in enumerate(batch.events):
            for update in event.updates:
                rows["ord"].append(ord_)
                rows["key"].append(store.keys.events(update.entity, update.entity_id))
                rows["event_time"].append(event.event_time_ms)
                rows["member"].append(FIELD_SEPARATOR.join((event.event_id, *update.fields)))
        entries.append(pl.DataFrame(rows, schema=_ENTRIES_SCHEMA))
        base = len(batch.events)
        events.append(
            pl.DataFrame(
                {
                    "ord": range(base),
                    "event_id": [e.event_id for e in batch.events],
                    "event_time": [e.event_time_ms for e in batch.events],
                },
                schema=_EVENTS_SCHEMA,
            )
        )
    for block in batch.columns:
        n = len(block.event_ids)
        frame = pl.DataFrame(
            {
                "ord": pl.int_range(base, base + n, dtype=pl.Int64, eager=True),
                "event_id": pl.Series(values=block.event_ids, dtype=pl.String),
                "event_time": pl.Series(values=block.event_times_ms, dtype=pl.Int64),
            }
        )
        events.append(frame)
        for entity, entity_ids, columns in block.updates:
            fields = [pl.Series(values=column, dtype=pl.String) for column in columns]
            entries.append(
                frame.select(
                    "ord",
                    key=pl.concat_str(
                        pl.lit(store.keys.events_prefix(entity)),
                        pl.lit(pl.Series(values=entity_ids, dtype=pl.String)),
                        pl.lit("}"),
                    ),
                    event_time="event_time",
                    member=pl.concat_str(
                        [pl.col("event_id"), *(pl.lit(f) for f in fields)], separator=FIELD_SEPARATOR
                    ),
                )
            )
        base += n
    return (
        pl.concat(events) if events else pl.DataFrame(schema=_EVENTS_SCHEMA),
        pl.concat(entries) if entries else pl.DataFrame(schema=_ENTRIES_SCHEMA),
    )


def _read_seen(store: RedisOnlineStore) -> pl.DataFrame:
    """``meta:seen`` whole, as (event_time, event_id), ``ID_STEP`` ids per command."""
    (size,) = _send(store, [_pack("ZCARD", store.keys.seen)])
    pages = [
        _pack("ZRANGE", store.keys.seen, i, i + ID_STEP - 1, "WITHSCORES") for i in range(0, size, ID_STEP)
    ]
    ids: list[bytes] = []
    times: list[Any] = []
    for reply in _send(store, pages):
        members, scores = split_withscores(reply)
        ids += members
        times += scores
    return pl.DataFrame(
        {"event_time": _times(times), "event_id": pl.Series(ids, dtype=pl.Binary).cast(pl.String)},
        schema={"event_time": pl.Int64, "event_id": pl.String},
    )


def _times(scores: list[Any]) -> pl.Series:
    """Sorted-set scores (floats, or their text over RESP2) that hold event times, as integers."""
    score = pl.Series(scores)
    if score.dtype == pl.Binary:
        score = score.cast(pl.String)
    return score.cast(pl.Float64).cast(pl.Int64)


def _event_commands(entries: pl.DataFrame, written: pl.DataFrame, trim: int, ttl: int) -> pl.Series:
    """Plain ZADDs of each key's applied events (``ID_STEP`` at most each), then EDIT_SORTED_SETS calls
    giving every events key of the batch its trim and TTL, about ``ID_STEP`` keys per call."""
    rows = written.select(
        "key", entry=bulk(pl.col("event_time")) + bulk(pl.col("member")), n=pl.len().over("key")
    )
    # Grouping by key alone is a quarter of the cost of numbering rows within keys: only the few keys
    # with more than ID_STEP events in the batch are split into pieces.
    whole = rows.filter(pl.col("n") <= ID_STEP).group_by("key", maintain_order=True)
    split = (
        rows.filter(pl.col("n") > ID_STEP)
        .with_columns(piece=pl.int_range(pl.len()).over("key") // ID_STEP)
        .group_by("key", "piece", maintain_order=True)
    )
    adds = [
        groups.agg(pl.col("entry").str.join(""), pl.len()).select("key", "entry", "len")
        for groups in (whole, split)
    ]
    inserts = pl.concat(adds).select(
        pl.concat_str(
            pl.lit("*"),
            (2 + 2 * pl.col("len")).cast(pl.String),
            pl.lit("\r\n"),
            literal("ZADD"),
            bulk(pl.col("key")),
            "entry",
        )
    )
    return pl.concat([inserts.to_series(), _trim_calls(entries, trim, ttl)])


def _trim_calls(entries: pl.DataFrame, trim: int, ttl: int) -> pl.Series:
    """EDIT_SORTED_SETS calls giving every events key of the batch its trim and TTL, ``ID_STEP`` keys
    per call."""
    numbered = entries.select(pl.col("key").unique(maintain_order=True)).with_columns(
        call=pl.int_range(pl.len()) // ID_STEP
    )
    per_key = literal(1, "-inf", f"({trim}", 0)  # one cut, no entries: 4 arguments
    calls = numbered.group_by("call", maintain_order=True).agg(
        pl.len().alias("keys"), bulk(pl.col("key")).str.join("").alias("names")
    )
    return calls.select(
        pl.concat_str(
            pl.lit("*"),
            (4 + 5 * pl.col("keys")).cast(pl.String),
            pl.lit("\r\n"),
            literal("EVALSHA", _EDIT_SHA),
            bulk(pl.col("keys")),
            "names",
            literal(ttl),
            per_key.repeat_by(pl.col("keys")).list.join(""),
        )
    ).to_series()


class _TiledEntity(NamedTuple):
    """A tiled entity's part of a batch: which of its tiles the batch touches."""

    entity: str
    prefix: str
    """Its events keys' prefix."""
    tile_ms: int
    fields: list[tuple[int, str]]
    """Each tiled field's position in the member (1 = first field) and name."""
    keys: list[str]
    """Its events keys in the batch, in first-seen order: each one's tiles keys are trimmed."""
    touched: pl.DataFrame
    """(key, t): the tiles at or above the trim's tile that an event of the batch falls in."""


def _tiled_entities(store: RedisOnlineStore, entries: pl.DataFrame, trim: int) -> list[_TiledEntity]:
    """The batch's tiled entities that it has events of, and the tiles it touches."""
    found = []
    for entity, prefix, tile_ms, fields in store.tiling():
        tiled = entries.filter(pl.col("key").str.starts_with(prefix))
        if tiled.is_empty():
            continue
        keep_from = trim // tile_ms  # tiles before this one lie wholly below the trim
        touched = (
            tiled.select("key", t=pl.col("event_time") // tile_ms).filter(pl.col("t") >= keep_from).unique()
        )
        keys = tiled.get_column("key").unique(maintain_order=True).to_list()
        found.append(_TiledEntity(entity, prefix, tile_ms, fields, keys, touched))
    return found


def _read_spans(store: RedisOnlineStore, tiled: list[_TiledEntity]) -> list[pl.DataFrame]:
    """Per tiled entity, the events (key, event_time, member) Redis holds in the spans of the tiles the
    batch touches, from each key's lowest touched tile to its highest."""
    plans = [
        (entity.tile_ms, entity.touched.group_by("key").agg(low=pl.col("t").min(), high=pl.col("t").max()))
        for entity in tiled
    ]
    reads = [
        _pack("ZRANGEBYSCORE", key, low * tile_ms, f"({(high + 1) * tile_ms}", "WITHSCORES")
        for tile_ms, ranges in plans
        for key, low, high in ranges.iter_rows()
    ]
    replies = iter(_send(store, reads))
    held = []
    for _, ranges in plans:
        keys: list[str] = ranges.get_column("key").to_list()
        counts: list[int] = []
        members: list[bytes] = []
        scores: list[Any] = []  # floats (RESP3) or their text (RESP2)
        for reply in islice(replies, len(keys)):
            held_members, held_scores = split_withscores(reply)
            members += held_members
            scores += held_scores
            counts.append(len(held_members))
        held.append(
            pl.DataFrame(
                {
                    "key": pl.Series(keys, dtype=pl.String).gather(np.repeat(np.arange(len(keys)), counts)),
                    "event_time": _times(scores),
                    "member": pl.Series(members, dtype=pl.Binary).cast(pl.String),
                },
                schema={name: _ENTRIES_SCHEMA[name] for name in ("key", "event_time", "member")},
            )
        )
    return held


def _tile_edits(
    store: RedisOnlineStore,
    tiled: list[_TiledEntity],
    held: list[pl.DataFrame],
    written: pl.DataFrame,
    trim: int,
) -> Iterator[_Edit]:
    """Every tiles key of the batch's tiled entity ids: its touched tiles rebuilt, trimmed."""
    for (entity, prefix, tile_ms, fields, keys, touched), theirs in zip(tiled, held, strict=True):
        ours = written.filter(pl.col("key").str.starts_with(prefix))
        spans = _full_spans(touched, theirs, ours, trim, tile_ms)
        sizes = spans.group_by("key", "t", maintain_order=True).len().rows()
        values = spans.get_column("member").str.split(FIELD_SEPARATOR)
        cut = ["-inf", f"({trim // tile_ms}"]
        for position, field in fields:
            # Lua's tonumber of the field, packed '<d': the same doubles, in the set's order.
            packed = values.list.get(position).cast(pl.Float64).to_numpy().astype("<f8").tobytes()
            rebuilt: dict[str, tuple[list[Any], list[Any]]] = {}
            start = 0
            for key, t, n in sizes:
                cuts, scored = rebuilt.setdefault(key, ([], []))
                cuts += (t, t)
                scored += (t, f"{t}:".encode() + packed[8 * start : 8 * (start + n)])
                start += n
            for key in keys:
                cuts, scored = rebuilt.get(key, ([], []))
                yield store.keys.tiles(entity, key[len(prefix) : -1], field), [*cuts, *cut], scored


def _edit_commands(ttl: int, edits: Iterable[_Edit]) -> list[bytes]:
    """EDIT_SORTED_SETS calls applying ``edits``, each of at most about ``ID_STEP`` entries and keys (a
    key with more entries is split over calls, its cuts made by the first)."""
    commands: list[bytes] = []
    keys: list[str] = []
    args: list[Any] = [ttl]
    size = 0
    for key, cuts, scored in edits:
        for i in range(0, max(len(scored), 1), 2 * ID_STEP):
            piece = scored[i : i + 2 * ID_STEP]
            if keys and size + len(piece) // 2 > ID_STEP:
                commands.append(_pack("EVALSHA", _EDIT_SHA, len(keys), *keys, *args))
                keys, args, size = [], [ttl], 0
            first = cuts if i == 0 else []
            keys.append(key)
            args += (len(first) // 2, *first, len(piece) // 2, *piece)
            size += 1 + len(piece) // 2
    if keys:
        commands.append(_pack("EVALSHA", _EDIT_SHA, len(keys), *keys, *args))
    return commands


def _full_spans(
    touched: pl.DataFrame, held: pl.DataFrame, written: pl.DataFrame, trim: int, tile_ms: int
) -> pl.DataFrame:
    """The events (key, t, event_time, member) of the touched tile spans that hold at least
    ``TILE_MIN_EVENTS`` once the batch is written (``held``, those in Redis at or above the trim, and
    the batch's), in the sorted set's order."""
    ours = written.select("key", "event_time", "member")
    # A member Redis holds that the batch writes again (a chunk written again after a stop) is the
    # batch's: ZADD gives it the batch's score.
    theirs = held.filter(pl.col("event_time") >= trim).join(ours, on=["key", "member"], how="anti")
    return (
        pl.concat([theirs, ours])
        .with_columns(t=pl.col("event_time") // tile_ms)
        .join(touched, on=["key", "t"], how="semi")
        .filter(pl.len().over("key", "t") >= TILE_MIN_EVENTS)
        .sort("key", "t", "event_time", "member")
    )


def _pack(*args: Any) -> bytes:
    return hiredis.pack_command(args)


def _send_trips(store: RedisOnlineStore, trips: list[tuple[bytes, int]]) -> list[Any]:
    """Round trips of encoded commands (:func:`sinks.resp.round_trips`); the first error reply raised."""
    replies: list[Any] = []
    for payload, count in trips:
        for reply in store.send_encoded(payload, count):
            if isinstance(reply, Exception):
                raise reply
            replies.append(reply)
    return replies


def _send(store: RedisOnlineStore, commands: list[bytes]) -> list[Any]:
    """``commands``' replies, ``ROUND_TRIP_COMMANDS`` per round trip; the first error reply raised."""
    steps = range(0, len(commands), ROUND_TRIP_COMMANDS)
    trips = [(b"".join(part), len(part)) for part in (commands[i : i + ROUND_TRIP_COMMANDS] for i in steps)]
    return _send_trips(store, trips)
