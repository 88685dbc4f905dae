"""Ingest throughput: events/s from ``transactions`` into the Redis online store, against raw consumption.

One run, on a local stack of its own:

1. produce N synthetic transactions (not timed: the measure starts with everything on the log);
2. baselines: one plain ``confluent_kafka.Consumer`` assigned to every partition from the beginning,
   until the log end, decoding each value with :meth:`schemas.serde.AvroSerde.decode` (fastavro, record
   by record), then again decoding each ``consume()`` result with
   :class:`schemas.batch_decode.BatchDecoder` (the job's own decoder). That is the least any pipeline
   must do (read and decode), so the ratio says what the rest costs. The target is judged against the
   faster of the two: the job's faster decoder must not flatter it;
3. the pipeline: :func:`streams.job.run_job` with ``until_end=True`` on a fresh online store
   generation (decode, validate, watermark and lateness, Redis writes with checkpoints);
4. the baseline again, so drift of a noisy machine shows up as two different baseline figures.

Log ends come from :func:`streams.kafka_source.log_end_offsets` (the local broker's ListOffsets(latest)
answer is wrong). The pipeline's result is checked, not assumed: its counters must sum to N and every
partition's checkpoint must sit at the log end.

Target (from the issue): pipeline throughput at least 40% of the raw consume+decode rate.

Example:
    $ uv run python -m bench.ingest                    # 1,000,000 events, a few minutes
    $ uv run python -m bench.ingest --count 100000     # a quick look
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass

from bench import common
from bench.common import (
    Check,
    Table,
    isolated_stack,
    produce_transactions,
    say,
    synthetic_transactions,
    write_results,
)
from highwater.settings import Settings
from schemas.catalog import TRANSACTIONS
from sinks.redis_online import RedisOnlineStore
from streams.job import run_job
from streams.kafka_source import log_end_offsets

NAME = "ingest"
TARGET_RATIO = 0.40
GENERATION = "bench-ingest"


@dataclass(frozen=True)
class Run:
    """One timed pass over the log: how many records, how long, and the rate."""

    label: str
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.records / self.seconds


def raw_consume_decode(
    settings: Settings, ends: dict[int, tuple[int, int]], label: str, batch_decode: bool = False
) -> Run:
    """Read every partition of ``transactions`` from ``low`` to ``high`` with one consumer and
    Avro-decode each value (:func:`bench.common.raw_consume_decode`)."""
    spans = {(TRANSACTIONS, p): span for p, span in ends.items()}
    return Run(label, *common.raw_consume_decode(settings, spans, label, batch_decode))


def pipeline_run(settings: Settings) -> Run:
    """Run the feature job over the whole log and time it (start-up included)."""
    started = time.perf_counter()
    processed = run_job(until_end=True, settings=settings, show_progress=True)
    elapsed = time.perf_counter() - started
    run = Run("pipeline", processed, elapsed)
    say(f"pipeline: {processed:,} records in {elapsed:.1f} s = {run.rate:,.0f} records/s")
    return run


def main(argv: list[str] | None = None) -> None:
    """Run the ingest benchmark and write ``bench/results/ingest.{md,json}``."""
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="transactions to produce (default 1M)")
    parser.add_argument("--seed", type=int, default=7, help="synthetic stream seed (default 7)")
    args = parser.parse_args(argv)

    def configure(settings: Settings) -> None:
        settings.online.generation = GENERATION

    records = synthetic_transactions(args.seed, args.count)
    with isolated_stack(NAME, configure) as settings:
        produce_rate = produce_transactions(settings, records)
        del records
        gc.collect()
        ends = log_end_offsets(settings, TRANSACTIONS)
        on_log = sum(high - low for low, high in ends.values())
        if on_log != args.count:
            raise RuntimeError(f"the log holds {on_log:,} records, expected {args.count:,}")

        raw_before = raw_consume_decode(settings, ends, "raw consume+decode (before)")
        batch_before = raw_consume_decode(settings, ends, "raw consume+batch decode (before)", True)
        pipeline = pipeline_run(settings)
        raw_after = raw_consume_decode(settings, ends, "raw consume+decode (after)")
        batch_after = raw_consume_decode(settings, ends, "raw consume+batch decode (after)", True)

        store = RedisOnlineStore.from_settings(settings)
        counters = store.counters()
        checkpoints = store.checkpoints(TRANSACTIONS)

    accounted = sum(
        v for k, v in counters.items() if k == "applied" or k == "late" or k.startswith("malformed:")
    )
    at_end = all(
        checkpoints.get(p) is not None and checkpoints[p].next_offset == high for p, (_, high) in ends.items()
    )
    complete = accounted == args.count and pipeline.records == args.count and at_end
    record_rate = (raw_before.rate + raw_after.rate) / 2
    batch_rate = (batch_before.rate + batch_after.rate) / 2
    raw_rate = max(record_rate, batch_rate)
    baseline = "raw consume+batch decode" if batch_rate >= record_rate else "raw consume+decode"
    ratio = pipeline.rate / raw_rate

    checks = [
        Check(
            f"pipeline >= {TARGET_RATIO:.0%} of raw consume+decode (the faster baseline)",
            f"{ratio:.1%} ({pipeline.rate:,.0f} vs {raw_rate:,.0f} records/s, {baseline}); "
            f"vs record-by-record decode: {pipeline.rate / record_rate:.1%}",
            ratio >= TARGET_RATIO,
        ),
        Check(
            "pipeline accounted for every event (applied + late + malformed = N, checkpoints at log end)",
            f"{accounted:,} of {args.count:,}; checkpoints at end: {'yes' if at_end else 'no'}",
            complete,
        ),
    ]
    table = Table(
        f"Throughput, {args.count:,} transactions on {len(ends)} partitions",
        ["Run", "Records", "Seconds", "Records/s", "vs the faster baseline (mean)"],
    )
    for run in (raw_before, batch_before, pipeline, raw_after, batch_after):
        table.rows.append(
            [
                run.label,
                f"{run.records:,}",
                f"{run.seconds:.1f}",
                f"{run.rate:,.0f}",
                f"{run.rate / raw_rate:.1%}",
            ]
        )
    counter_table = Table(
        "Pipeline counters", ["Counter", "Value"], [[k, f"{v:,}"] for k, v in sorted(counters.items())]
    )
    notes = [
        "Baselines = one confluent_kafka Consumer assigned to all partitions from the beginning, "
        f"consume({settings.stream.batch_size}) batches, until every partition's log end (from fetch "
        "responses), decoding with AvroSerde.decode per record (fastavro), or with BatchDecoder per "
        "consume() result (one Avro block per batch read by polars: the stream job's decoder). Each ran "
        "before and after the pipeline; the target uses the mean of the faster one.",
        "Pipeline = run_job(until_end=True) with default stream settings "
        f"(workers={settings.stream.workers}, batch_size={settings.stream.batch_size}, "
        f"poll_timeout_ms={settings.stream.poll_timeout_ms}); its time includes start-up (plan, Bytewax "
        "dataflow build) and the final flush. It decodes, validates, classifies (watermarks, lateness), "
        "routes late records to late-events and writes history to ClickHouse and events, checkpoints and "
        "counters to Redis, batch by batch as columns (streams.classify_batch).",
        f"Producing (not part of the measure) ran at {produce_rate:,.0f} events/s with the validated, "
        "idempotent EventProducer.",
        "All parts (broker, registry, Redis, the job) share the same 2 CPUs, so the pipeline competes with "
        "Redis and the broker for CPU while the baseline barely touches Redis.",
    ]
    data = {
        "count": args.count,
        "seed": args.seed,
        "partitions": len(ends),
        "produce_rate": produce_rate,
        "runs": {
            r.label: {"records": r.records, "seconds": r.seconds, "rate": r.rate}
            for r in (raw_before, batch_before, pipeline, raw_after, batch_after)
        },
        "raw_rate_mean": raw_rate,
        "raw_record_decode_rate_mean": record_rate,
        "raw_batch_decode_rate_mean": batch_rate,
        "pipeline_rate": pipeline.rate,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "counters": counters,
        "accounted": accounted,
        "checkpoints_at_end": at_end,
        "stream_settings": settings.stream.model_dump(),
    }
    write_results(
        NAME, "Ingest throughput", tables=[table, counter_table], checks=checks, notes=notes, data=data
    )


if __name__ == "__main__":
    main()
