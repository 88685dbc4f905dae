"""Redis implementation of the online store.

Key layout (``{gen}`` is the generation namespace, default ``g1``; ``{entity:id}`` is a Redis Cluster
hash tag):

=================================  ======  =========================================================
``hw:live``                        string  the live generation: what the server reads (unset: the
                                           configured ``online.generation``)
``hw:{gen}:ev:{entity:id}``        zset    score = event_time ms; member = event id, then the entity's
                                           feature fields, 0x1f-separated, in ``meta:layout`` order
``hw:{gen}:tl:{entity:id}:field``  zset    tiled entities only (``Entity.tile``): score = tile
                                           index t, covering event times [t * tile_ms, (t+1) *
                                           tile_ms); member = ``t:`` then the values of ``field``
                                           of the events in that span, packed as little-endian
                                           doubles in the events set's order
``hw:{gen}:meta:layout``           hash    entity -> JSON ``{"fields": [...], "max_window_ms": N,
                                           "tile_ms": N, "tiled_fields": [...]}`` (no tile keys: no
                                           tiles): what the generation's events carry, recorded by
                                           its first write and never changed (``EntityLayout``)
``hw:{gen}:meta:seen``             zset    member = applied event id, score = its event_time: the
                                           idempotency index (first applied wins)
``hw:{gen}:meta:seen_merge``       string  a bulk write's ids on their way into ``meta:seen``, left only
                                           by a stop between its commit and their merge
                                           (:mod:`sinks.redis_bulk`)
``hw:{gen}:meta:checkpoints``      hash    ``topic:partition`` -> ``next_offset:max_event_time``
``hw:{gen}:meta:clock``            string  highest applied event_time (the serving clock), ms
``hw:{gen}:meta:counters``         hash    applied, late, malformed:<kind>, duplicates,
                                           beyond_online_horizon, recorded:<history-only topic>
``hw:{gen}:meta:apply_seq``        string  the last apply sequence number handed out (1, 2, ...: each
                                           write with history spans takes the next; history tags each
                                           event with its batch's number: the processing order)
``hw:{gen}:meta:history_pending``  hash    apply_seq -> JSON ``[[topic, partition, start, end,
                                           clock_before], ...]``: applied batches whose history is
                                           not confirmed written yet (``PendingHistory``)
=================================  ======  =========================================================

Feature definitions change; generations do not. A generation keeps the layout it was created with, so
code that adds a feature still reads (and keeps writing) older generations correctly, and refuses a
feature a generation does not hold with :class:`~sinks.online.FeatureNotHeldError`. Serving it takes a
backfill: ``highwater replay`` into a new generation (created with the new layout), then
``highwater generations promote``.

Why raw events rather than pre-aggregated partial sums: every window boundary (T-W, T] is then exact for
any T, windows empty out by themselves as T moves, and a sum is one left fold over the window's events
in (event_time, member) order, which the point-in-time SQL of training sets and the feature log
reproduces bit for bit. Partial sums would break that: floating-point addition does not associate.

Exact tiles keep it while sparing a busy entity's reads the cost of parsing every event (about 0.6 µs
each in Lua, so 1 ms for a merchant's 1,600 events of a day): a tiled entity also keeps, per numeric
field and per tile of ``Entity.tile`` width, the values themselves, packed. A read folds the raw events
at the window's edges and the tiles' unpacked values between, the same numbers in the same order, so
the same result. The apply script rebuilds every tile a batch touches from the events the tile's span
now holds (late, out-of-order and duplicate events included); a read trusts a tile only when its length
equals its span's event count and reads the events otherwise; tiles are trimmed and expire with their
events. Reads use tiles only when a window holds many more events than tiles. Idempotency is by
event id: an id already in ``meta:seen`` is a duplicate and changes nothing, so applying the same
offsets twice is harmless. Events older than the kept horizon (longest window + online retention +
out-of-orderness + lateness behind the partition clock) are trimmed from both sets as the clock moves;
idle entities expire by TTL (processing time).

A batch is applied by one Lua script (atomic): events, partition checkpoints, counters and clock move
together, so a crash never leaves offsets committed for writes that did not happen or the reverse.
Redis runs one script at a time and serves no read meanwhile, so a batch of more entries than
``online.script_max_entries`` (a job catching up, a replay) is *staged*: its events go first, grouped by
key, in scripts of at most that many entries, then one script checks and records its ids and moves the
checkpoints, counters and clock. A stop between them leaves events applied ahead of their checkpoints,
never the reverse; the restart re-reads the batch, and applying an event again changes nothing. Ids are
checked against ``meta:seen`` before the parts and again by the last script, which agree while one
writer applies a generation's batches, as the stream job's one process does (with several Bytewax
workers, each batch is applied in one script). The last script's work grows with the batch's events
(120-190 ms for the 33,000 ids of a replay batch on the development machine). These scripts touch many
keys, which suits a standalone Redis (or one primary); for Redis Cluster a batch would be split per slot
and the idempotency index kept per slot.

Example:
    >>> store = RedisOnlineStore.from_settings(Settings())   # doctest: +SKIP
    >>> answer = store.read("card", ["card-1"], ["card_txn_count_1h"], 1_772_409_600_000)  # doctest: +SKIP
    >>> answer.rows  # doctest: +SKIP
    [{'card_txn_count_1h': FeatureValue(value=2, latest_event_time_ms=1772409000000)}]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import hiredis
import polars as pl
import redis

from highwater.settings import Settings
from sinks.online import (
    AsOfTooOldError,
    EventColumns,
    FeatureNotHeldError,
    FeatureValue,
    HistorySpan,
    NoClockError,
    OnlineRead,
    PartitionCheckpoint,
    PendingEvent,
    PendingHistory,
    ReadRequest,
    WriteBatch,
)
from sinks.redis_lua import APPLY_BATCH, READ_FEATURES, RECORD_LAYOUT
from streams.features import REGISTRY, EntityLayout, Feature, FeatureRegistry

_new_tuple = tuple.__new__
LIVE_GENERATION_KEY = "hw:live"
"""The generation readers that follow the live pointer read (``highwater generations promote`` sets it)."""
FIELD_SEPARATOR = "\x1f"


class PreparedWrite(NamedTuple):
    """A batch's write, encoded by :meth:`RedisOnlineStore.prepare`: one script that applies it all, or,
    for a batch of more entries than one script may apply, its events staged in ``staged`` and then
    ``command``, the script of its ids, checkpoints, counters and clock."""

    command: bytes
    staged: StagedEvents | None = None


class StagedEvents(NamedTuple):
    """A large batch's events, grouped by key into parts of a bounded number of entries.

    ``event_ids``: the ids of the batch's events within the kept horizon, checked against ``meta:seen``
    before the parts are sent; ``parts``: per script, events key -> ``[score, member] * n``;
    ``commands``: the parts encoded, for when none of those ids was applied before (the usual case).
    """

    event_ids: list[str]
    trim: int
    parts: list[dict[str, list[str | int]]]
    commands: list[bytes]


class KeyLayout:
    """Names of the Redis keys of one generation."""

    def __init__(self, generation: str) -> None:
        self.generation = generation
        self.prefix = f"hw:{generation}"
        self.checkpoints = f"{self.prefix}:meta:checkpoints"
        self.clock = f"{self.prefix}:meta:clock"
        self.counters = f"{self.prefix}:meta:counters"
        self.seen = f"{self.prefix}:meta:seen"
        self.seen_merge = f"{self.seen}_merge"  # the name APPLY_BATCH derives from the seen key
        self.apply_seq = f"{self.prefix}:meta:apply_seq"
        self.history_pending = f"{self.prefix}:meta:history_pending"
        self.layout = f"{self.prefix}:meta:layout"
        self._events = f"{self.prefix}:ev:{{"

    def events(self, entity: str, entity_id: str) -> str:
        """The events of one entity id."""
        return f"{self._events}{entity}:{entity_id}}}"

    def tiles(self, entity: str, entity_id: str, field: str) -> str:
        """The exact tiles of one entity id's ``field`` (tiled entities only, see :class:`EntityLayout`)."""
        return f"{self.prefix}:tl:{{{entity}:{entity_id}}}:{field}"

    def events_prefix(self, entity: str) -> str:
        """What every one of ``entity``'s events keys starts with: ``events(e, i) == prefix + i + "}"``."""
        return f"{self._events}{entity}:"


