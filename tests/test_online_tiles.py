"""Exact tiles: a tiled entity's reads equal, bit for bit, the reads of the same events kept untiled.

Tiles are an optimisation only, so every test compares a generation whose merchants keep tiles with one
that keeps none, written with the same batches: out-of-order arrivals, equal event times, duplicates
(also with other content), pending events, and trimming as the clock moves.
"""

from __future__ import annotations

import random
import struct
from datetime import timedelta

import pytest
import redis

from highwater.settings import Settings
from sinks.online import AppliedEvent, EntityUpdate, PartitionCheckpoint, PendingEvent, WriteBatch
from sinks.redis_online import RedisOnlineStore
from streams.features import Aggregation, Entity, Feature, FeatureRegistry

pytestmark = pytest.mark.stack

T0 = 1_772_409_600_000
MINUTE = 60_000
HOUR = 60 * MINUTE
A = Aggregation
TILE = timedelta(minutes=10)
TILE_MS = 10 * MINUTE
FEATURES = [
    Feature("m_count_30m", "merchant", A.COUNT, timedelta(minutes=30)),
    Feature("m_sum_1h", "merchant", A.SUM, timedelta(hours=1), "amount"),
    Feature("m_max_1h", "merchant", A.MAX, timedelta(hours=1), "amount"),
    Feature("m_sum_20m", "merchant", A.SUM, timedelta(minutes=20), "amount"),
    Feature("m_avg_2h", "merchant", A.AVG, timedelta(hours=2), "amount"),
    Feature("m_cards_1h", "merchant", A.DISTINCT_COUNT, timedelta(hours=1), "card_id"),
    Feature("m_since_last", "merchant", A.SECONDS_SINCE_LAST, timedelta(hours=2)),
]
NAMES = [f.name for f in FEATURES]
TILED = FeatureRegistry([Entity("merchant", "merchant_id", tile=TILE)], FEATURES)
UNTILED = FeatureRegistry([Entity("merchant", "merchant_id")], FEATURES)


def _stores(stack: Settings, name: str) -> tuple[RedisOnlineStore, RedisOnlineStore]:
    settings = stack.model_copy(deep=True)
    # A short horizon, so trimming runs within the few hours of events these tests write.
    settings.online.retention_ms = 15 * MINUTE
    settings.stream.max_out_of_orderness_ms = MINUTE
    settings.stream.allowed_lateness_ms = MINUTE
    tiled = RedisOnlineStore.from_settings(settings.for_generation(f"{name}-tiled"), TILED)
    untiled = RedisOnlineStore.from_settings(settings.for_generation(f"{name}-raw"), UNTILED)
    return tiled, untiled


def _event(txn: str, merchant: str, at: int, amount: float, card: str) -> AppliedEvent:
    record = {"merchant_id": merchant, "amount": amount, "card_id": card}
    return AppliedEvent(txn, at, (EntityUpdate("merchant", merchant, TILED.payload_of("merchant", record)),))


def _pending(txn: str, merchant: str, at: int, amount: float, card: str) -> PendingEvent:
    record = {
        "transaction_id": txn,
        "merchant_id": merchant,
        "amount": amount,
        "card_id": card,
        "event_time": at,
    }
    return PendingEvent.from_record(record, TILED)


def _bits(store: RedisOnlineStore, ids: list[str], as_of: int, pending: PendingEvent | None = None) -> list:
    """Every value and latest time of a read, floats by their bits (so -0.0, rounding and all count)."""
    rows = store.read("merchant", ids, NAMES, as_of, pending).rows
    return [
        {
            n: (v.value.hex() if isinstance(v.value, float) else v.value, v.latest_event_time_ms)
            for n, v in r.items()
        }
        for r in rows
    ]


