"""``highwater training-set`` and ``highwater feature-log``: training sets and the feature log from the CLI.

Registered in ``highwater/cli.py``. Heavy imports happen inside the commands, so ``highwater --help``
stays fast. Bad input (a missing spine column, an unknown feature or generation, timestamps outside the
history, an unreadable file, an unreachable store) prints ``error: <message>`` and exits with code 2,
without a traceback; nothing is written then.

Example:
    $ highwater training-set --spine spine.parquet --features card_txn_count_1h,card_amount_sum_24h \\
        --labels --label-cutoff 2026-04-01T00:00:00Z --out train.parquet
    wrote 20,000 rows x 5 columns to train.parquet in 1.2 s (generation g1)
    $ highwater feature-log skew --limit 10
    $ highwater feature-log export --out feature_log.parquet
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import pyarrow as pa

ERROR_EXIT_CODE = 2

feature_log_app = typer.Typer(
    no_args_is_help=True, help="The feature log: what the online store served, rebuilt from history."
)

_Generation = Annotated[
    str | None, typer.Option(help="Offline generation; default the live one (what the server reads).")
]
_Features = Annotated[
    str | None, typer.Option(help="Comma-separated feature names; default all.", show_default=False)
]


@contextmanager
def _errors_exit() -> Iterator[None]:
    """Known failures become one line on stderr and exit code 2."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from sinks.offline import UnknownGenerationError
    from sinks.training_set import TrainingSetError

    try:
        yield
    except (TrainingSetError, UnknownGenerationError, ClickHouseError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None


def _feature_list(features: str | None) -> list[str] | None:
    if features is None:
        return None
    return [name.strip() for name in features.split(",") if name.strip()]


def training_set(
    spine: Annotated[Path, typer.Option(help="Spine file (.parquet or .csv): keys and timestamps.")],
    out: Annotated[Path, typer.Option(help="Where to write the training set (Parquet).")],
    features: _Features = None,
    timestamp_column: Annotated[str, typer.Option(help="Spine column holding the as-of time.")] = "timestamp",
    labels: Annotated[bool, typer.Option(help="Add is_fraud (needs --label-cutoff).")] = False,
    label_cutoff: Annotated[
        str | None, typer.Option(help="Labels with label_time at or before it count (ISO-8601 or ms).")
    ] = None,
    generation: _Generation = None,
) -> None:
    """Build a training set: each feature of each spine row as of its timestamp, from offline history."""
    from highwater.settings import get_settings
    from serving.timeconv import parse_as_of
    from sinks.training_set import (
        TrainingSetError,
        build_training_set,
        default_generation,
        write_parquet_atomic,
    )

    started = time.perf_counter()
    with _errors_exit():
        cutoff: int | None = None
        if label_cutoff is not None:
            try:
                cutoff = parse_as_of(label_cutoff)
            except ValueError as error:
                raise TrainingSetError(f"label cutoff: {error}") from None
        settings = get_settings()
        generation = generation or default_generation(settings)
        table = build_training_set(
            settings,
            spine,
            _feature_list(features),
            timestamp_column=timestamp_column,
            generation=generation,
            labels=labels,
            label_cutoff=cutoff,
        )
        write_parquet_atomic(table, out)
    elapsed = time.perf_counter() - started
    typer.echo(
        f"wrote {table.num_rows:,} rows x {table.num_columns} columns to {out} in {elapsed:.2f} s "
        f"(generation {generation})"
    )


@feature_log_app.command("export")
def feature_log_export(
    out: Annotated[Path, typer.Option(help="Where to write the feature log (Parquet).")],
    features: _Features = None,
    generation: _Generation = None,
) -> None:
    """Write the feature log: each applied transaction's features as the online store served them."""
    from sinks.feature_log import feature_log
    from sinks.training_set import write_parquet_atomic

    started = time.perf_counter()
    with _errors_exit():
        generation, table = _with_store(
            generation, lambda store, g: feature_log(store, g, _feature_list(features))
        )
        write_parquet_atomic(table, out)
    elapsed = time.perf_counter() - started
    typer.echo(
        f"wrote {table.num_rows:,} rows x {table.num_columns} columns to {out} in {elapsed:.2f} s "
        f"(generation {generation})"
    )


@feature_log_app.command("skew")
def feature_log_skew(
    features: _Features = None,
    generation: _Generation = None,
    limit: Annotated[int, typer.Option(min=0, help="Most differences to print.")] = 50,
) -> None:
    """Print where served features differ from complete data, and the late events that explain it.

    A report: exits 0 whether or not there are differences.
    """
    from rich.console import Console

    from sinks.feature_log import feature_skew

    started = time.perf_counter()
    with _errors_exit():
        generation, skew = _with_store(
            generation,
            lambda store, g: feature_skew(store, g, _feature_list(features), explain_limit=limit),
        )
    elapsed = time.perf_counter() - started
    console = Console()
    transactions = len(set(skew["transaction_id"].to_pylist()))
    console.print(
        f"generation {generation}: {skew.num_rows:,} served value(s) differ from complete data "
        f"in {transactions:,} transaction(s) ({elapsed:.2f} s)",
        highlight=False,
    )
    if skew.num_rows:
        console.print(render_skew(skew, limit))
        if skew.num_rows > limit:
            console.print(f"... {skew.num_rows - limit:,} more (--limit)", highlight=False)


def _with_store(generation: str | None, action: Callable[[Any, str], pa.Table]) -> tuple[str, pa.Table]:
    from highwater.settings import get_settings
    from sinks.training_set import default_generation, open_store

    settings = get_settings()
    generation = generation or default_generation(settings)
    with open_store(settings) as store:
        return generation, action(store, generation)


def render_skew(skew: pa.Table, limit: int) -> Any:
    """The first ``limit`` skew rows as a rich table: where, which feature, both values, and why."""
    from rich.table import Table

    from serving.timeconv import datetime_to_ms, format_ms

    table = Table()
    for name, justify in [
        ("transaction", "left"),
        ("event time", "left"),
        ("entity", "left"),
        ("feature", "left"),
        ("served", "right"),
        ("complete", "right"),
        ("unserved events in the window", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in skew.slice(0, limit).to_pylist():
        reasons = [f"{i} (late)" for i in row["late_ids"]]
        reasons += [f"{i} (applied later)" for i in row["applied_after_ids"]]
        table.add_row(
            row["transaction_id"],
            format_ms(datetime_to_ms(row["event_time"])),
            f"{row['entity']} {row['entity_id']}",
            row["feature"],
            _cell(row["served"]),
            _cell(row["complete"]),
            f"{row['unserved_count']}: " + ", ".join(reasons),
        )
    return table


def _cell(value: float | None) -> Any:
    from rich.text import Text

    if value is None:
        return Text("null", style="dim")
    return f"{value:.12g}"
