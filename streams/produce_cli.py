"""``highwater produce``: write the seeded synthetic stream, or validate and write a user's file.

Both modes first make the log ready (topics created, schemas registered) and end with every message
acknowledged by the broker, or a non-zero exit status saying what was lost.

Example:
    $ highwater produce --count 10000 --seed 7 --late-share 0.002
    $ highwater produce --file payments.csv --topic transactions     # exit 1 if any row is rejected
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from highwater.bootstrap import bootstrap_log
from highwater.settings import Settings, get_settings
from schemas.catalog import CATALOG
from streams.file_input import FILE_TYPES
from streams.producer import EventProducer, ProduceReport
from streams.synthetic import SyntheticStream

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def produce_command(
    count: int,
    seed: int,
    rate: float,
    disorder_ms: int,
    late_share: float,
    file: Path | None,
    topic: str,
) -> None:
    """Run ``highwater produce``; raises ``typer.Exit`` with a non-zero code when something went wrong.

    Exit codes: 1 when a row was rejected or a message was not acknowledged (good rows are still
    written), 2 for a bad ``--file``/``--topic``, 3 when the broker or registry cannot be reached.

    Example:
        >>> produce_command(count=1_000, seed=7, rate=0.0, disorder_ms=3_000, late_share=0.002,
        ...     file=None, topic="transactions")                                  # doctest: +SKIP
        transactions  1,000 (fraud 20 = 2.00%, late 2 = 0.20%)
        ...
    """
    if file is not None:
        _check_file_args(file, topic)
    settings = get_settings()
    try:
        bootstrap_log(settings)
    except Exception as exc:  # the registry client raises httpx/httpx2 transport errors, Kafka its own
        typer.echo(f"error: the log is not ready ({_where(settings)}): {type(exc).__name__}: {exc}", err=True)
        typer.echo("is the local stack running? start it with `highwater up`", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from exc
    producer = EventProducer(settings, rate=rate)
    if file is not None:
        report: ProduceReport = _produce_file(producer, file, topic)
    else:
        report = _produce_synthetic(producer, count, seed, disorder_ms, late_share)
    if report.delivery_failures:
        typer.echo(f"error: {report.delivery_failures:,} message(s) were not acknowledged", err=True)
        for reason in report.delivery_errors:
            typer.echo(f"  {reason}", err=True)
    if not report.ok:
        raise typer.Exit(EXIT_REJECTED)


def _check_file_args(file: Path, topic: str) -> None:
    """Refuse an unreadable file, an unsupported file type or a topic without a schema, before connecting."""
    problem = None
    if topic not in CATALOG.topics():
        problem = f"topic {topic!r} has no schema; use one of {', '.join(CATALOG.topics())}"
    elif file.suffix.lower() not in FILE_TYPES:
        problem = f"{file}: unsupported file type {file.suffix or '(none)'!r}; use .jsonl or .csv"
    elif not file.is_file():
        problem = f"{file}: no such file"
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(EXIT_USAGE)


def _produce_file(producer: EventProducer, file: Path, topic: str) -> ProduceReport:
    try:
        report = producer.produce_file(file, topic, progress=True)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    for rejection in report.rejected:
        typer.echo(str(rejection))
    typer.echo(f"{file}: {report.written:,} written to {topic}, {len(report.rejected):,} rejected")
    return report


def _produce_synthetic(
    producer: EventProducer, count: int, seed: int, disorder_ms: int, late_share: float
) -> ProduceReport:
    stream = SyntheticStream(seed=seed, count=count, disorder_ms=disorder_ms, late_share=late_share)
    summary = stream.summary()
    report = producer.produce_many(stream, progress=True)
    first = _iso(summary.first_event_ms)
    last = _iso(summary.last_event_ms)
    scenarios = ", ".join(f"{name} {n:,}" for name, n in sorted(summary.by_scenario.items())) or "none"
    fraud = f"fraud {summary.fraud:,} = {summary.fraud_share:.2%}"
    late = f"late {summary.late:,} = {summary.late_share:.2%}"
    typer.echo(f"transactions  {summary.transactions:,} ({fraud}, {late})")
    typer.echo(f"fraud         {scenarios}")
    typer.echo(f"labels        {summary.labels:,}")
    typer.echo(f"event time    {first} .. {last}")
    typer.echo(f"written       {report.written:,} of {len(stream):,} records (seed {seed})")
    return report


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _where(settings: Settings) -> str:
    return f"broker {settings.broker_bootstrap}, registry {settings.schema_registry_url}"
