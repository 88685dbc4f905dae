"""Replay: rebuild derived state from the log into a new generation while the live one keeps serving.

A replay is the stream job itself (same classification, same sinks, same code) run with a generation of
its own: its own Redis key namespace, its own ClickHouse tables and its own consumer group, with larger
batches (``stream.replay_batch_size``: there is no freshness to keep), gathered into chunks of
``stream.replay_chunk_records`` written online in bulk (:mod:`sinks.redis_bulk`: the state one script of
the chunk would leave, at a fraction of Redis' work per event), and without producing late and
malformed records to their topics a second time (they are counted in the generation all the same), reading
from ``--from`` up to ``--to`` (default: the log end when the replay first started). Start and end are
resolved to offsets once and recorded in the generation (``hw:{gen}:meta:replay``), so an interrupted
replay re-run with the same generation resumes from its checkpoints towards the same end and gives the
same final state. ``--from`` and ``--to`` take ``earliest`` (from only), an ISO-8601 time (the log's
record timestamps, i.e. when records were produced, not their event time) or explicit positions
``topic:partition:offset,...`` (partitions not named start at the beginning, or stop at the log end).

Replaying from anywhere but the beginning starts every partition's watermark afresh, so lateness
decisions near the start can differ from the original run's; a replay from ``earliest`` reproduces them.

Example:
    >>> report = replay(settings, "r1", start="earliest")   # doctest: +SKIP
    >>> report.processed, report.resumed                      # doctest: +SKIP
    (1000000, False)
    $ highwater replay --from earliest --targets online,history --generation r1
    $ highwater verify g1 r1 && highwater generations promote r1
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import redis
from confluent_kafka import Consumer, TopicPartition

from highwater.settings import Settings, validate_generation
from highwater.topics import partitions_of
from replay.generations import live_generation, read_hash, replay_key
from sinks.redis_online import KeyLayout
from streams.features import REGISTRY, FeatureRegistry
from streams.job import run_job, source_topics
from streams.kafka_source import log_end_offsets

TARGETS = ("online", "history")
EARLIEST = "earliest"
Positions = dict[str, dict[int, int]]


class ReplayError(ValueError):
    """A replay that cannot start as asked: the message names the bad option or generation."""


@dataclass(frozen=True)
class ReplayReport:
    """What a replay did: the generation, the offsets it covered, how many records, how fast."""

    generation: str
    starts: Positions
    ends: Positions
    processed: int
    seconds: float
    resumed: bool

    @property
    def rate(self) -> float:
        """Records per second of this run."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def parse_targets(text: str) -> tuple[str, ...]:
    """``online,history`` -> ('online', 'history'); ReplayError naming an unknown target."""
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ReplayError(f"unknown target {unknown[0] if unknown else text!r}: use online, history or both")
    return targets


