"""``highwater replay`` and ``highwater generations``: the command-line side of :mod:`replay`.

Errors a user can fix (unknown generation, bad ``--from``, replaying into the live generation) print one
line and exit with status 2.

Example:
    $ highwater replay --from earliest --targets online,history --generation r1
    $ highwater generations list
    $ highwater generations promote r1
    $ highwater generations drop g1
"""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.table import Table

from highwater.settings import get_settings
from replay.generations import drop, list_generations, promote
from replay.replay import ReplayError, parse_targets, replay
from sinks.offline import UnknownGenerationError

_console = Console()


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def replay_command(generation: str, start: str, end: str | None, targets: str) -> None:
    """Replay the log into ``generation`` and print what was done."""
    settings = get_settings()
    try:
        report = replay(settings, generation, start=start, end=end, targets=parse_targets(targets))
    except (ReplayError, UnknownGenerationError) as exc:
        raise _fail(str(exc)) from None
    verb = "resumed" if report.resumed else "replayed"
    typer.echo(
        f"{verb} {report.processed:,} records into generation {report.generation} in {report.seconds:.1f} s "
        f"({report.rate:,.0f} records/s)"
    )
    typer.echo(f"next: highwater verify <live> {generation}; highwater generations promote {generation}")


def generations_list_command() -> None:
    """Print every generation with its clock, applied count, history rows, replay status and the
    features it does not hold (defined after it was created: a replay backfills them)."""
    table = Table("generation", "live", "clock (UTC)", "applied", "history rows", "replay", "not held")
    for info in list_generations(get_settings()):
        clock = (
            datetime.fromtimestamp(info.clock_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            if info.clock_ms is not None
            else "-"
        )
        replayed = info.replay.get("status", "-")
        if info.replay:
            replayed += f" (from {info.replay.get('from')}, targets {info.replay.get('targets')})"
        table.add_row(
            info.name,
            "yes" if info.live else "",
            clock,
            f"{info.applied:,}",
            "-" if info.history_rows is None else f"{info.history_rows:,}",
            replayed,
            ", ".join(info.unheld) or "-",
        )
    _console.print(table)


def generations_promote_command(generation: str) -> None:
    """Make ``generation`` live."""
    try:
        previous = promote(get_settings(), generation)
    except (ValueError, UnknownGenerationError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"generation {generation} is live (was {previous}); the server reads it from the next request on"
    )


def generations_drop_command(generation: str) -> None:
    """Delete ``generation``'s online keys and offline tables."""
    try:
        deleted = drop(get_settings(), generation)
    except (ValueError, UnknownGenerationError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"dropped generation {generation} ({deleted:,} Redis keys and its ClickHouse tables)")
