"""The Redis online store alone: window bounds, nulls, idempotency, TTL, trimming, atomic checkpoints."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

from highwater.settings import Settings
from sinks.online import (
    AppliedEvent,
    AsOfTooOldError,
    EntityUpdate,
    EventColumns,
    FeatureNotHeldError,
    FeatureValue,
    HistorySpan,
    NoClockError,
    PartitionCheckpoint,
    PendingHistory,
    ReadRequest,
    WriteBatch,
)
from sinks.redis_online import RedisOnlineStore
from streams.features import ENTITIES, FEATURES, REGISTRY, Aggregation, Entity, Feature, FeatureRegistry
from tests.write_schedules import applied_event

pytestmark = pytest.mark.stack

T0 = 1_772_409_600_000
HOUR = 3_600_000


def _event(txn: str, card: str, at: int, amount: float, merchant: str = "m1") -> AppliedEvent:
    record = {"card_id": card, "merchant_id": merchant, "amount": amount}
    return AppliedEvent(txn, at, (EntityUpdate("card", card, REGISTRY.payload_of("card", record)),))


def _store(stack: Settings, generation: str) -> RedisOnlineStore:
    return RedisOnlineStore.from_settings(stack.for_generation(generation))


def test_window_bounds_are_exclusive_below_and_inclusive_above(
    stack: Settings, redis_client: redis.Redis
) -> None:
    store = _store(stack, "bounds")
    store.write(WriteBatch([_event("a", "c1", T0, 10.0), _event("b", "c1", T0 + HOUR, 5.5)]))
    names = ["card_txn_count_1h", "card_amount_sum_1h", "card_amount_max_24h", "card_amount_avg_7d"]
    at_second = store.read("card", ["c1"], names, T0 + HOUR).rows[0]
    assert at_second["card_txn_count_1h"].value == 1  # T0 is exactly T-W: excluded
    assert at_second["card_amount_sum_1h"].value == 5.5
    assert at_second["card_amount_max_24h"].value == 10.0
    assert at_second["card_amount_avg_7d"].value == 7.75
    assert at_second["card_txn_count_1h"].latest_event_time_ms == T0 + HOUR
    just_before = store.read("card", ["c1"], names, T0 + HOUR - 1).rows[0]
    assert just_before["card_txn_count_1h"].value == 1
    assert just_before["card_amount_sum_1h"].value == 10.0


def test_empty_windows_give_zero_for_counts_and_sums_and_null_for_max_and_avg(
    stack: Settings, redis_client: redis.Redis
) -> None:
    store = _store(stack, "empty")
    store.write(WriteBatch([_event("a", "c1", T0, 10.0)]))
    later = store.read(
        "card", ["c1"], [f.name for f in REGISTRY.features_of("card")], T0 + 8 * 24 * HOUR
    ).rows[0]
    assert later["card_txn_count_24h"].value == 0
    assert later["card_amount_sum_24h"].value == 0.0
    assert later["card_distinct_merchants_24h"].value == 0
    assert later["card_amount_max_24h"].value is None
    assert later["card_amount_avg_7d"].value is None
    assert later["card_seconds_since_last_txn"].value is None
    assert all(v.latest_event_time_ms is None for v in later.values())


def test_the_same_event_id_is_applied_once(stack: Settings, redis_client: redis.Redis) -> None:
    store = _store(stack, "dedupe")
    store.write(WriteBatch([_event("a", "c1", T0, 10.0)]))
    store.write(WriteBatch([_event("a", "c1", T0, 10.0), _event("a", "c1", T0 + 5, 99.0)]))
    value = store.read("card", ["c1"], ["card_amount_sum_1h"], T0 + 10).rows[0]["card_amount_sum_1h"]
    assert value.value == 10.0 and value.latest_event_time_ms == T0
    assert store.counters()["duplicates"] == 2


def test_entity_keys_carry_the_ttl(stack: Settings, redis_client: redis.Redis) -> None:
    store = _store(stack, "ttl")
    store.write(WriteBatch([_event("a", "c1", T0, 1.0)]))
    ttl = redis_client.pttl(store.keys.events("card", "c1"))
    assert 0 < ttl <= stack.online.ttl_ms


def test_checkpoints_counters_and_clock_move_with_the_batch(
    stack: Settings, redis_client: redis.Redis
) -> None:
    store = _store(stack, "ckpt")
    assert store.clock_ms() is None and store.checkpoints("transactions") == {}
    store.write(
        WriteBatch(
            [_event("a", "c1", T0, 1.0)],
            [
                PartitionCheckpoint("transactions", 2, 41, T0),
                PartitionCheckpoint("transactions", 3, 7, T0 - 9),
            ],
            {"applied": 1, "late": 2},
        )
    )
    store.write(WriteBatch([], [PartitionCheckpoint("transactions", 3, 9, T0 - 5)], {"late": 1}))
    assert store.clock_ms() == T0  # the clock never moves backwards
    assert store.checkpoints("transactions")[3] == PartitionCheckpoint("transactions", 3, 9, T0 - 5)
    assert store.checkpoints("transactions")[2].next_offset == 41
    assert store.counters() == {"applied": 1, "late": 3}


def test_pending_history_is_recorded_with_its_batch_and_kept_until_confirmed(
    stack: Settings, redis_client: redis.Redis
) -> None:
    store = _store(stack, "pending")
    first = (HistorySpan("transactions", 0, 0, 40, None), HistorySpan("fraud-labels", 1, 5, 9, T0 - 1))
    second = (HistorySpan("transactions", 0, 40, 52, T0),)
    assert store.write(WriteBatch([_event("a", "c1", T0, 1.0)], [], {"applied": 1}, history=first)) == 1
    assert store.write(WriteBatch([], [], {"late": 1})) is None  # no history: no number, nothing pending
    assert store.write(WriteBatch([_event("b", "c1", T0 + 1, 2.0)], [], {"applied": 1}, history=second)) == 2
    assert store.pending_history() == [PendingHistory(1, first), PendingHistory(2, second)]
    store.confirm_history(1)
    assert store.pending_history() == [PendingHistory(2, second)]
    store.confirm_history(2)
    assert store.pending_history() == []


def test_events_beyond_the_kept_horizon_are_trimmed(stack: Settings, redis_client: redis.Redis) -> None:
    store = _store(stack, "trim")
    store.write(WriteBatch([_event("old", "c1", T0, 1.0)], [PartitionCheckpoint("transactions", 0, 1, T0)]))
    far = T0 + store.keep_ms + 1
    store.write(WriteBatch([_event("new", "c1", far, 2.0)], [PartitionCheckpoint("transactions", 0, 2, far)]))
    assert redis_client.zrange(store.keys.events("card", "c1"), 0, -1) == [b"new\x1f2.0\x1fm1"]
    assert redis_client.zrange(store.keys.seen, 0, -1) == [b"new"]


def test_an_event_older_than_the_kept_horizon_is_counted_not_stored(
    stack: Settings, redis_client: redis.Redis
) -> None:
    store = _store(stack, "beyond")
    far = T0 + store.keep_ms + 1
    store.write(
        WriteBatch([_event("stale", "c1", T0 - 1, 1.0)], [PartitionCheckpoint("transactions", 0, 1, far)])
    )
    assert not redis_client.exists(store.keys.events("card", "c1"))
    assert store.counters() == {"beyond_online_horizon": 1}


def test_a_duplicate_id_is_skipped_for_every_entity_of_the_event(
    stack: Settings, redis_client: redis.Redis
) -> None:
    store = _store(stack, "dedupe-entities")
    store.write(
        WriteBatch([applied_event("t1", T0, "c1", "m1", 5.0), applied_event("t2", T0, "c2", "m1", 1.0)])
    )
    # The second copy of t1 names other entities: none of them may see it.
    store.write(
        WriteBatch([applied_event("t1", T0, "c9", "m9", 7.0), applied_event("t3", T0, "c1", "m1", 2.0)])
    )
    merchants = store.read("merchant", ["m1", "m9"], ["merchant_txn_count_1h"], T0).rows
    assert [row["merchant_txn_count_1h"].value for row in merchants] == [3, 0]
    cards = store.read("card", ["c1", "c9"], ["card_amount_sum_1h"], T0).rows
    assert [row["card_amount_sum_1h"].value for row in cards] == [7.0, 0.0]
    assert store.counters() == {"duplicates": 1}


def test_a_read_defaults_to_the_clock_and_refuses_what_retention_no_longer_covers(
    stack: Settings, redis_client: redis.Redis
) -> None:
    store = _store(stack, "as-of")
    with pytest.raises(NoClockError):
        store.read("card", ["c1"], ["card_txn_count_1h"])
    store.write(WriteBatch([_event("a", "c1", T0, 1.0)], [PartitionCheckpoint("transactions", 0, 1, T0)]))
    answer = store.read("card", ["c1"], ["card_txn_count_1h"])
    assert (answer.as_of_ms, answer.clock_ms) == (T0, T0)
    assert answer.rows[0]["card_txn_count_1h"] == FeatureValue(1, T0)
    oldest = T0 - store.retention_ms
    assert store.read("card", ["c1"], ["card_txn_count_1h"], oldest).as_of_ms == oldest
    with pytest.raises(AsOfTooOldError) as refused:
        store.read("card", ["c1"], ["card_txn_count_1h"], oldest - 1)
    assert (refused.value.as_of_ms, refused.value.clock_ms) == (oldest - 1, T0)


def test_a_generation_refuses_features_its_recorded_layout_cannot_hold(
    stack: Settings, redis_client: redis.Redis
) -> None:
    writer = _store(stack, "layout")
    writer.write(WriteBatch([_event("a", "c1", T0, 10.0)]))
    assert writer.layouts() == {e.name: REGISTRY.layout(e.name) for e in REGISTRY.entities()}
    wider = Feature("card_txn_count_30d", "card", Aggregation.COUNT, timedelta(days=30))
    newer = Feature("device_txn_count_1h", "device", Aggregation.COUNT, timedelta(hours=1))
    code = FeatureRegistry([*ENTITIES, Entity("device", "device_id")], [*FEATURES, wider, newer])
    reader = RedisOnlineStore.from_settings(stack.for_generation("layout"), code)
    with pytest.raises(FeatureNotHeldError, match=r"window .* is wider than the generation keeps"):
        reader.read("card", ["c1"], ["card_txn_count_1h", wider.name], T0)
    with pytest.raises(FeatureNotHeldError, match="entity 'device' was added after the generation"):
        reader.read("device", ["d1"], [newer.name], T0)
    assert reader.read("card", ["c1"], ["card_txn_count_1h"], T0).rows[0]["card_txn_count_1h"].value == 1
    assert reader.layouts() == writer.layouts(), "a later writer must keep the recorded layout"


def _as_columns(events: list[AppliedEvent]) -> EventColumns:
    """The same events as columns (every event here updates the same entities in the same order)."""
    entities = [u.entity for u in events[0].updates]
    return EventColumns(
        [e.event_id for e in events],
        [e.event_time_ms for e in events],
        [
            (
                entity,
                [e.updates[k].entity_id for e in events],
                [list(column) for column in zip(*(e.updates[k].fields for e in events), strict=True)],
            )
            for k, entity in enumerate(entities)
        ],
    )


def _generation_state(client: redis.Redis, generation: str) -> dict[str, object]:
    state: dict[str, object] = {}
    for key in client.scan_iter(match=f"hw:{generation}:*"):
        name = key.decode().split(":", 2)[2]
        kind = client.type(key).decode()
        if kind == "zset":
            state[name] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            state[name] = client.hgetall(key)
        else:
            state[name] = client.get(key)
    return state


def test_columns_write_exactly_what_events_write(stack: Settings, redis_client: redis.Redis) -> None:
    """The stream job writes columns (EventColumns); they must leave the state events leave, duplicates
    within and across batches included."""
    first = [applied_event(f"t{i}", T0 + i * 1000, f"c{i % 3}", f"m{i % 2}", 0.1 * i) for i in range(20)]
    first.append(applied_event("t4", T0 + 99, "c9", "m9", 9.0))  # a second copy in the same batch
    second = [applied_event("t7", T0, "c1", "m1", 1.0), applied_event("t50", T0 + HOUR, "c1", "m0", 2.5)]
    checkpoint = [PartitionCheckpoint("transactions", 0, 21, T0 + 19_000)]
    by_events, by_columns = _store(stack, "rows"), _store(stack, "cols")
    by_events.write(WriteBatch(first, checkpoint, {"applied": 21}))
    by_events.write(WriteBatch(second))
    by_columns.write(WriteBatch([], checkpoint, {"applied": 21}, [_as_columns(first)]))
    by_columns.write(WriteBatch(columns=[_as_columns(second)]))
    rows = _generation_state(redis_client, "rows")
    assert rows == _generation_state(redis_client, "cols")
    assert by_columns.counters()["duplicates"] == 2
    assert len(rows) > 5


def test_writes_and_reads_survive_a_script_flush(stack: Settings, redis_client: redis.Redis) -> None:
    """After SCRIPT FLUSH (or a Redis restart) the store loads its scripts again instead of failing."""
    store = _store(stack, "flush")
    store.write(WriteBatch([_event("a", "c1", T0, 1.0)]))
    redis_client.script_flush()
    store.write(
        WriteBatch([_event("b", "c1", T0 + 1, 2.0)], [PartitionCheckpoint("transactions", 0, 2, T0 + 1)])
    )
    redis_client.script_flush()
    read = ReadRequest("card", ["c1"], ["card_amount_sum_1h"], T0 + 1)
    too_old = ReadRequest("card", ["c1"], ["card_amount_sum_1h"], T0 - store.retention_ms - 10)
    answers = store.read_many([read, too_old, read])
    assert [a.rows[0]["card_amount_sum_1h"].value for a in (answers[0], answers[2])] == [3.0, 3.0]
    assert isinstance(answers[1], AsOfTooOldError)