class RedisOnlineStore:
    """The online store on Redis; see the module docstring for layout and guarantees."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        registry: FeatureRegistry = REGISTRY,
        *,
        follow_live: bool = False,
    ) -> None:
        self._redis = client
        self._follow_live = follow_live
        self._registry = registry
        self.keys = KeyLayout(settings.online.generation)
        self.retention_ms = settings.online.retention_ms
        self._ttl_ms = settings.online.ttl_ms
        self._script_max_entries = settings.online.script_max_entries
        self._margin_ms = (
            settings.online.retention_ms
            + settings.stream.max_out_of_orderness_ms
            + settings.stream.allowed_lateness_ms
        )
        self._layouts: dict[str, EntityLayout] | None = None
        self._tiling_plan: list[tuple[str, str, int, list[tuple[int, str]]]] | None = None
        self._default_layout_json = {
            e.name: _layout_json(registry.layout(e.name)) for e in registry.entities()
        }
        self._default_layout_args = [x for pair in self._default_layout_json.items() for x in pair]
        self._record_layout = client.register_script(RECORD_LAYOUT)
        self._apply = client.register_script(APPLY_BATCH)
        self._read = client.register_script(READ_FEATURES)

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: FeatureRegistry = REGISTRY, *, follow_live: bool = False
    ) -> RedisOnlineStore:
        """A store on the Redis at ``settings.redis_url``.

        ``follow_live``: reads go to the generation the live pointer names at each read (the server's
        mode), falling back to ``settings.online.generation`` while no generation was promoted; writes
        always go to ``settings.online.generation``.
        """
        # Timeouts turn a hung Redis into a fast error (UNAVAILABLE for the server) instead of a stall.
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=30.0, socket_connect_timeout=5.0)
        return cls(client, settings, registry, follow_live=follow_live)

    @property
    def ttl_ms(self) -> int:
        """The processing-time TTL every write gives the keys it touches."""
        return self._ttl_ms

    @property
    def keep_ms(self) -> int:
        """How far behind its partition's clock an event is still kept (from the generation's layout)."""
        return self._margin_ms + max(layout.max_window_ms for layout in self.layouts().values())

    def layouts(self) -> dict[str, EntityLayout]:
        """The generation's layout of each entity it holds; the first writer records its registry's.

        A generation's layout is fixed when it is first written: every later writer (newer code
        included) keeps to it, so its events never change shape, and entities added to the code later
        are not held by it (their history would start at the deploy, not at the log's start).
        """
        if self._layouts is None:
            flat = self._record_layout(keys=[self.keys.layout], args=self._default_layout_args)
            self._layouts = {text(k): _parse_layout(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        return self._layouts

    def held_layouts(self, generation: str | None = None) -> dict[str, EntityLayout]:
        """The layouts reads of a generation (default: this store's) resolve to; records nothing."""
        return generation_layouts(self._redis, generation or self.keys.generation, self._registry)

    # --- writing ------------------------------------------------------------------------------------
    def write(self, batch: WriteBatch) -> int | None:
        """Apply ``batch`` atomically; an event whose id was applied before is counted, not re-applied.

        Returns the apply sequence number its pending history got (None: it had no history spans).
        """
        return self.write_prepared(self.prepare(batch))

    def clock_and_trim(self, batch: WriteBatch) -> tuple[int | None, int]:
        """The batch's clock candidate (its highest partition clock; None: no feature topic's) and the
        event time below which its write skips and trims events (0: none)."""
        # Only feature topics move the clock: a history-only topic's times (label_time) are another clock.
        partition_max = max(
            (
                c.max_event_time_ms
                for c in batch.checkpoints
                if c.max_event_time_ms is not None and self._registry.entities_of_topic(c.topic)
            ),
            default=None,
        )
        # Trimming by the batch's highest partition clock is safe: reads never reach below
        # clock - retention - longest window, and keep_ms is larger than that span.
        trim = (partition_max - self.keep_ms) if partition_max is not None else 0
        return partition_max, trim

    def prepare(self, batch: WriteBatch) -> PreparedWrite:
        """The command that applies ``batch``, encoded: the CPU-bound half of :meth:`write`.

        A writer that keeps a round trip in flight prepares the next batch meanwhile, on its own thread.

        Example:
            >>> store.write_prepared(store.prepare(batch))   # what store.write(batch) does  # doctest: +SKIP
        """
        partition_max, trim = self.clock_and_trim(batch)
        events_key = self.keys.events
        event_ids: list[str] = []
        event_times: list[int] = []
        by_key: dict[str, list[str | int]] = {}  # per events key: [score (event time), member] * n
        first_seen: set[str] = set()
        repeated = 0
        for event in batch.events:
            event_id = event.event_id
            if event_id in first_seen:  # a second copy in the same batch: the script cannot tell
                repeated += 1
                continue
            first_seen.add(event_id)
            event_ids.append(event_id)
            event_times.append(event.event_time_ms)
            for update in event.updates:
                member = FIELD_SEPARATOR.join((event_id, *update.fields))
                key = events_key(update.entity, update.entity_id)
                entries = by_key.get(key)
                if entries is None:
                    by_key[key] = [event.event_time_ms, member]
                else:
                    entries += (event.event_time_ms, member)
        for block in map(_listed, batch.columns):
            fresh: list[bool] = []  # per event: False for a repeated copy
            for event_id, event_time in zip(block.event_ids, block.event_times_ms, strict=True):
                if event_id in first_seen:
                    repeated += 1
                    fresh.append(False)
                    continue
                first_seen.add(event_id)
                event_ids.append(event_id)
                event_times.append(event_time)
                fresh.append(True)
            for entity, entity_ids, columns in block.updates:
                members = [
                    FIELD_SEPARATOR.join(fields) for fields in zip(block.event_ids, *columns, strict=True)
                ]
                prefix = self.keys.events_prefix(entity)
                for new, event_time, entity_id, member in zip(
                    fresh, block.event_times_ms, entity_ids, members, strict=True
                ):
                    if new:
                        key = f"{prefix}{entity_id}}}"
                        entries = by_key.get(key)
                        if entries is None:
                            by_key[key] = [event_time, member]
                        else:
                            entries += (event_time, member)
        counters = dict(batch.counters)
        if repeated:
            counters["duplicates"] = counters.get("duplicates", 0) + repeated
        if sum(map(len, by_key.values())) // 2 <= self._script_max_entries:
            return PreparedWrite(
                self.apply_command(
                    trim,
                    event_ids,
                    event_times,
                    by_key,
                    batch.checkpoints,
                    counters,
                    partition_max,
                    batch.history,
                )
            )
        # Too many entries for one script: the events go first, by key, in parts of a bounded size;
        # then one script checks and records their ids and moves checkpoints, counters and clock. Events
        # below the horizon are left out of the parts, as the one-script write skips them.
        below = min(event_times) < trim
        parts = self._parts(by_key, trim if below else None)
        staged = StagedEvents(
            [e for e, at in zip(event_ids, event_times, strict=True) if at >= trim] if below else event_ids,
            trim,
            parts,
            [self._part_command(part, trim) for part in parts],
        )
        command = self.apply_command(
            trim, event_ids, event_times, {}, batch.checkpoints, counters, partition_max, batch.history
        )
        return PreparedWrite(command, staged)

    def apply_command(
        self,
        trim: int,
        event_ids: list[str],
        event_times: list[int],
        by_key: dict[str, list[str | int]],
        checkpoints: Sequence[PartitionCheckpoint],
        counters: dict[str, int],
        clock_candidate: int | None,
        history: Sequence[HistorySpan] | None,
        seen_merge: str | None = None,
    ) -> bytes:
        """APPLY_BATCH of these events (ids checked against ``meta:seen`` and recorded there), these
        entries per events key, checkpoints and counters, encoded; with ``seen_merge``, the script also
        stores that record (a bulk write's ids, :mod:`sinks.redis_bulk`) at ``KeyLayout.seen_merge``."""
        keys = [
            self.keys.checkpoints,
            self.keys.clock,
            self.keys.counters,
            self.keys.seen,
            self.keys.history_pending,
            self.keys.apply_seq,
            *by_key,
        ]
        args: list[str | int] = [self._ttl_ms, trim, len(event_ids), *event_ids, *event_times, len(by_key)]
        tiling = self.tiling()
        for key, scored in by_key.items():
            args.append(len(scored) // 2)
            args += scored
            for entity, prefix, tile_ms, fields in tiling:
                if key.startswith(prefix):
                    entity_id = key[len(prefix) : -1]
                    args += (tile_ms, len(fields))
                    for position, field in fields:
                        args += (position, len(keys) + 1)  # KEYS index, from 1
                        keys.append(self.keys.tiles(entity, entity_id, field))
                    break
            else:
                args.append(0)
        args.append(len(checkpoints))
        for ckpt in checkpoints:
            max_time = "" if ckpt.max_event_time_ms is None else str(ckpt.max_event_time_ms)
            args += (f"{ckpt.topic}:{ckpt.partition}", f"{ckpt.next_offset}:{max_time}")
        args.append(len(counters))
        for name, increment in counters.items():
            args += (name, increment)
        args.append("" if clock_candidate is None else clock_candidate)
        args.append("" if history is None else _spans_json(history))
        if seen_merge is not None:
            args.append(seen_merge)
        # Packed here rather than by redis-py, whose packing visits every argument in Python first.
        command = ("EVALSHA", self._apply.sha, len(keys), *keys, *args)
        return hiredis.pack_command(command)  # type: ignore[arg-type]  # stub: a 1-tuple

    def _part_command(self, part: dict[str, list[str | int]], trim: int) -> bytes:
        """APPLY_BATCH of entries alone: no ids (so ``meta:seen`` is neither read nor written), no
        checkpoints, counters or clock."""
        return self.apply_command(trim, [], [], part, [], {}, None, None)

    def _parts(
        self, by_key: dict[str, list[str | int]], trim: int | None
    ) -> list[dict[str, list[str | int]]]:
        """``by_key``'s entries (those at or above ``trim``, if given) in parts of at most
        ``script_max_entries`` entries (a key with more than that is split over consecutive parts)."""
        limit = 2 * self._script_max_entries
        parts: list[dict[str, list[str | int]]] = [{}]
        size = 0
        for key, entries in by_key.items():
            scored = entries
            if trim is not None:
                pairs = zip(entries[::2], entries[1::2], strict=True)
                scored = [x for at, member in pairs if int(at) >= trim for x in (at, member)]
            if size and size + len(scored) > limit:
                parts.append({})
                size = 0
            if len(scored) <= limit:
                parts[-1][key] = scored
                size += len(scored)
                continue
            for start in range(0, len(scored), limit):  # a key of more entries than a part: split
                if size:
                    parts.append({})
                piece = scored[start : start + limit]
                parts[-1][key] = piece
                size = len(piece)
        return [part for part in parts if part]

    def tiling(self) -> list[tuple[str, str, int, list[tuple[int, str]]]]:
        """Per tiled entity of the generation: its name, its events keys' prefix, tile width, and each
        tiled field's position in the member (1 = first field) and name."""
        if self._tiling_plan is None:
            self._tiling_plan = [
                (
                    entity,
                    self.keys.events_prefix(entity),
                    layout.tile_ms,
                    [(layout.fields.index(name) + 1, name) for name in layout.tiled_fields],
                )
                for entity, layout in self.layouts().items()
                if layout.tile_ms
            ]
        return self._tiling_plan

    def write_prepared(self, prepared: PreparedWrite) -> int | None:
        """Apply a batch :meth:`prepare` encoded (as :meth:`write` does; same result).

        A staged batch's parts are sent one at a time, so other clients are served between them. Its
        events are then in Redis before its checkpoints: a stop in between re-reads the batch on restart,
        and applying the same events again changes nothing (same member, same score), while their ids,
        the counters and the clock move once, in the last script. The ids are checked against
        ``meta:seen`` before the parts and again by that script, which agree while this store is the
        generation's only writer.
        """
        staged = prepared.staged
        if staged is not None:
            applied = self._applied_before(staged.event_ids)
            for part, command in zip(staged.parts, staged.commands, strict=True):
                if applied:
                    part = {key: _without(scored, applied) for key, scored in part.items()}
                    command = self._part_command(part, staged.trim)
                self.apply_script(command)
        reply = self.apply_script(prepared.command)
        return int(reply[2]) or None

    def apply_script(self, command: bytes) -> Any:
        """Send an encoded APPLY_BATCH (:meth:`apply_command`), loading the script if Redis lost it."""
        try:
            return self._send(command)
        except redis.exceptions.NoScriptError:  # e.g. after SCRIPT FLUSH or a Redis restart
            self._redis.script_load(APPLY_BATCH)
            return self._send(command)

    def _applied_before(self, event_ids: list[str]) -> set[str]:
        """Those of ``event_ids`` already in ``meta:seen``."""
        step = 5_000
        commands = [
            hiredis.pack_command(("ZMSCORE", self.keys.seen, *event_ids[i : i + step]))  # type: ignore[arg-type]
            for i in range(0, len(event_ids), step)
        ]
        applied: set[str] = set()
        for i, reply in zip(range(0, len(event_ids), step), self.send_many(commands), strict=True):
            if isinstance(reply, Exception):
                raise reply
            applied.update(
                e for e, score in zip(event_ids[i : i + step], reply, strict=True) if score is not None
            )
        return applied

    def _send(self, command: bytes) -> Any:
        """One packed command's round trip; its error reply raised."""
        (reply,) = self.send_many([command])
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def send_many(self, commands: list[bytes]) -> list[Any]:
        """Packed commands in one round trip on a pooled connection (dropped if it fails mid-way); per
        command its reply, or the error reply it got."""
        return self.send_encoded(b"".join(commands), len(commands))

    def send_encoded(self, payload: bytes, count: int) -> list[Any]:
        """``count`` commands already encoded together in ``payload``, as :meth:`send_many` sends them."""
        pool = self._redis.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command([payload])  # one send: each item of a list is one sendall
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(connection.read_response())
                except redis.exceptions.ResponseError as error:  # the reply was read: the rest follow
                    replies.append(error)
            return replies
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def pending_history(self) -> list[PendingHistory]:
        """Applied batches whose history is not confirmed written, in apply order."""
        pending = [
            PendingHistory(int(seq), tuple(HistorySpan(*span) for span in json.loads(spans)))
            for seq, spans in self._redis.hgetall(self.keys.history_pending).items()
        ]
        return sorted(pending, key=lambda p: p.apply_seq)

    def confirm_history(self, apply_seq: int) -> None:
        """Forget batch ``apply_seq``'s pending history (its history is written)."""
        self._redis.hdel(self.keys.history_pending, apply_seq)

    # --- reading ------------------------------------------------------------------------------------
    def read(
        self,
        entity: str,
        entity_ids: Sequence[str],
        features: Sequence[str],
        as_of_ms: int | None = None,
        pending: PendingEvent | None = None,
    ) -> OnlineRead:
        """Per id, each feature as of ``as_of_ms`` or the clock (exact semantics, docs/features.md).

        One round trip: the clock, the retention check and every id's aggregates come from one script.
        ``pending`` counts as applied for its id unless its id was applied already (see
        :class:`~sinks.online.PendingEvent`).
        """
        specs = [self._registry.feature(name) for name in features]
        flat = self._read(
            keys=self._read_keys, args=self._read_args(entity, entity_ids, specs, as_of_ms, pending)
        )
        return self._answer(flat, specs, len(entity_ids), as_of_ms)

    def read_many(self, requests: Sequence[ReadRequest]) -> list[OnlineRead | Exception]:
        """Several reads in one pipelined round trip; per request its answer or the error it alone raises.

        Example:
            >>> store.read_many([ReadRequest("card", ["c1"], ["card_txn_count_1h"], T),   # doctest: +SKIP
            ...                  ReadRequest("merchant", ["m1"], ["merchant_txn_count_1h"], T)])
            [OnlineRead(...), OnlineRead(...)]
        """
        plans = [
            (request, [self._registry.feature(name) for name in request.features]) for request in requests
        ]
        keys = self._read_keys
        for attempt in range(2):
            # Packed here rather than by a redis-py pipeline, which visits every argument in Python
            # first: a tenth of a millisecond of a Score's.
            commands = [
                hiredis.pack_command(
                    (  # type: ignore[arg-type]  # stub: a 1-tuple
                        "EVALSHA",
                        self._read.sha,
                        len(keys),
                        *keys,
                        *self._read_args(
                            request.entity, request.entity_ids, specs, request.as_of_ms, request.pending
                        ),
                    )
                )
                for request, specs in plans
            ]
            replies = self.send_many(commands)
            if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self._read.sha = self._redis.script_load(READ_FEATURES)  # e.g. after SCRIPT FLUSH
                continue
            break
        answers: list[OnlineRead | Exception] = []
        for (request, specs), reply in zip(plans, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            try:
                answers.append(self._answer(reply, specs, len(request.entity_ids), request.as_of_ms))
            except (NoClockError, AsOfTooOldError, FeatureNotHeldError) as error:
                answers.append(error)
        return answers

    def served_layouts(self) -> dict[str, EntityLayout]:
        """The layouts of the generation reads go to now: the live one when following it; records nothing.

        Example:
            >>> REGISTRY.unheld(store.served_layouts())   # features reads cannot serve  # doctest: +SKIP
            {}
        """
        generation = self.keys.generation
        if self._follow_live:
            live = self._redis.get(LIVE_GENERATION_KEY)
            generation = text(live) if live is not None else generation
        return self.held_layouts(generation)

    @property
    def _read_keys(self) -> list[str]:
        return [LIVE_GENERATION_KEY] if self._follow_live else []

    def _read_args(
        self,
        entity: str,
        entity_ids: Sequence[str],
        specs: Sequence[Feature],
        as_of_ms: int | None,
        pending: PendingEvent | None,
    ) -> list[str | int]:
        """READ_FEATURES' arguments (see the script)."""
        args: list[str | int] = [self.keys.generation, entity, len(entity_ids), *entity_ids]
        args += ["" if as_of_ms is None else as_of_ms, self.retention_ms]
        args += [self._default_layout_json[entity], len(specs)]
        for spec in specs:
            args += (spec.aggregation.value, spec.window_ms, spec.field or "")
        if pending is not None and entity in pending.entity_ids:
            args += (pending.event_id, pending.event_time_ms, pending.entity_ids[entity], len(pending.fields))
            for item in pending.fields.items():
                args += item
        return args

    def _answer(
        self, flat: list[Any], specs: Sequence[Feature], n_ids: int, as_of_ms: int | None
    ) -> OnlineRead:
        """The script's reply as an :class:`OnlineRead`, or the error its status says."""
        status, raw_as_of, raw_clock, generation = flat[0], flat[1], flat[2], text(flat[3])
        if status == b"not_held":
            feature = specs[int(raw_as_of) - 1]
            reason = self._registry.unheld(self.held_layouts(generation)).get(feature.name)
            raise FeatureNotHeldError(feature.name, generation, reason or text(raw_clock))
        clock = int(raw_clock) if raw_clock != b"" else None
        if status == b"no_clock":
            raise NoClockError(
                f"no event has been applied to generation {generation} yet, so there is no event-time clock"
            )
        if status == b"too_old":
            assert clock is not None and as_of_ms is not None
            raise AsOfTooOldError(as_of_ms, clock, self.retention_ms)
        integral = [spec.aggregation.integral for spec in specs]
        names = [spec.name for spec in specs]
        rows: list[dict[str, FeatureValue]] = []
        i = 4
        for _ in range(n_ids):
            row: dict[str, FeatureValue] = {}
            for name, is_int in zip(names, integral, strict=True):
                raw_value, raw_time = flat[i], flat[i + 1]
                i += 2
                # Counts and times arrive as integers, other values as text, nulls as b"".
                value = None if raw_value == b"" else raw_value if is_int else float(raw_value)
                # tuple.__new__ skips NamedTuple's generated __new__: up to 9,000 values per request.
                row[name] = _new_tuple(FeatureValue, (value, None if raw_time == b"" else raw_time))
            rows.append(row)
        return OnlineRead(int(raw_as_of), clock, rows, generation)

    def clock_ms(self) -> int | None:
        """The highest applied event_time, or None before anything was applied."""
        raw = self._redis.get(self.keys.clock)
        return int(raw) if raw is not None else None

    def checkpoints(self, topic: str) -> dict[int, PartitionCheckpoint]:
        """Stored checkpoints of ``topic``'s partitions."""
        found: dict[int, PartitionCheckpoint] = {}
        for raw_field, raw_value in self._redis.hgetall(self.keys.checkpoints).items():
            ckpt_topic, _, partition = text(raw_field).rpartition(":")
            if ckpt_topic != topic:
                continue
            offset, _, max_time = text(raw_value).partition(":")
            found[int(partition)] = PartitionCheckpoint(
                topic, int(partition), int(offset), int(max_time) if max_time else None
            )
        return found

    def counters(self) -> dict[str, int]:
        """Pipeline counters stored with the checkpoints (exact across restarts)."""
        return {text(k): int(v) for k, v in self._redis.hgetall(self.keys.counters).items()}


def live_generation(settings: Settings, client: redis.Redis | None = None) -> str:
    """The generation the live pointer names, or ``settings.online.generation`` while none was promoted.

    What the server reads; training sets and the feature log default to it too.
    """
    client = client or redis.Redis.from_url(
        settings.redis_url, socket_timeout=30.0, socket_connect_timeout=5.0
    )
    raw = client.get(LIVE_GENERATION_KEY)
    return text(raw) if raw is not None else settings.online.generation


def generation_layouts(
    client: redis.Redis, generation: str, registry: FeatureRegistry = REGISTRY
) -> dict[str, EntityLayout]:
    """The layouts reads of ``generation`` resolve field positions by (as the read script does): those it
    recorded at its first write, or before any write ``registry``'s, which that write will record."""
    recorded = {text(k): _parse_layout(v) for k, v in client.hgetall(KeyLayout(generation).layout).items()}
    return recorded or {e.name: registry.layout(e.name) for e in registry.entities()}


def _layout_json(layout: EntityLayout) -> str:
    data: dict[str, Any] = {"fields": list(layout.fields), "max_window_ms": layout.max_window_ms}
    if layout.tile_ms:
        data |= {"tile_ms": layout.tile_ms, "tiled_fields": list(layout.tiled_fields)}
    return json.dumps(data)


def _without(scored: list[str | int], event_ids: set[str]) -> list[str | int]:
    """``[score, member] * n`` less the entries of ``event_ids`` (a member starts with its event's id)."""
    out: list[str | int] = []
    for at, member in zip(scored[::2], scored[1::2], strict=True):
        if str(member).partition(FIELD_SEPARATOR)[0] not in event_ids:
            out += (at, member)
    return out


def _spans_json(spans: Sequence[HistorySpan]) -> str:
    return json.dumps(
        [[s.topic, s.partition, s.start_offset, s.end_offset, s.clock_before_ms] for s in spans]
    )


def _parse_layout(raw: bytes | str) -> EntityLayout:
    data = json.loads(raw)
    return EntityLayout(
        tuple(data["fields"]),
        int(data["max_window_ms"]),
        int(data.get("tile_ms", 0)),
        tuple(data.get("tiled_fields", ())),
    )


def text(value: bytes | str) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else value


def split_withscores(reply: Sequence[Any]) -> tuple[Sequence[Any], Sequence[Any]]:
    """The members and the scores of a ``ZRANGE ... WITHSCORES`` reply, whichever protocol sent it:
    RESP3 (redis-py's default) sends [member, score] pairs, RESP2 members and scores (as text) in turn.

    Example:
        >>> split_withscores([[b"a", 1.0], [b"b", 2.0]]), split_withscores([b"a", b"1", b"b", b"2"])
        (((b'a', b'b'), (1.0, 2.0)), ([b'a', b'b'], [b'1', b'2']))
    """
    if reply and isinstance(reply[0], list):
        members, scores = zip(*reply, strict=True)
        return members, scores
    return reply[::2], reply[1::2]


def _listed(block: EventColumns) -> EventColumns:
    """``block`` with its polars columns as lists: listed at once, not iterated value by value."""

    def listed(column: Any) -> Any:
        return column.to_list() if isinstance(column, pl.Series) else column

    updates = [(entity, listed(ids), [listed(c) for c in columns]) for entity, ids, columns in block.updates]
    return EventColumns(listed(block.event_ids), listed(block.event_times_ms), updates)
