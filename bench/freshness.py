"""Freshness: produce-to-visible latency over gRPC at 5,000 events/s, against the broker alone.

One run, on a local stack of its own:

* the feature job tails the log in a subprocess (``highwater run``, tail mode) and the gRPC server runs in
  another (``highwater serve``), both with this run's settings, as they are deployed;
* this process produces at a paced rate (default 5,000 events/s) events whose ``event_time`` is the
  wall clock at produce time (so no window or lateness rule drops them); every 50th event is a *probe*:
  a transaction of a card id never seen before. Its produce time is taken just before ``produce()``;
* a poller thread calls ``GetOnlineFeatures`` for all outstanding probe ids in one request, every few
  milliseconds, until ``card_txn_count_5m`` is 1: latency = time the answer arrived - produce time;
* baseline, at the same time: a plain ``confluent_kafka.Consumer`` thread assigned to every partition at
  the log end, with the job's fetch settings, records when it receives each probe: latency = receive
  time - produce time, i.e. what the broker and client library alone cost.

A warm-up (the job must answer one probe, then 5 s of traffic) is excluded from the figures. The job's
``stream.poll_timeout_ms`` (how long one partition read may wait for records, also its
``fetch.wait.max.ms``) bounds freshness; the value used is reported, default the settings' default.

Target (from the issue): p99 produce-to-visible <= 500 ms at 5k events/s. Writes
``bench/results/freshness.md``, ``.json`` and ``freshness.png`` (latency over time, both series).

Example:
    $ uv run python -m bench.freshness
    $ uv run python -m bench.freshness --duration 20 --poll-timeout-ms 20
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from bench.common import (
    RESULTS_DIR,
    Check,
    Table,
    fmt_ms,
    isolated_stack,
    latency_stats,
    say,
    spawn_highwater,
    stop_process,
    synthetic_transactions,
    wait_until_serving,
    write_results,
)
from highwater.progress import progress_bar
from highwater.settings import Settings, StreamSettings
from schemas.catalog import TRANSACTIONS
from serving.client import FeatureClient, FeatureServiceError
from streams.kafka_source import log_end_offsets
from streams.producer import EventProducer

NAME = "freshness"
FEATURE = "card_txn_count_5m"
PROBE_PREFIX = "probe-"
TARGET_P99_MS = 500.0
POLL_INTERVAL_S = 0.010
MAX_IDS_PER_POLL = 1_000  # the server's limit per request
READY_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 20.0


@dataclass
class Probe:
    """One probe event: when it was produced and when the pipeline made it visible."""

    card_id: str
    produced: float
    measured: bool
    visible: float | None = None


class ProbeBook:
    """Probes produced so far, shared by the producer (main thread) and the poller (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._probes: dict[str, Probe] = {}
        self._outstanding: dict[str, None] = {}  # insertion-ordered set: oldest probes polled first

    def add(self, probe: Probe) -> None:
        """Record a probe just produced."""
        with self._lock:
            self._probes[probe.card_id] = probe
            self._outstanding[probe.card_id] = None

    def outstanding(self, limit: int) -> list[str]:
        """Up to ``limit`` probe ids not visible yet, oldest first."""
        with self._lock:
            return list(itertools.islice(self._outstanding, limit))

    def pending(self) -> int:
        """How many probes are not visible yet."""
        with self._lock:
            return len(self._outstanding)

    def mark_visible(self, card_ids: list[str], at: float) -> None:
        """The pipeline served these probes (count 1) in an answer that arrived at ``at``."""
        with self._lock:
            for card_id in card_ids:
                if card_id in self._outstanding:
                    del self._outstanding[card_id]
                    self._probes[card_id].visible = at

    def is_visible(self, card_id: str) -> bool:
        """Whether the probe ``card_id`` was seen with its count."""
        with self._lock:
            probe = self._probes.get(card_id)
            return probe is not None and probe.visible is not None

    def probes(self) -> list[Probe]:
        """Every probe, in produce order."""
        with self._lock:
            return list(self._probes.values())


class Poller(threading.Thread):
    """Asks the gRPC server for all outstanding probes, every few ms, and marks those that are visible."""

    def __init__(self, target: str, book: ProbeBook) -> None:
        super().__init__(name="freshness-poller", daemon=True)
        self._target = target
        self._book = book
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.polls = 0
        self.poll_seconds = 0.0

    def run(self) -> None:
        try:
            # A spawned server takes seconds to import its model libraries: wait for it, not for a poll.
            wait_until_serving(self._target)
            with FeatureClient(self._target, timeout_s=10.0, wait_for_ready=True) as client:
                while not self.stop_event.is_set():
                    ids = self._book.outstanding(MAX_IDS_PER_POLL)
                    if ids:
                        self._poll(client, ids)
                    self.stop_event.wait(POLL_INTERVAL_S)
        except BaseException as error:  # handed to the main thread, which reports it
            self.error = error

    def _poll(self, client: FeatureClient, ids: list[str]) -> None:
        started = time.monotonic()
        try:
            answer = client.get_online_features("card", ids, [FEATURE])
        except FeatureServiceError as error:
            if error.code.name == "FAILED_PRECONDITION":  # nothing applied yet: no clock to read at
                return
            raise
        now = time.monotonic()
        self.polls += 1
        self.poll_seconds += now - started
        seen = [row.entity_id for row in answer.rows if (row.values[FEATURE] or 0) >= 1]
        if seen:
            self._book.mark_visible(seen, now)


class LogWatcher(threading.Thread):
    """The baseline: a plain consumer at the log end noting when each probe arrives from the broker."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="freshness-consumer", daemon=True)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.seen: dict[str, float] = {}
        self.records = 0
        self._consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": "bench-freshness-baseline",
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                    # The job's partition readers fetch with the same wait, so both see the broker alike.
                    "fetch.wait.max.ms": settings.stream.poll_timeout_ms,
                }
            )
        )
        ends = log_end_offsets(settings, TRANSACTIONS)
        self._consumer.assign([TopicPartition(TRANSACTIONS, p, high) for p, (_, high) in ends.items()])

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                message = self._consumer.poll(0.1)
                if message is None:
                    continue
                now = time.monotonic()
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                self.records += 1
                key = message.key()
                if key is not None and key.startswith(PROBE_PREFIX.encode()):
                    self.seen.setdefault(key.decode(), now)
        except BaseException as error:
            self.error = error
        finally:
            self._consumer.close()


class PacedProducer:
    """Writes filler transactions and probes at a fixed rate with wall-clock event times."""

    def __init__(
        self,
        settings: Settings,
        book: ProbeBook,
        templates: list[dict[str, Any]],
        rate: float,
        probe_every: int,
    ) -> None:
        self._producer = EventProducer(settings)
        self._book = book
        self._templates = itertools.cycle(templates)
        self._rate = rate
        self._probe_every = probe_every
        self._seq = 0
        self.first_send: float | None = None
        self.last_send: float | None = None
        self.sent = 0

    def run(self, seconds: float, measured: bool, label: str) -> None:
        """Produce for ``seconds`` at the rate; probes are marked ``measured`` or warm-up."""
        total = int(seconds * self._rate)
        with progress_bar(label, total) as advance:
            start = time.monotonic()
            for i in range(total):
                due = start + i / self._rate
                while (wait := due - time.monotonic()) > 0:
                    time.sleep(min(wait, 0.001))
                self._send(measured)
                if i % 500 == 499:
                    advance(500)
            advance(total % 500)

    def probe(self, measured: bool) -> str:
        """Produce one probe right now; returns its card id."""
        return self._send(measured, force_probe=True)

    def _send(self, measured: bool, force_probe: bool = False) -> str:
        seq = self._seq
        self._seq += 1
        record = dict(next(self._templates))
        record["transaction_id"] = f"fresh-{seq:09d}"
        is_probe = force_probe or seq % self._probe_every == 0
        if is_probe:
            record["card_id"] = f"{PROBE_PREFIX}{seq:09d}"
        record["event_time"] = time.time_ns() // 1_000_000
        produced = time.monotonic()
        self._producer.produce(TRANSACTIONS, record)
        if is_probe:
            self._book.add(Probe(record["card_id"], produced, measured))
        if measured:
            self.first_send = self.first_send or produced
            self.last_send = produced
            self.sent += 1
        return str(record["card_id"])

    def flush(self) -> None:
        """Wait until the broker acknowledged everything."""
        self._producer.flush()

    def close(self) -> None:
        """Drop the Kafka producer so its client does not outlive the stack (call :meth:`flush` first)."""
        del self._producer


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Call ``condition`` every 10 ms until it is True; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.01)


def plot(measured: list[Probe], seen: dict[str, float], start: float, path: Path) -> None:
    """Latency of every measured probe over the run, pipeline and broker-only baseline."""
    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    pipeline = [
        (p.produced - start, (p.visible - p.produced) * 1000) for p in measured if p.visible is not None
    ]
    baseline = [
        (p.produced - start, (seen[p.card_id] - p.produced) * 1000) for p in measured if p.card_id in seen
    ]
    if pipeline:
        xs, ys = zip(*pipeline, strict=True)
        ax.scatter(xs, ys, s=6, label="pipeline: produce -> visible over gRPC", alpha=0.7)
    if baseline:
        xs, ys = zip(*baseline, strict=True)
        ax.scatter(xs, ys, s=6, label="baseline: produce -> plain consumer", alpha=0.7, marker="x")
    ax.axhline(TARGET_P99_MS, color="red", linestyle=":", linewidth=1, label="target p99 (500 ms)")
    ax.set_yscale("log")
    ax.set_xlabel("produce time (s since the measured phase began)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Freshness per probe")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run the freshness benchmark and write ``bench/results/freshness.{md,json,png}``."""
    default_poll = StreamSettings().poll_timeout_ms
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=5_000.0, help="events/s produced (default 5000)")
    parser.add_argument("--duration", type=float, default=40.0, help="measured seconds (default 40)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of traffic before measuring")
    parser.add_argument("--probe-every", type=int, default=50, help="every Nth event is a probe (default 50)")
    parser.add_argument(
        "--poll-timeout-ms",
        type=int,
        default=default_poll,
        help=f"the job's stream.poll_timeout_ms (default: the settings' default, {default_poll})",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the filler events' templates")
    args = parser.parse_args(argv)
    # Measurement threads should get the GIL within 1 ms of their wake-up, not the default 5 ms.
    sys.setswitchinterval(0.001)

    def configure(settings: Settings) -> None:
        settings.stream.poll_timeout_ms = args.poll_timeout_ms

    templates = synthetic_transactions(args.seed, 20_000)
    book = ProbeBook()
    with isolated_stack(NAME, configure) as settings:
        logs = settings.state_dir / "logs"
        watcher = LogWatcher(settings)
        poller = Poller(settings.effective_grpc_target, book)
        producer = PacedProducer(settings, book, templates, args.rate, args.probe_every)
        server = spawn_highwater(["serve"], settings, logs / "bench-serve.log")
        job = spawn_highwater(["run"], settings, logs / "bench-job.log")
        try:
            watcher.start()
            poller.start()
            started = time.monotonic()
            ready = producer.probe(measured=False)
            producer.flush()

            def first_probe_visible() -> bool:
                for name, proc in (("job", job), ("server", server)):
                    if proc.poll() is not None:
                        raise RuntimeError(
                            f"the {name} exited early ({proc.returncode}); see its log in {logs}"
                        )
                if poller.error is not None:
                    raise RuntimeError(f"poller failed: {poller.error!r}")
                return book.is_visible(ready)

            wait_until(first_probe_visible, READY_TIMEOUT_S, "the job and server did not serve a first probe")
            say(f"job and server answer: first probe visible {time.monotonic() - started:.1f} s after start")
            producer.run(args.warmup, measured=False, label="warm-up")
            producer.run(args.duration, measured=True, label=f"measured, {args.rate:,.0f}/s")
            producer.flush()
            try:
                wait_until(lambda: book.pending() == 0, DRAIN_TIMEOUT_S, "probes still invisible")
            except TimeoutError:
                say(f"{book.pending()} probe(s) still not visible after {DRAIN_TIMEOUT_S:.0f} s")
            time.sleep(0.5)  # let the consumer thread catch the last probes too
        finally:
            for thread in (poller, watcher):
                thread.stop_event.set()
                if thread.ident is not None:  # started
                    thread.join(15)
            job_code = stop_process(job)
            server_code = stop_process(server)
            producer.close()
            job_log_tail = (logs / "bench-job.log").read_text(errors="replace")[-2000:]
        for thread in (poller, watcher):
            if thread.error is not None:
                raise RuntimeError(f"{thread.name} failed: {thread.error!r}")

    measured = [p for p in book.probes() if p.measured]
    visible_ms = [(p.visible - p.produced) * 1000 for p in measured if p.visible is not None]
    consumed_ms = [
        (watcher.seen[p.card_id] - p.produced) * 1000 for p in measured if p.card_id in watcher.seen
    ]
    missing_visible = len(measured) - len(visible_ms)
    missing_consumed = len(measured) - len(consumed_ms)
    span = (producer.last_send or 0.0) - (producer.first_send or 0.0)
    achieved = (producer.sent - 1) / span if span > 0 else 0.0
    pipe, base = latency_stats(visible_ms), latency_stats(consumed_ms)
    poll_mean_ms = poller.poll_seconds / poller.polls * 1000 if poller.polls else 0.0

    # A non-default poll timeout is a different experiment: it gets results files of its own.
    name = NAME if args.poll_timeout_ms == default_poll else f"{NAME}-poll{args.poll_timeout_ms}ms"
    plot_name = f"{name}.png"
    plot(measured, watcher.seen, producer.first_send or 0.0, RESULTS_DIR / plot_name)

    checks = [
        Check(
            f"p99 produce-to-visible <= {TARGET_P99_MS:.0f} ms at {args.rate:,.0f} events/s",
            f"{fmt_ms(pipe['p99']) if pipe['n'] else 'n/a'} at {achieved:,.0f} events/s achieved",
            bool(pipe["n"]) and pipe["p99"] <= TARGET_P99_MS and missing_visible == 0,
        ),
        Check(
            "every measured probe became visible",
            f"{len(visible_ms):,} of {len(measured):,}",
            missing_visible == 0,
        ),
    ]
    columns = ["Series", "probes", "mean", "p50", "p90", "p99", "max"]
    table = Table("Latency per probe", columns)
    for label, st in (("pipeline: produce -> visible (gRPC)", pipe), ("baseline: produce -> consumer", base)):
        cells = [fmt_ms(st[k]) for k in columns[2:]] if st["n"] else ["n/a"] * 5
        table.rows.append([label, f"{int(st['n']):,}", *cells])
    if pipe["n"] and base["n"]:
        table.rows.append(
            [
                "pipeline - baseline",
                "",
                *(fmt_ms(pipe[k] - base[k]) for k in ("mean", "p50", "p90", "p99", "max")),
            ]
        )
    run_table = Table(
        "Run",
        ["Measure", "Value"],
        [
            ["target rate / achieved", f"{args.rate:,.0f} / {achieved:,.0f} events/s"],
            ["measured phase", f"{span:.1f} s, {producer.sent:,} events, {len(measured):,} probes"],
            ["stream.poll_timeout_ms (job)", f"{args.poll_timeout_ms} (settings default {default_poll})"],
            ["stream.batch_size / workers", f"{settings.stream.batch_size} / {settings.stream.workers}"],
            ["probes not visible / not consumed", f"{missing_visible} / {missing_consumed}"],
            ["poller: polls, mean poll duration", f"{poller.polls:,}, {fmt_ms(poll_mean_ms)}"],
            ["job / server exit codes after SIGTERM", f"{job_code} / {server_code}"],
        ],
    )
    notes = [
        f"Every {args.probe_every}th event is a probe: a transaction of a new card id, event_time = wall "
        "clock at produce. Latency = time the poller's answer showing card_txn_count_5m = 1 arrived minus "
        "the time taken just before produce(); the poller asks for all outstanding probes in one request "
        f"every {POLL_INTERVAL_S * 1000:.0f} ms, so the figure includes up to one poll cycle of resolution.",
        "Baseline: a plain confluent_kafka Consumer thread in the benchmark process, assigned to every "
        f"partition at the log end, fetch.wait.max.ms = {args.poll_timeout_ms} (as the job's readers), "
        "poll() per message; latency = receive time minus the same produce time.",
        "The job (`highwater run`, tail mode) and the server (`highwater serve`) are subprocesses with this "
        "run's settings; the producer is the platform's EventProducer (idempotent, acks=all, linger.ms=5), "
        "paced by the benchmark. A first probe must become visible before traffic starts, then "
        f"{args.warmup:.0f} s of warm-up traffic are excluded.",
        "Broker, registry, Redis, job, server, producer, poller and consumer share 2 CPUs.",
    ]
    if missing_visible:
        notes.append(
            f"{missing_visible} probe(s) never became visible within {DRAIN_TIMEOUT_S:.0f} s of the end."
        )
    data = {
        "rate_target": args.rate,
        "rate_achieved": achieved,
        "duration_s": span,
        "events": producer.sent,
        "probes": len(measured),
        "probe_every": args.probe_every,
        "poll_timeout_ms": args.poll_timeout_ms,
        "poll_timeout_ms_default": default_poll,
        "pipeline_ms": pipe,
        "baseline_ms": base,
        "missing_visible": missing_visible,
        "missing_consumed": missing_consumed,
        "poller": {
            "polls": poller.polls,
            "mean_poll_ms": poll_mean_ms,
            "interval_ms": POLL_INTERVAL_S * 1000,
        },
        "stream_settings": settings.stream.model_dump(),
        "exit_codes": {"job": job_code, "server": server_code},
    }
    if job_code not in (0, -15):
        say(f"job exited with {job_code}; the end of its log:\n{job_log_tail}")
    title = "Freshness" + ("" if name == NAME else f" (poll_timeout_ms = {args.poll_timeout_ms})")
    write_results(
        name,
        title,
        tables=[table, run_table],
        checks=checks,
        notes=notes,
        data=data,
        plot=plot_name,
        module=NAME,
    )


if __name__ == "__main__":
    main()
