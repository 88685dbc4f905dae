"""The stream job: events on the log to online features and history, as a Bytewax dataflow.

    transactions, fraud-labels (Kafka, per partition, from the online store's checkpoints)
      -> classify (decode, validate, watermark, lateness; state per partition, a batch as columns)
      -> apply (late -> late-events, malformed -> dead-letter; valid events -> history (ClickHouse),
                then applied events + checkpoints -> online store (Redis))

Example:
    $ highwater run               # tail the log
    $ highwater run --until-end   # stop once the log's end (as of start) is applied
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main
from bytewax.testing import run_main

from highwater.progress import progress_bar
from highwater.settings import Settings, get_settings
from schemas.catalog import FRAUD_LABELS
from schemas.serde import AvroSerde
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.redis_online import RedisOnlineStore
from streams.apply_sink import ApplySink
from streams.classify_batch import BatchClassifier, ClassifiedBatch, RawBatch
from streams.event_time import NEVER_LATE, LatenessPolicy, PartitionClock
from streams.features import REGISTRY, FeatureRegistry
from streams.history_recovery import recover_history
from streams.kafka_source import KafkaPartitionSource, PartitionRange, read_ranges

log = logging.getLogger(__name__)

# Time field of topics that feed history only (the feature topics' come from their entities).
HISTORY_TIME_FIELDS = {FRAUD_LABELS: "label_time"}


def source_topics(settings: Settings, registry: FeatureRegistry = REGISTRY) -> list[str]:
    """Topics the job reads: the feature topics, plus the labels when history is kept."""
    topics = sorted({entity.source_topic for entity in registry.entities()})
    if settings.offline.history and FRAUD_LABELS not in topics:
        topics.append(FRAUD_LABELS)
    return topics


def classifiers(
    settings: Settings, topics: list[str], registry: FeatureRegistry = REGISTRY
) -> dict[str, BatchClassifier]:
    """One classifier per topic: feature topics get the settings' lateness, history-only topics none."""
    serde = AvroSerde(settings.schema_registry_url)
    policy = LatenessPolicy(settings.stream.max_out_of_orderness_ms, settings.stream.allowed_lateness_ms)
    out = {}
    for topic in topics:
        entities = registry.entities_of_topic(topic)
        if entities:
            out[topic] = BatchClassifier(serde, policy, entities[0].time_field)
        else:  # no online state to protect: every valid record goes to history
            out[topic] = BatchClassifier(serde, NEVER_LATE, HISTORY_TIME_FIELDS[topic])
    return out


def build_flow(
    settings: Settings,
    ranges: dict[str, dict[int, PartitionRange]],
    clocks: dict[tuple[str, int], int | None],
    progress: Callable[[int], None] | None = None,
    registry: FeatureRegistry = REGISTRY,
) -> Dataflow:
    """The dataflow reading ``ranges`` of each topic; ``clocks``: the partitions' stored high-water marks."""
    by_topic = classifiers(settings, list(ranges), registry)
    partition_clocks = {key: PartitionClock(t) for key, t in clocks.items()}

    def classify(batch: RawBatch) -> ClassifiedBatch:
        # Each Kafka partition is read by exactly one source partition on one worker, in log order, so
        # this per-partition state sees every partition's records in order.
        key = (batch.topic, batch.partition)
        clock = partition_clocks.get(key)
        if clock is None:
            clock = partition_clocks[key] = PartitionClock(None)
        return by_topic[batch.topic].classify(clock, batch)

    flow = Dataflow("highwater-features")
    inputs = [
        op.input(topic.replace("-", "_"), flow, KafkaPartitionSource(settings, topic, topic_ranges))
        for topic, topic_ranges in ranges.items()
    ]
    records = inputs[0] if len(inputs) == 1 else op.merge("records", *inputs)
    values = op.map("classify", records, classify)
    op.output("apply", values, ApplySink(settings, registry, progress))
    return flow


def plan(
    settings: Settings,
    until_end: bool,
    ends: dict[str, dict[int, int]] | None = None,
    registry: FeatureRegistry = REGISTRY,
) -> tuple[dict[str, dict[int, PartitionRange]], dict[tuple[str, int], int | None]]:
    """Read ranges and partition clocks of every source topic, from the online store's checkpoints.

    ``ends`` (topic -> partition -> offset, exclusive) stops those partitions there instead of at the log
    end (a replay's ``--to``). When history is kept, also brings the generation's offline tables up to
    date and writes the history a stop left pending (:mod:`streams.history_recovery`).
    """
    store = RedisOnlineStore.from_settings(settings, registry)
    if settings.offline.history:
        offline = ClickHouseOfflineStore.from_settings(settings)
        try:
            offline.migrate(settings.online.generation)
            # Before resuming: the history of batches applied online that a stop left unwritten.
            recover_history(settings, store, offline, lambda topics: classifiers(settings, topics, registry))
        finally:
            offline.close()
    ranges: dict[str, dict[int, PartitionRange]] = {}
    clocks: dict[tuple[str, int], int | None] = {}
    for topic in source_topics(settings, registry):
        checkpoints = store.checkpoints(topic)
        spans = read_ranges(settings, topic, {p: c.next_offset for p, c in checkpoints.items()}, until_end)
        for partition, stop in (ends or {}).get(topic, {}).items():
            if partition in spans:
                span = spans[partition]
                end = stop if span.end is None else min(stop, span.end)
                spans[partition] = PartitionRange(min(span.start, end), end)
        ranges[topic] = spans
        clocks.update({(topic, p): c.max_event_time_ms for p, c in checkpoints.items()})
    return ranges, clocks


def run_job(
    until_end: bool = False,
    settings: Settings | None = None,
    show_progress: bool = True,
    ends: dict[str, dict[int, int]] | None = None,
    label: str = "features",
    registry: FeatureRegistry = REGISTRY,
) -> int:
    """Run the stream job in this process; returns how many records it processed.

    With ``until_end`` it stops once every partition's end offset (as of start, or ``ends``) is processed.
    ``registry``: the feature definitions (a new generation records their layout; an existing one keeps
    its own).
    """
    settings = settings or get_settings()
    ranges, clocks = plan(settings, until_end, ends, registry)
    total = (
        sum((r.end - r.start) for spans in ranges.values() for r in spans.values() if r.end is not None)
        if until_end
        else None
    )
    processed = 0
    with progress_bar(label, total, enabled=show_progress and until_end) as advance:

        def on_progress(n: int) -> None:
            nonlocal processed
            processed += n
            advance(n)

        flow = build_flow(settings, ranges, clocks, on_progress, registry)
        if settings.stream.workers > 1:
            cli_main(flow, workers_per_process=settings.stream.workers, epoch_interval=timedelta(seconds=1))
        else:
            run_main(flow, epoch_interval=timedelta(seconds=1))
    return processed
