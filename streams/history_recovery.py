"""Writes the history of batches that were applied online but whose history a crash left unwritten.

The stream job writes history on a writer of its own that trails the online writes by a few batches (see
:mod:`streams.apply_sink`). Each online write records the batch as *pending history*: its apply sequence
number and, per partition, the span of offsets it covered and the partition's high-water mark before it.
Before the job resumes, :func:`recover_history` re-reads exactly those records, decides the same fates
(the watermark depends only on the high-water mark and the records' order, so a re-read decides as the
first read did), writes their history with the batch's own sequence number (what the feature log's
"applied by then" relies on) and clears the entry. Rows that did reach history are written again and
replace themselves (history keeps one row per offset).

Example:
    >>> by_topic = lambda topics: classifiers(settings, topics)             # doctest: +SKIP
    >>> recover_history(settings, store, offline, by_topic)                 # doctest: +SKIP
    RecoveredHistory(batches=3, records=600)
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import NamedTuple

from highwater.settings import Settings
from sinks.offline import OfflineStore
from sinks.online import HistorySpan, OnlineStore
from streams.apply_sink import history_frame, write_history
from streams.classify_batch import BatchClassifier, RawBatch
from streams.event_time import PartitionClock
from streams.kafka_source import read_spans

log = logging.getLogger(__name__)


class RecoveredHistory(NamedTuple):
    """How many pending batches had their history written, and how many records those batches read."""

    batches: int
    records: int


def recover_history(
    settings: Settings,
    store: OnlineStore,
    offline: OfflineStore,
    classifiers_for: Callable[[list[str]], Mapping[str, BatchClassifier]],
) -> RecoveredHistory:
    """Write the history of every batch ``store`` holds as pending, in apply order, and clear them.

    ``classifiers_for``: given topics, the classifier the job uses for each (:func:`streams.job.classifiers`);
    called only when something is pending.
    """
    pending = store.pending_history()
    if not pending:
        return RecoveredHistory(0, 0)
    classifiers = classifiers_for(sorted({span.topic for batch in pending for span in batch.spans}))
    logs = _read_logs([span for batch in pending for span in batch.spans], settings)
    records = 0
    for batch in pending:
        frames = []
        for span in batch.spans:
            raw = _slice(logs.get((span.topic, span.partition)), span)
            if raw is None:
                continue
            records += len(raw.offsets)
            classified = classifiers[span.topic].classify(PartitionClock(span.clock_before_ms), raw)
            if classified.events.height:
                frames.append((span.topic, history_frame(classified)))
        write_history(offline, settings.online.generation, frames, batch.apply_seq)
        store.confirm_history(batch.apply_seq)
    log.info(
        "wrote the history of %d batches (%d records) that were applied online before the last stop",
        len(pending),
        records,
    )
    return RecoveredHistory(len(pending), records)


def _read_logs(spans: list[HistorySpan], settings: Settings) -> dict[tuple[str, int], RawBatch]:
    """Each partition's records from its lowest pending offset to its highest, read once."""
    bounds: dict[str, dict[int, tuple[int, int]]] = {}
    for span in spans:
        of_topic = bounds.setdefault(span.topic, {})
        low, high = of_topic.get(span.partition, (span.start_offset, span.end_offset))
        of_topic[span.partition] = (min(low, span.start_offset), max(high, span.end_offset))
    return {
        (topic, partition): raw
        for topic, of_topic in bounds.items()
        for partition, raw in read_spans(settings, topic, of_topic).items()
    }


def _slice(raw: RawBatch | None, span: HistorySpan) -> RawBatch | None:
    """The records of ``raw`` inside ``span`` (None when there are none); offsets are in log order."""
    if raw is None:
        return None
    first = bisect_left(raw.offsets, span.start_offset)
    stop = bisect_left(raw.offsets, span.end_offset)
    if first == stop:
        return None
    return RawBatch(
        raw.topic, raw.partition, raw.offsets[first:stop], raw.keys[first:stop], raw.values[first:stop]
    )
