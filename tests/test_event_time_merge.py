"""The event-time merge (no stack): one sorted sequence out of interleaved sources, whatever the interleaving.

What must hold: nothing is released before every source has delivered; an item older than its own
source's watermark is refused; released items come in (time, order key, source, position) order and
the released sequence is always a prefix of the sorted accepted items, for every interleaving; the merge
pickles mid-stream and continues identically.
"""

from __future__ import annotations

import pickle
import random

import pytest

from streams.event_time_merge import Arrival, EventTimeMerge

D = 100


def source_sequences(seed: int, sources: int = 4, per_source: int = 300) -> dict[int, list[int]]:
    """Per source, event times in log order: rising with disorder up to 1.5 D, some far behind."""
    rng = random.Random(seed)
    out: dict[int, list[int]] = {}
    for s in range(sources):
        t, times = 0, []
        for _ in range(per_source):
            t += rng.randint(0, 40)
            jitter = rng.randint(0, 3 * D // 2)
            times.append(t - (5 * D if rng.random() < 0.03 else jitter))
        out[s] = times
    return out


def interleave(seqs: dict[int, list[int]], seed: int) -> list[tuple[int, int, int]]:
    """(source, position, time) in a random interleaving that keeps each source's own order."""
    rng = random.Random(seed)
    cursors = dict.fromkeys(seqs, 0)
    out = []
    while any(cursors[s] < len(seqs[s]) for s in seqs):
        s = rng.choice([s for s in seqs if cursors[s] < len(seqs[s])])
        out.append((s, cursors[s], seqs[s][cursors[s]]))
        cursors[s] += 1
    return out


def run(
    seqs: dict[int, list[int]], seed: int, pickle_every: int | None = None
) -> tuple[list[tuple[int, int]], set[tuple[int, int]], list[list[tuple[int, int]]]]:
    """Feed one interleaving; returns the released sequence, the refused items, and each release batch."""
    merge: EventTimeMerge[tuple[int, int]] = EventTimeMerge(seqs, D)
    released: list[tuple[int, int]] = []
    batches = []
    late = set()
    for n, (s, pos, t) in enumerate(interleave(seqs, seed), start=1):
        if not merge.add(s, t, (), (s, pos)).accepted:
            late.add((s, pos))
        if n % 7 == 0:
            batch = merge.release()
            batches.append(batch)
            released.extend(batch)
        if pickle_every and n % pickle_every == 0:
            merge = pickle.loads(pickle.dumps(merge))
    released.extend(merge.drain())
    return released, late, batches


def test_the_released_sequence_does_not_depend_on_the_interleaving() -> None:
    seqs = source_sequences(1)
    first, late, _ = run(seqs, seed=0)
    assert late, "the input should hold items late in their own source"
    for seed in range(1, 6):
        again, late_again, _ = run(seqs, seed=seed, pickle_every=53 if seed % 2 else None)
        assert again == first
        assert late_again == late


def test_released_items_come_sorted_and_each_batch_extends_a_sorted_prefix() -> None:
    seqs = source_sequences(2)
    released, late, batches = run(seqs, seed=3)
    key = {(s, pos): (seqs[s][pos], s, pos) for s in seqs for pos in range(len(seqs[s]))}
    accepted = sorted((item for item in key if item not in late), key=key.__getitem__)
    assert released == accepted
    assert sum(map(len, batches)) > len(released) / 2, "most items should leave before the drain"


def test_lateness_depends_only_on_the_own_source() -> None:
    seqs = source_sequences(4)
    _, late, _ = run(seqs, seed=0)
    expected = set()
    for s, times in seqs.items():
        newest = None
        for pos, t in enumerate(times):
            if newest is not None and t < newest - D:
                expected.add((s, pos))
            else:
                newest = t if newest is None else max(newest, t)
    assert late == expected


def test_nothing_is_released_before_every_source_has_delivered() -> None:
    merge: EventTimeMerge[str] = EventTimeMerge(["a", "b"], max_out_of_orderness_ms=0)
    for t in range(10):
        merge.add("a", t * 1_000, (), f"a{t}")
    assert merge.frontier is None and merge.release() == []
    merge.add("b", 5_000, (), "b")
    assert merge.frontier == 5_000
    assert merge.release() == [f"a{t}" for t in range(5)]  # strictly below the frontier


def test_ties_break_by_order_key_then_source_then_position() -> None:
    merge: EventTimeMerge[str] = EventTimeMerge([("t", 1), ("t", 0)], max_out_of_orderness_ms=0)
    merge.add(("t", 1), 10, (1, "x"), "score x in p1")
    merge.add(("t", 1), 10, (0, "x"), "label x in p1")
    merge.add(("t", 0), 10, (1, "x"), "score x in p0")
    merge.add(("t", 0), 10, (1, "x"), "score x in p0 again")
    merge.add(("t", 0), 20, (), "later")
    merge.add(("t", 1), 20, (), "later too")
    assert merge.release() == ["label x in p1", "score x in p0", "score x in p0 again", "score x in p1"]


def test_an_item_at_the_watermark_is_accepted_one_below_is_late() -> None:
    merge: EventTimeMerge[int] = EventTimeMerge(["a"], max_out_of_orderness_ms=10)
    assert merge.add("a", 100, (), 1) == Arrival(True, None)
    assert merge.add("a", 90, (), 2) == Arrival(True, 90)
    assert merge.add("a", 89, (), 3) == Arrival(False, 90)
    assert merge.release() == [] and merge.drain() == [2, 1]


def test_unknown_sources_and_bad_arguments_are_refused() -> None:
    merge: EventTimeMerge[int] = EventTimeMerge(["a"], 0)
    with pytest.raises(KeyError, match="unknown source 'b'"):
        merge.add("b", 1, (), 1)
    with pytest.raises(ValueError, match="max_out_of_orderness_ms"):
        EventTimeMerge(["a"], -1)
    with pytest.raises(ValueError, match="at least one source"):
        EventTimeMerge([], 0)
