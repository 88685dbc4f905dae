"""Staged writes: a batch of more entries than one script may apply leaves exactly the state one script
would, and one stopped between its parts is completed by writing it again.

Each test writes the same batches to two generations, one applying every batch in one script and one
in parts of a few entries (so keys are split across parts too), and compares every key of both: events,
tiles, the idempotency index, checkpoints, counters, clock and pending history.
"""

from __future__ import annotations

import sys

import pytest
import redis

from highwater.settings import Settings
from tests.state import every_key
from tests.write_schedules import batches, stopped_by_a_wrong_type_key, store_for

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("seed", [1, 2])
def test_staged_writes_leave_exactly_the_state_of_one_script(
    stack: Settings, redis_client: redis.Redis, seed: int
) -> None:
    whole = store_for(stack, f"staged-whole-{seed}", sys.maxsize)
    staged = store_for(stack, f"staged-parts-{seed}", 3)
    for batch in batches(seed):
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
    whole = store_for(stack, "stopped-whole", sys.maxsize)
    staged = store_for(stack, "stopped-parts", 3)
    schedule = batches(3)
    for batch in schedule[:-1]:
        whole.write(batch)
        staged.write(batch)
    last = schedule[-1]
    whole.write(last)
    stopped_by_a_wrong_type_key(stack, staged, last, staged.write)  # a late part fails: earlier ones in
    staged.write(last)
    assert every_key(stack, staged.keys.generation) == every_key(stack, whole.keys.generation)
