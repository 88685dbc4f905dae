"""Bulk writes (:mod:`sinks.redis_bulk`): a batch written in bulk leaves exactly the state its one
APPLY_BATCH script leaves, and a bulk write stopped anywhere is completed by writing the batch again (or,
stopped after its commit, by the next writer).

Each test writes the same batches to two generations, one by the script and one in bulk, and compares
every key of both: events, tiles, the idempotency index, checkpoints, counters, clock and pending history.
"""

from __future__ import annotations

import sys
from functools import partial

import pytest
import redis

from highwater.settings import Settings
from sinks.online import HistorySpan, PartitionCheckpoint, WriteBatch
from sinks.redis_bulk import BulkPlan, apply_bulk, finish_merge, plan_bulk, write_bulk
from tests.state import every_key
from tests.write_schedules import MINUTE, T0, applied_event, batches, stopped_by_a_wrong_type_key, store_for

pytestmark = pytest.mark.stack


def _merged(schedule: list[WriteBatch], size: int) -> list[WriteBatch]:
    """The schedule's batches joined ``size`` at a time, as a replay gathers its chunks."""
    merged = []
    for i in range(0, len(schedule), size):
        group = schedule[i : i + size]
        counters: dict[str, int] = {}
        for batch in group:
            for name, n in batch.counters.items():
                counters[name] = counters.get(name, 0) + n
        spans = {(s.topic, s.partition): s for b in group for s in b.history or ()}
        merged.append(
            WriteBatch(
                events=[e for b in group for e in b.events],
                checkpoints=[c for b in group for c in b.checkpoints],
                counters=counters,
                history=tuple(spans.values()),
            )
        )
    return merged


@pytest.mark.parametrize(("seed", "size", "protocol"), [(1, 1, None), (2, 1, None), (3, 5, None), (3, 5, 2)])
def test_bulk_writes_leave_exactly_the_state_of_one_script(
    stack: Settings, redis_client: redis.Redis, seed: int, size: int, protocol: int | None
) -> None:
    """Also over RESP2, whose replies (tile spans read back) are shaped differently."""
    script = store_for(stack, f"bulk-script-{seed}-{protocol}", sys.maxsize)
    bulk = store_for(stack, f"bulk-bulk-{seed}-{protocol}", sys.maxsize, protocol)
    for batch in _merged(batches(seed), size):
        assert script.write(batch) == write_bulk(bulk, batch)
    expected = every_key(stack, script.keys.generation)
    assert every_key(stack, bulk.keys.generation) == expected
    counters = script.counters()
    assert counters["duplicates"] > 0 and counters["beyond_online_horizon"] > 0  # what the batches test
    assert any(name.startswith("tl:") for name in expected)


