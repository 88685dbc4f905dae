"""The feature stream job: transactions on the log to online features, as a Bytewax dataflow.

    transactions (Kafka, per partition, from the online store's checkpoints)
      -> classify (decode, validate, watermark, lateness; state per partition, batch at a time)
      -> apply (late -> late-events, malformed -> dead-letter, applied + checkpoint -> online store)

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
from schemas.serde import AvroSerde
from sinks.redis_online import RedisOnlineStore
from streams.apply_sink import ApplySink
from streams.event_time import Classified, Classifier, LatenessPolicy, PartitionClock, RawRecord
from streams.features import REGISTRY, TRANSACTIONS_TOPIC
from streams.kafka_source import KafkaPartitionSource, PartitionRange, read_ranges

log = logging.getLogger(__name__)


def build_flow(
    settings: Settings,
    ranges: dict[int, PartitionRange],
    clocks: dict[int, int | None],
    progress: Callable[[int], None] | None = None,
    topic: str = TRANSACTIONS_TOPIC,
) -> Dataflow:
    """The dataflow reading ``ranges`` of ``topic``; ``clocks``: the partitions' stored high-water marks."""
    policy = LatenessPolicy(settings.stream.max_out_of_orderness_ms, settings.stream.allowed_lateness_ms)
    classifier = Classifier(AvroSerde(settings.schema_registry_url), policy)

    partition_clocks = {p: PartitionClock(t) for p, t in clocks.items()}

    def classify_batch(batch: list[RawRecord]) -> list[Classified]:
        # Each Kafka partition is read by exactly one source partition on one worker, and a batch keeps
        # its records in log order, so this per-partition state sees every partition's records in order.
        out = []
        for raw in batch:
            clock = partition_clocks.get(raw.partition)
            if clock is None:
                clock = partition_clocks[raw.partition] = PartitionClock(None)
            out.append(classifier.classify(clock, raw))
        return out

    flow = Dataflow("highwater-features")
    records = op.input(topic, flow, KafkaPartitionSource(settings, topic, ranges))
    values = op.flat_map_batch("classify", records, classify_batch)
    op.output("apply", values, ApplySink(settings, REGISTRY, progress))
    return flow


def plan(
    settings: Settings, until_end: bool, topic: str = TRANSACTIONS_TOPIC
) -> tuple[dict[int, PartitionRange], dict[int, int | None]]:
    """Read ranges and partition clocks from the online store's checkpoints."""
    store = RedisOnlineStore.from_settings(settings)
    checkpoints = store.checkpoints(topic)
    ranges = read_ranges(settings, topic, {p: c.next_offset for p, c in checkpoints.items()}, until_end)
    clocks = {p: c.max_event_time_ms for p, c in checkpoints.items()}
    return ranges, clocks


def run_job(until_end: bool = False, settings: Settings | None = None, show_progress: bool = True) -> int:
    """Run the stream job in this process; returns how many records it processed.

    With ``until_end`` it stops once every partition's end offset (as of start) is processed.
    """
    settings = settings or get_settings()
    ranges, clocks = plan(settings, until_end)
    total = sum((r.end - r.start) for r in ranges.values() if r.end is not None) if until_end else None
    processed = 0
    with progress_bar("features", total, enabled=show_progress and until_end) as advance:

        def on_progress(n: int) -> None:
            nonlocal processed
            processed += n
            advance(n)

        flow = build_flow(settings, ranges, clocks, on_progress)
        if settings.stream.workers > 1:
            cli_main(flow, workers_per_process=settings.stream.workers, epoch_interval=timedelta(seconds=1))
        else:
            run_main(flow, epoch_interval=timedelta(seconds=1))
    return processed
