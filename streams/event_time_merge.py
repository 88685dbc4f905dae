"""An event-time merge of several ordered inputs into one sequence that does not depend on arrival order.

A job reading several Kafka partitions sees their records interleaved in whatever order the client
fetched them, which changes from run to run. When the job's result depends on the order it processes
records (an online model does), that makes it irreproducible. :class:`EventTimeMerge` turns the
interleaved arrivals into one sequence sorted by event time that is the same for every interleaving:

* each *source* (e.g. a topic partition) has a watermark: the highest time seen in it minus the bounded
  out-of-orderness D; the *frontier* is the lowest watermark over all sources (unknown, so nothing is
  released, until every source has delivered a record);
* an item older than its own source's watermark when it arrives is *late*: it is refused (the caller
  decides what happens to it). That depends only on the source's own order, so it is deterministic;
* accepted items are buffered and released once their time is strictly below the frontier, in
  ``(time, order key, source, position in source)`` order. Every item still to arrive is at or above
  its source's watermark, hence at or above the frontier, so nothing released later can sort before
  anything released already: the released sequence is always a prefix of the sorted accepted items;
* :meth:`EventTimeMerge.drain` releases everything (the end of a bounded input).

So the sequence released after each source has delivered a given prefix of its items is a function of
those prefixes only. The price: the merge waits for its slowest source (one source without records
holds everything back), and memory holds what lies between the frontier and the newest records.

Example:
    >>> merge = EventTimeMerge[str](["a", "b"], max_out_of_orderness_ms=10)
    >>> merge.add("a", 100, (), "a@100").accepted
    True
    >>> merge.release()            # source b has delivered nothing: no frontier yet
    []
    >>> merge.add("b", 130, (), "b@130").accepted, merge.frontier
    (True, 90)
    >>> merge.add("a", 125, (), "a@125").accepted, merge.frontier, merge.release()
    (True, 115, ['a@100'])
    >>> merge.add("a", 150, (), "a@150").accepted, merge.frontier, merge.release()   # b holds it back
    (True, 120, [])
    >>> merge.add("a", 135, (), "a@135")          # older than a's watermark (150 - 10)
    Arrival(accepted=False, watermark_ms=140)
    >>> merge.drain()
    ['a@125', 'b@130', 'a@150']
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Arrival(NamedTuple):
    """Whether an item was accepted, and its source's watermark when it arrived (None before any item)."""

    accepted: bool
    watermark_ms: int | None


@dataclass
class _Source:
    rank: int
    """Position of the source in sorted order: the tie-break after the caller's order key."""
    max_time_ms: int | None = None
    arrived: int = 0
    """Items accepted so far: each item's position in its source, the last tie-break."""


class EventTimeMerge(Generic[T]):
    """Merge items of fixed, sortable sources into one event-time ordered sequence (module docstring).

    Args:
        sources: every source that will deliver items (e.g. ``(topic, partition)`` pairs); they must be
            mutually sortable, and the set is fixed: the frontier waits for each of them.
        max_out_of_orderness_ms: D, how far behind its source's newest item an item may be and still
            be accepted.

    Items with equal time are released by ``order_key`` (any tuple of sortable values the caller
    chooses, e.g. a kind and an id), then by source, then by position within the source, so the order
    is total and never compares the items themselves. Picklable (the buffer and the watermarks are the
    merge's whole state), so a job can checkpoint it and resume exactly.
    """

    def __init__(self, sources: Iterable[Hashable], max_out_of_orderness_ms: int) -> None:
        if max_out_of_orderness_ms < 0:
            raise ValueError(f"max_out_of_orderness_ms must be >= 0, got {max_out_of_orderness_ms}")
        ordered: list[Any] = sorted(set(sources))
        if not ordered:
            raise ValueError("an event-time merge needs at least one source")
        self.max_out_of_orderness_ms = max_out_of_orderness_ms
        self._sources = {source: _Source(rank) for rank, source in enumerate(ordered)}
        self._heap: list[tuple[int, tuple[Any, ...], int, int, T]] = []

    @property
    def sources(self) -> list[Hashable]:
        """The sources, in their sorted order."""
        return list(self._sources)

    def watermark(self, source: Hashable) -> int | None:
        """``source``'s watermark: its newest time minus D (None before its first item)."""
        newest = self._source(source).max_time_ms
        return None if newest is None else newest - self.max_out_of_orderness_ms

    @property
    def frontier(self) -> int | None:
        """The lowest watermark over every source; None while any source has delivered nothing."""
        marks = [s.max_time_ms for s in self._sources.values()]
        if any(m is None for m in marks):
            return None
        return min(m for m in marks if m is not None) - self.max_out_of_orderness_ms

    @property
    def buffered(self) -> int:
        """Items accepted and not released yet."""
        return len(self._heap)

    def add(self, source: Hashable, time_ms: int, order_key: tuple[Any, ...], item: T) -> Arrival:
        """Offer ``item`` of ``source`` at ``time_ms``: buffered unless older than the source's watermark.

        Items of one source must be offered in that source's own order (e.g. log order).
        """
        state = self._source(source)
        watermark = None if state.max_time_ms is None else state.max_time_ms - self.max_out_of_orderness_ms
        if watermark is not None and time_ms < watermark:
            return Arrival(False, watermark)
        heapq.heappush(self._heap, (time_ms, order_key, state.rank, state.arrived, item))
        state.arrived += 1
        if state.max_time_ms is None or time_ms > state.max_time_ms:
            state.max_time_ms = time_ms
        return Arrival(True, watermark)

    def release(self) -> list[T]:
        """Pop, in merge order, every buffered item whose time is strictly below the frontier."""
        frontier = self.frontier
        out: list[T] = []
        if frontier is None:
            return out
        heap = self._heap
        while heap and heap[0][0] < frontier:
            out.append(heapq.heappop(heap)[4])
        return out

    def drain(self) -> list[T]:
        """Pop every buffered item in merge order (the end of a bounded input)."""
        out = [entry[4] for entry in sorted(self._heap, key=lambda e: e[:4])]
        self._heap.clear()
        return out

    def _source(self, source: Hashable) -> _Source:
        try:
            return self._sources[source]
        except KeyError:
            raise KeyError(f"unknown source {source!r}; the merge was built for {self.sources}") from None
