"""Staged writes: a batch of more entries than one script may apply leaves exactly the state one script
would, and one stopped between its parts is completed by writing it again.

Each test writes the same batches to two generations, one applying every batch in one script and one
in parts of a few entries (so keys are split across parts too), and compares every key of both: events,
tiles, the idempotency index, checkpoints, counters, clock and pending history.
"""

from __future__ import annotations

import random
import sys
from datetime import timedelta

import pytest
import redis

from highwater.settings import Settings
from sinks.online import AppliedEvent, EntityUpdate, HistorySpan, PartitionCheckpoint, WriteBatch
from sinks.redis_online import RedisOnlineStore
from streams.features import Aggregation, Entity, Feature, FeatureRegistry
from tests.state import every_key

pytestmark = pytest.mark.stack

T0 = 1_772_409_600_000
MINUTE = 60_000
A = Aggregation
REGISTRY = FeatureRegistry(
    [Entity("card", "card_id"), Entity("merchant", "merchant_id", tile=timedelta(minutes=10))],
    [
        Feature("c_count_1h", "card", A.COUNT, timedelta(hours=1)),
        Feature("c_sum_1h", "card", A.SUM, timedelta(hours=1), "amount"),
        Feature("m_count_1h", "merchant", A.COUNT, timedelta(hours=1)),
        Feature("m_sum_1h", "merchant", A.SUM, timedelta(hours=1), "amount"),
    ],
)


def _store(stack: Settings, generation: str, script_max_entries: int) -> RedisOnlineStore:
    settings = stack.for_generation(generation).model_copy(deep=True)
    # A short horizon, so trimming and events beyond it happen within the hours these tests write.
    settings.online.retention_ms = 15 * MINUTE
    settings.stream.max_out_of_orderness_ms = MINUTE
    settings.stream.allowed_lateness_ms = MINUTE
    settings.online.script_max_entries = script_max_entries
    return RedisOnlineStore.from_settings(settings, REGISTRY)


def _event(txn: str, at: int, card: str, merchant: str, amount: float) -> AppliedEvent:
    record = {"card_id": card, "merchant_id": merchant, "amount": amount}
    return AppliedEvent(
        txn,
        at,
        (
            EntityUpdate("card", card, REGISTRY.payload_of("card", record)),
            EntityUpdate("merchant", merchant, REGISTRY.payload_of("merchant", record)),
        ),
    )


def _batches(seed: int) -> list[WriteBatch]:
    """40 batches over 5 hours: a busy merchant (tiled) and a few quiet ones, many cards, coarse times; a
    fifth delivered a few batches late, some far behind the horizon, and repeated ids (in the same
    batch and later, some with other contents and times)."""
    rng = random.Random(seed)
    events = []
    for i in range(1_200):
        at = T0 + rng.randrange(0, 300) * MINUTE + rng.choice((0, 0, 1_000))
        merchant = "busy" if rng.random() < 0.8 else f"m{rng.randrange(4)}"
        amount = round(rng.uniform(0.01, 500), rng.choice((0, 1, 2)))
        events.append(_event(f"t{i:05d}", at, f"c{rng.randrange(80)}", merchant, amount))
    events.sort(key=lambda e: e.event_time_ms)
    groups: list[list[AppliedEvent]] = [[] for _ in range(40)]
    for i, event in enumerate(events):
        home = i * len(groups) // len(events)
        if rng.random() < 0.2:
            home = min(len(groups) - 1, home + rng.randrange(1, 4))
        if rng.random() < 0.02:  # far behind the clock by the time it arrives: beyond the horizon
            home = min(len(groups) - 1, home + 20)
        groups[home].append(event)
        if rng.random() < 0.05:
            again = (
                event
                if rng.random() < 0.5
                else _event(event.event_id, event.event_time_ms + MINUTE, "c0", "busy", 1.5)
            )
            groups[min(len(groups) - 1, home + rng.randrange(0, 3))].append(again)
    batches = []
    offset = 0
    for n, group in enumerate(groups):
        clock = max(e.event_time_ms for e in group)
        batches.append(
            WriteBatch(
                events=group,
                checkpoints=[PartitionCheckpoint("transactions", n % 2, offset + len(group), clock)],
                counters={"applied": len(group)},
                history=(HistorySpan("transactions", n % 2, offset, offset + len(group), None),),
            )
        )
        offset += len(group)
    return batches


@pytest.mark.parametrize("seed", [1, 2])
def test_staged_writes_leave_exactly_the_state_of_one_script(
    stack: Settings, redis_client: redis.Redis, seed: int
) -> None:
    whole = _store(stack, f"staged-whole-{seed}", sys.maxsize)
    staged = _store(stack, f"staged-parts-{seed}", 3)
    for batch in _batches(seed):
        assert whole.prepare(batch).staged is None
        prepared = staged.prepare(batch)
        assert prepared.staged is not None and len(prepared.staged.parts) > 1
        assert whole.write(batch) == staged.write_prepared(prepared)
    expected = every_key(stack, whole.keys.generation)
    got = every_key(stack, staged.keys.generation)
    assert got == expected
    counters = whole.counters()
    assert counters["duplicates"] > 0 and counters["beyond_online_horizon"] > 0  # what the batches test
    assert any(name.startswith("tl:") for name in expected)


def test_a_staged_write_stopped_between_parts_is_completed_by_writing_it_again(
    stack: Settings, redis_client: redis.Redis
) -> None:
    whole = _store(stack, "stopped-whole", sys.maxsize)
    staged = _store(stack, "stopped-parts", 3)
    batches = _batches(3)
    for batch in batches[:-1]:
        whole.write(batch)
        staged.write(batch)
    last = batches[-1]
    whole.write(last)
    before = every_key(stack, staged.keys.generation)
    # A key of the wrong type makes a late part fail, as a stop would leave it: earlier parts applied.
    blocker = staged.keys.events("card", last.events[-1].updates[0].entity_id)
    redis_client.delete(blocker)
    redis_client.set(blocker, "in the way")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        staged.write(last)
    stopped = every_key(stack, staged.keys.generation)
    assert stopped != before  # some events went in...
    for name in ("meta:checkpoints", "meta:counters", "meta:clock", "meta:seen", "meta:apply_seq"):
        assert stopped[name] == before[name]  # ...but none of the batch's bookkeeping moved
    redis_client.delete(blocker)
    redis_client.zadd(blocker, dict(before[blocker.removeprefix(f"hw:{staged.keys.generation}:")]))
    staged.write(last)
    assert every_key(stack, staged.keys.generation) == every_key(stack, whole.keys.generation)