def test_bulk_writes_split_into_small_commands_leave_the_same_state(
    stack: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a few entries per command, keys with more events in a batch than one ZADD takes are split
    over several, and the id checks, merges and tile edits over many commands."""
    monkeypatch.setattr("sinks.redis_bulk.ID_STEP", 3)
    script = store_for(stack, "bulk-small-script", sys.maxsize)
    bulk = store_for(stack, "bulk-small-bulk", sys.maxsize)
    for batch in _merged(batches(5), 5):
        assert script.write(batch) == write_bulk(bulk, batch)
    assert every_key(stack, bulk.keys.generation) == every_key(stack, script.keys.generation)


@pytest.mark.parametrize(("seed", "planned"), [(1, "before"), (2, "before"), (6, "before"), (3, "after")])
def test_chunks_planned_while_the_one_before_is_sent_leave_the_same_state(
    stack: Settings, redis_client: redis.Redis, seed: int, planned: str
) -> None:
    """A replay plans chunk k+1 while Redis applies chunk k (plan_bulk with ``previous``). Planned before
    chunk k's write has sent anything, or after all of it, each chunk applies what the script would."""
    script = store_for(stack, f"bulk-planned-script-{seed}", sys.maxsize)
    bulk = store_for(stack, f"bulk-planned-bulk-{seed}", sys.maxsize)
    expected: list[int | None] = []
    got: list[int | None] = []
    previous: BulkPlan | None = None
    for batch in _merged(batches(seed), 2):
        expected.append(script.write(batch))
        plan = plan_bulk(bulk, batch, previous)
        if planned == "before" and previous is not None:
            got.append(apply_bulk(bulk, previous))
        if planned == "after":
            got.append(apply_bulk(bulk, plan))
        previous = plan
    if planned == "before" and previous is not None:
        got.append(apply_bulk(bulk, previous))
    assert got == expected
    assert every_key(stack, bulk.keys.generation) == every_key(stack, script.keys.generation)
    assert script.counters()["duplicates"] > 0


def test_a_run_of_chunks_checks_the_ids_recorded_before_it(
    stack: Settings, redis_client: redis.Redis
) -> None:
    """The first plan of a run reads ``meta:seen`` whole (here as scripts left it, like a live job or a
    stopped replay); the later plans carry it on. Ids applied before the run are duplicates."""
    script = store_for(stack, "bulk-resumed-script", sys.maxsize)
    resumed = store_for(stack, "bulk-resumed-bulk", sys.maxsize)
    chunks = _merged(batches(2), 2)
    previous: BulkPlan | None = None
    for n, batch in enumerate(chunks):
        expected = script.write(batch)
        if n < len(chunks) // 2:
            assert resumed.write(batch) == expected
        else:
            previous = plan_bulk(resumed, batch, previous)
            assert apply_bulk(resumed, previous) == expected
    assert every_key(stack, resumed.keys.generation) == every_key(stack, script.keys.generation)


def test_an_id_trimmed_by_the_chunk_before_is_applied_again_though_planned_before_that_chunk_is_sent(
    stack: Settings, redis_client: redis.Redis
) -> None:
    """Chunk 2 moves the clock so far that its write trims chunk 1's id from ``meta:seen``; chunk 3,
    planned while chunk 2 is not yet sent, carries that id again, within the horizon: it is applied."""
    script = store_for(stack, "bulk-retrimmed-script", sys.maxsize)
    bulk = store_for(stack, "bulk-retrimmed-bulk", sys.maxsize)
    later = T0 + bulk.keep_ms + 10 * MINUTE
    chunks = [
        [applied_event("x", T0, "c1", "m1", 1.0)],
        [applied_event("y", later, "c2", "m1", 2.0)],
        [applied_event("x", later + MINUTE, "c3", "m2", 3.0)],
    ]
    schedule = [
        WriteBatch(
            events=events,
            checkpoints=[PartitionCheckpoint("transactions", 0, n + 1, events[0].event_time_ms)],
            counters={"applied": 1},
            history=(HistorySpan("transactions", 0, n, n + 1, None),),
        )
        for n, events in enumerate(chunks)
    ]
    for batch in schedule:
        script.write(batch)
    first = plan_bulk(bulk, schedule[0])
    apply_bulk(bulk, first)
    second = plan_bulk(bulk, schedule[1], first)
    third = plan_bulk(bulk, schedule[2], second)
    apply_bulk(bulk, second)
    apply_bulk(bulk, third)
    assert "duplicates" not in script.counters()
    assert every_key(stack, bulk.keys.generation) == every_key(stack, script.keys.generation)


def test_a_bulk_write_stopped_before_its_commit_is_completed_by_writing_it_again(
    stack: Settings, redis_client: redis.Redis
) -> None:
    script = store_for(stack, "bulk-stopped-script", sys.maxsize)
    bulk = store_for(stack, "bulk-stopped-bulk", sys.maxsize)
    schedule = _merged(batches(4), 4)
    for batch in schedule[:-1]:
        script.write(batch)
        write_bulk(bulk, batch)
    last = schedule[-1]
    script.write(last)
    stopped = stopped_by_a_wrong_type_key(stack, bulk, last, partial(write_bulk, bulk))
    assert "meta:seen_merge" not in stopped
    write_bulk(bulk, last)
    assert every_key(stack, bulk.keys.generation) == every_key(stack, script.keys.generation)


@pytest.mark.parametrize("finish", ["next write", "finish_merge"])
def test_a_bulk_write_stopped_after_its_commit_is_completed_by_the_next_writer(
    stack: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, finish: str
) -> None:
    script = store_for(stack, f"bulk-merge-script-{finish}", sys.maxsize)
    bulk = store_for(stack, f"bulk-merge-bulk-{finish}", sys.maxsize)
    first, second = _merged(batches(5), 20)
    script.write(first)
    write_bulk(bulk, first)

    def stop(*args: object) -> None:
        raise KeyboardInterrupt("stopped after the commit")

    with monkeypatch.context() as patch:
        patch.setattr("sinks.redis_bulk._merge", stop)
        with pytest.raises(KeyboardInterrupt):
            write_bulk(bulk, second)
    stopped = every_key(stack, bulk.keys.generation)
    assert "meta:seen_merge" in stopped  # committed: checkpoints moved, the ids wait in the record
    assert stopped["meta:checkpoints"] != every_key(stack, script.keys.generation)["meta:checkpoints"]
    script.write(second)
    if finish == "finish_merge":  # what a writer does when it starts
        assert finish_merge(bulk) and not finish_merge(bulk)
    else:
        third = WriteBatch(checkpoints=second.checkpoints, counters={"applied": 0})
        script.write(third)
        write_bulk(bulk, third)
    assert every_key(stack, bulk.keys.generation) == every_key(stack, script.keys.generation)