def _history(seed: int) -> list[list[AppliedEvent]]:
    """Batches of a busy and a quiet merchant over 4 hours: coarse times (many equal), a fifth of the
    events delivered a few batches late, and repeats of earlier ids (some with other amounts)."""
    rng = random.Random(seed)
    events = []
    for i in range(1_500):
        merchant = "busy" if rng.random() < 0.9 else "quiet"
        at = T0 + rng.randrange(0, 240) * MINUTE + rng.choice((0, 0, 1_000, 30_000))
        amount = round(rng.uniform(0.01, 900), rng.choice((0, 1, 2, 3)))
        events.append(
            _event(f"t{i:05d}-{rng.randrange(1000):03d}", merchant, at, amount, f"c{rng.randrange(60)}")
        )
    events.sort(key=lambda e: e.event_time_ms)
    batches: list[list[AppliedEvent]] = [[] for _ in range(60)]
    for i, event in enumerate(events):
        home = i * len(batches) // len(events)
        if rng.random() < 0.2:
            home = min(len(batches) - 1, home + rng.randrange(1, 4))
        batches[home].append(event)
        if rng.random() < 0.04:  # a repeat, later or in the same batch; sometimes with another amount
            again = (
                event
                if rng.random() < 0.5
                else event._replace(updates=(EntityUpdate("merchant", "busy", ("1.5", "c0")),))
            )
            batches[min(len(batches) - 1, home + rng.randrange(0, 3))].append(again)
    return batches


@pytest.mark.parametrize("seed", [1, 2])
def test_tiled_reads_equal_untiled_reads_batch_by_batch(
    stack: Settings, redis_client: redis.Redis, seed: int
) -> None:
    tiled, untiled = _stores(stack, f"tiles-{seed}")
    rng = random.Random(seed * 7)
    clock = None
    tile_reads = 0
    for n, batch in enumerate(_history(seed)):
        high = max([e.event_time_ms for e in batch] + ([clock] if clock else []))
        checkpoint = [PartitionCheckpoint("transactions", 0, n + 1, high)]
        for store in (tiled, untiled):
            store.write(WriteBatch(batch, checkpoint))
        clock = high
        for _ in range(8):
            as_of = clock - rng.randrange(0, 15 * MINUTE) + rng.choice((0, 0, 1, -1, 5 * MINUTE))
            if rng.random() < 0.4:  # a window's edge on an event: (T-W, T] excludes T-W, includes T
                edge = rng.choice(batch).event_time_ms + rng.choice((0, 20 * MINUTE, HOUR, 2 * HOUR))
                as_of = max(edge, clock - 15 * MINUTE)
            pending = None
            if rng.random() < 0.5:
                at = as_of - rng.choice((0, 0, 1_000, 7 * MINUTE, 61 * MINUTE))
                txn = rng.choice([e.event_id for e in batch] + [f"p{n}-{rng.randrange(99)}"])
                pending = _pending(txn, "busy", at, round(rng.uniform(0, 500), 2), "c7")
            expected = _bits(untiled, ["busy", "quiet", "never"], as_of, pending)
            assert _bits(tiled, ["busy", "quiet", "never"], as_of, pending) == expected, (n, as_of, pending)
            tile_reads += expected[0]["m_count_30m"][0] > 0
    assert redis_client.exists(tiled.keys.tiles("merchant", "busy", "amount"))
    assert not redis_client.exists(untiled.keys.tiles("merchant", "busy", "amount"))
    assert tile_reads > 300
    # Trimming dropped the tiles wholly below the horizon, as it dropped their events.
    oldest = redis_client.zrange(tiled.keys.tiles("merchant", "busy", "amount"), 0, 0, withscores=True)[0][1]
    first_event = redis_client.zrange(tiled.keys.events("merchant", "busy"), 0, 0, withscores=True)[0][1]
    assert T0 // TILE_MS < oldest <= first_event // TILE_MS


def _busy_store(stack: Settings, name: str) -> tuple[RedisOnlineStore, RedisOnlineStore, int]:
    tiled, untiled = _stores(stack, name)
    batch = [_event(f"t{i:04d}", "busy", T0 + i * 20_000, 1.0 + i / 8, "c1") for i in range(400)]
    as_of = T0 + 399 * 20_000
    for store in (tiled, untiled):
        store.write(WriteBatch(batch, [PartitionCheckpoint("transactions", 0, 400, as_of)]))
    return tiled, untiled, as_of