def resolve_positions(settings: Settings, spec: str, topics: list[str], *, is_end: bool) -> Positions:
    """Offsets per topic and partition for ``spec`` (see the module docstring)."""
    if spec == EARLIEST:
        if is_end:
            raise ReplayError("--to earliest would replay nothing; give a time or positions")
        return {}
    if ":" in spec and not spec[:4].isdigit():
        return _explicit_positions(spec, topics)
    try:
        when = datetime.fromisoformat(spec.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReplayError(
            f"cannot read {spec!r}: use earliest, an ISO-8601 time or topic:partition:offset,..."
        ) from exc
    if when.tzinfo is None:
        raise ReplayError(f"time {spec!r} has no timezone; add Z or an offset such as +00:00")
    return _offsets_at(settings, topics, int(when.timestamp() * 1000))


def _explicit_positions(spec: str, topics: list[str]) -> Positions:
    positions: Positions = {}
    for item in spec.split(","):
        topic, _, rest = item.strip().rpartition(":")
        topic, _, partition = topic.rpartition(":")
        if not topic or not partition.isdigit() or not rest.isdigit():
            raise ReplayError(f"position {item!r} is not topic:partition:offset")
        if topic not in topics:
            raise ReplayError(
                f"position {item!r}: topic {topic!r} is not read by the job ({', '.join(topics)})"
            )
        positions.setdefault(topic, {})[int(partition)] = int(rest)
    return positions


def _offsets_at(settings: Settings, topics: list[str], timestamp_ms: int) -> Positions:
    """Per partition, the first offset whose record timestamp is at or after ``timestamp_ms``.

    The broker's answer (ListOffsets by time) is checked against the records around it; Tansu 0.6
    answers 0 whatever the time, so when the check fails the offset is found by a binary search over
    record timestamps (which assumes they do not decrease within a partition, as Kafka's time index does).
    """
    consumer = Consumer(settings.kafka_config(**{"group.id": "highwater-replay-plan"}))
    try:
        positions: Positions = {}
        for topic in topics:
            ends = log_end_offsets(settings, topic)
            asked = [TopicPartition(topic, p, timestamp_ms) for p in partitions_of(settings, topic)]
            for found in consumer.offsets_for_times(asked, timeout=10.0):
                low, high = ends[found.partition]
                answer = high if found.offset < 0 else found.offset

                def before(offset: int, topic: str = topic, partition: int = found.partition) -> bool:
                    return _timestamp_at(consumer, topic, partition, offset) < timestamp_ms

                right = (answer == low or before(answer - 1)) and (answer == high or not before(answer))
                if not right:
                    lo, hi = low, high  # first offset in [lo, hi] that is not before the time
                    while lo < hi:
                        mid = (lo + hi) // 2
                        lo, hi = (mid + 1, hi) if before(mid) else (lo, mid)
                    answer = lo
                positions.setdefault(topic, {})[found.partition] = answer
        return positions
    finally:
        consumer.close()


def _timestamp_at(consumer: Consumer, topic: str, partition: int, offset: int) -> int:
    """The timestamp of the record at ``offset`` (read with one fetch)."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            raise ReplayError(f"cannot read {topic}:{partition}:{offset}: {message.error()}")
        return int(message.timestamp()[1])
    raise ReplayError(f"cannot read {topic}:{partition}:{offset}: no record within 10 s")


def replay(
    settings: Settings,
    generation: str,
    start: str = EARLIEST,
    end: str | None = None,
    targets: tuple[str, ...] = TARGETS,
    show_progress: bool = True,
    registry: FeatureRegistry = REGISTRY,
) -> ReplayReport:
    """Rebuild ``targets`` of ``generation`` from the log (see the module docstring); resumes if begun.

    Raises ReplayError when the generation is live, or when it was begun with other options. The new
    generation records the layout of ``registry`` (the code's feature definitions): replaying after a
    feature was added computes it over the whole replayed log (a backfill), live untouched.
    """
    validate_generation(generation)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=30.0, socket_connect_timeout=5.0)
    if generation == live_generation(settings, client):
        raise ReplayError(f"generation {generation!r} is live; replay into a new generation and promote it")
    target = settings.for_generation(generation)
    target.online.materialize = "online" in targets
    target.offline.history = "history" in targets
    # No freshness to keep: larger batches, written in bulk chunks; and no second copy of what the live
    # job routed already.
    target.stream.batch_size = settings.stream.replay_batch_size
    target.stream.apply_chunk_records = settings.stream.replay_chunk_records
    target.stream.route_side_topics = False
    topics = source_topics(target, registry)
    options = {"from": start, "to": end or "", "targets": ",".join(targets)}
    record = read_hash(client, replay_key(generation))
    resumed = bool(record)
    if resumed:
        begun_with = {k: record.get(k, "") for k in options}
        if begun_with != options:
            raise ReplayError(
                f"generation {generation!r} was begun with {begun_with}; re-run with the same options to "
                f"resume it, or drop it (highwater generations drop {generation}) to start over"
            )
        starts, ends = json.loads(record["starts"]), json.loads(record["ends"])
        starts = {t: {int(p): o for p, o in ps.items()} for t, ps in starts.items()}
        ends = {t: {int(p): o for p, o in ps.items()} for t, ps in ends.items()}
    else:
        if client.exists(KeyLayout(generation).checkpoints):
            raise ReplayError(
                f"generation {generation!r} already holds state written by a stream job, not a replay; "
                "replay into a new generation"
            )
        starts = resolve_positions(settings, start, topics, is_end=False)
        ends = (
            resolve_positions(settings, end, topics, is_end=True)
            if end
            else {t: {p: high for p, (_, high) in log_end_offsets(settings, t).items()} for t in topics}
        )
        _begin(client, generation, options, starts, ends)
    began = time.perf_counter()
    processed = run_job(
        until_end=True,
        settings=target,
        show_progress=show_progress,
        ends=ends,
        label="replay",
        registry=registry,
    )
    seconds = time.perf_counter() - began
    client.hset(replay_key(generation), mapping={"status": "done", "finished_at": _now()})
    return ReplayReport(generation, starts, ends, processed, seconds, resumed)


def _begin(
    client: redis.Redis, generation: str, options: dict[str, str], starts: Positions, ends: Positions
) -> None:
    """Record the replay's resolved range and seed its checkpoints at the start positions, atomically."""
    keys = KeyLayout(generation)
    pipe = client.pipeline(transaction=True)
    for topic, partitions in starts.items():
        for partition, offset in partitions.items():
            pipe.hset(keys.checkpoints, f"{topic}:{partition}", f"{offset}:")
    record: dict[str, str] = {
        **options,
        "starts": json.dumps(starts),
        "ends": json.dumps(ends),
        "status": "running",
        "started_at": _now(),
    }
    pipe.hset(replay_key(generation), mapping=cast(Any, record))
    pipe.execute()


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
