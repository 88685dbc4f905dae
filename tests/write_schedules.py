"""Batches for tests of large writes (staged, bulk) that compare generations key by key.

:func:`batches` gives 40 batches over 5 hours with what makes writes differ if anything is wrong: a busy
tiled merchant, out-of-order delivery, events beyond the horizon, repeated ids (some with other contents);
:func:`store_for` a store with a horizon short enough for trimming to happen within them;
:func:`stopped_by_a_wrong_type_key` a large write stopped part-way.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis

from highwater.settings import Settings
from sinks.online import AppliedEvent, EntityUpdate, HistorySpan, PartitionCheckpoint, WriteBatch
from sinks.redis_online import RedisOnlineStore
from streams.features import Aggregation, Entity, Feature, FeatureRegistry
from tests.state import every_key

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


def store_for(
    stack: Settings, generation: str, script_max_entries: int, protocol: int | None = None
) -> RedisOnlineStore:
    """A store of ``generation`` with a short horizon; ``protocol``: the RESP version its client speaks
    (None: redis-py's default)."""
    settings = stack.for_generation(generation).model_copy(deep=True)
    if protocol is not None:
        settings.redis_url = f"{settings.redis_url}?protocol={protocol}"
    # A short horizon, so trimming and events beyond it happen within the hours these tests write.
    settings.online.retention_ms = 15 * MINUTE
    settings.stream.max_out_of_orderness_ms = MINUTE
    settings.stream.allowed_lateness_ms = MINUTE
    settings.online.script_max_entries = script_max_entries
    return RedisOnlineStore.from_settings(settings, REGISTRY)


def applied_event(txn: str, at: int, card: str, merchant: str, amount: float) -> AppliedEvent:
    record = {"card_id": card, "merchant_id": merchant, "amount": amount}
    return AppliedEvent(
        txn,
        at,
        (
            EntityUpdate("card", card, REGISTRY.payload_of("card", record)),
            EntityUpdate("merchant", merchant, REGISTRY.payload_of("merchant", record)),
        ),
    )


def batches(seed: int) -> list[WriteBatch]:
    """40 batches over 5 hours: a busy merchant (tiled) and a few quiet ones, many cards, coarse times; a
    fifth delivered a few batches late, some far behind the horizon, and repeated ids (in the same
    batch and later, some with other contents and times)."""
    rng = random.Random(seed)
    events = []
    for i in range(1_200):
        at = T0 + rng.randrange(0, 300) * MINUTE + rng.choice((0, 0, 1_000))
        merchant = "busy" if rng.random() < 0.8 else f"m{rng.randrange(4)}"
        amount = round(rng.uniform(0.01, 500), rng.choice((0, 1, 2)))
        events.append(applied_event(f"t{i:05d}", at, f"c{rng.randrange(80)}", merchant, amount))
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
                else applied_event(event.event_id, event.event_time_ms + MINUTE, "c0", "busy", 1.5)
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


def stopped_by_a_wrong_type_key(
    stack: Settings, store: RedisOnlineStore, batch: WriteBatch, write: Callable[[WriteBatch], object]
) -> dict[str, Any]:
    """Run ``write(batch)`` while one of its card keys holds a string: a command fails part-way, as a stop
    would leave it. Asserts that some events went in but none of the batch's bookkeeping moved, puts the
    key back, and returns the state the stop left (every key, as :func:`tests.state.every_key`)."""
    client = redis.Redis.from_url(stack.redis_url)
    generation = store.keys.generation
    before = every_key(stack, generation)
    blocker = store.keys.events("card", batch.events[-1].updates[0].entity_id)
    client.delete(blocker)
    client.set(blocker, "in the way")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        write(batch)
    stopped = every_key(stack, generation)
    assert stopped != before  # some events went in...
    for name in ("meta:checkpoints", "meta:counters", "meta:clock", "meta:seen", "meta:apply_seq"):
        assert stopped[name] == before[name]  # ...but none of the batch's bookkeeping moved
    client.delete(blocker)
    client.zadd(blocker, dict(before[blocker.removeprefix(f"hw:{generation}:")]))
    return stopped