def test_a_tile_with_the_right_length_is_what_the_read_folds(
    stack: Settings, redis_client: redis.Redis
) -> None:
    tiled, untiled, as_of = _busy_store(stack, "tiles-used")
    assert _bits(tiled, ["busy"], as_of) == _bits(untiled, ["busy"], as_of)
    key = tiled.keys.tiles("merchant", "busy", "amount")
    tile = (as_of - 30 * MINUTE) // TILE_MS  # wholly inside the 1 h window
    member = redis_client.zrangebyscore(key, tile, tile)[0]
    head, _, packed = member.partition(b":")
    changed = struct.pack("<d", 1000.0) + packed[8:]
    redis_client.zrem(key, member)
    redis_client.zadd(key, {head + b":" + changed: tile})
    before = untiled.read("merchant", ["busy"], ["m_sum_1h"], as_of).rows[0]["m_sum_1h"].value
    after = tiled.read("merchant", ["busy"], ["m_sum_1h"], as_of).rows[0]["m_sum_1h"].value
    assert after == pytest.approx(before + 1000.0 - struct.unpack("<d", packed[:8])[0])


def test_a_tile_whose_length_disagrees_with_its_events_is_read_from_the_events(
    stack: Settings, redis_client: redis.Redis
) -> None:
    tiled, untiled, as_of = _busy_store(stack, "tiles-stale")
    key = tiled.keys.tiles("merchant", "busy", "amount")
    tile = (as_of - 30 * MINUTE) // TILE_MS
    member = redis_client.zrangebyscore(key, tile, tile)[0]
    redis_client.zrem(key, member)
    redis_client.zadd(key, {member[:-8]: tile})  # one value short
    redis_client.zremrangebyscore(key, tile + 1, tile + 1)  # and one tile gone
    assert _bits(tiled, ["busy"], as_of) == _bits(untiled, ["busy"], as_of)


def test_tiles_carry_the_events_ttl(stack: Settings, redis_client: redis.Redis) -> None:
    tiled, _, _ = _busy_store(stack, "tiles-ttl")
    ttl = redis_client.pttl(tiled.keys.tiles("merchant", "busy", "amount"))
    assert 0 < ttl <= stack.online.ttl_ms
    assert abs(ttl - redis_client.pttl(tiled.keys.events("merchant", "busy"))) < 1_000


def test_a_generation_recorded_without_tiles_is_read_and_written_without_them(
    stack: Settings, redis_client: redis.Redis
) -> None:
    _, untiled = _stores(stack, "tiles-old")
    untiled.write(WriteBatch([_event("a", "busy", T0, 2.0, "c1")]))
    newer = RedisOnlineStore.from_settings(stack.for_generation("tiles-old-raw"), TILED)
    assert newer.layouts()["merchant"].tile_ms == 0
    newer.write(WriteBatch([_event("b", "busy", T0 + 1, 3.0, "c1")]))
    assert not redis_client.exists(newer.keys.tiles("merchant", "busy", "amount"))
    assert newer.read("merchant", ["busy"], ["m_sum_1h"], T0 + 1).rows[0]["m_sum_1h"].value == 5.0


def test_spans_of_few_events_keep_no_tile_and_are_read_from_the_events(
    stack: Settings, redis_client: redis.Redis
) -> None:
    tiled, untiled = _stores(stack, "tiles-sparse")
    # Six 10-minute spans: 30, 3, 30, 7, 8 and 30 events.
    sizes = [30, 3, 30, 7, 8, 30]
    batch = [
        _event(f"s{span}-{i:02d}", "m", T0 + span * TILE_MS + i * 5_000, 0.1 * (i + 1) + span, "c1")
        for span, size in enumerate(sizes)
        for i in range(size)
    ]
    as_of = T0 + len(sizes) * TILE_MS - 1
    for store in (tiled, untiled):
        store.write(WriteBatch(batch, [PartitionCheckpoint("transactions", 0, len(batch), as_of)]))
    kept = redis_client.zrange(tiled.keys.tiles("merchant", "m", "amount"), 0, -1, withscores=True)
    assert [int(score) - T0 // TILE_MS for _, score in kept] == [0, 2, 4, 5]
    for at in (as_of, as_of - 7 * MINUTE, as_of - 10 * MINUTE, as_of + 30 * MINUTE):
        assert _bits(tiled, ["m"], at) == _bits(untiled, ["m"], at)
