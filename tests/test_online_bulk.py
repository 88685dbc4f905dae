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
from sinks.online import WriteBatch
from sinks.redis_bulk import finish_merge, write_bulk
from tests.state import every_key
from tests.write_schedules import batches, stopped_by_a_wrong_type_key, store_for

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
