"""``highwater verify A B``: compare two generations and print a summary and the first differences.

Exit code 0 when the generations are identical in everything compared, 1 when any difference was found,
2 when the comparison could not run (an unknown or invalid generation, an unreachable store): then one
line ``error: ...`` on stderr and no traceback.

Example:
    $ highwater verify g1 g2 --limit 5
    verify g1 vs g2: 1 difference (4.1 s)
      online: 20,000 entity ids (2 entities), 61,512 events, 540,000 feature values at 3 as_of times ...
    ┏━━━━━━━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━┓
    ┃ kind           ┃ where    ┃ g1             ┃ g2             ┃
    ┡━━━━━━━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━┩
    │ online.counter │ applied  │ 61512          │ 61513          │
    └────────────────┴──────────┴────────────────┴────────────────┘
"""

from __future__ import annotations

import logging
import sys

import redis
import typer
from clickhouse_connect.driver.exceptions import ClickHouseError
from rich.console import Console
from rich.table import Table

from highwater.settings import Settings, get_settings
from replay.verify import Difference, VerifyReport, format_value, verify

DIFFERENT_EXIT_CODE = 1
ERROR_EXIT_CODE = 2


def verify_command(a: str, b: str, limit: int = 20, settings: Settings | None = None) -> None:
    """Verify generation ``b`` against ``a``, print the report, exit 0 (same), 1 (different) or 2 (error)."""
    settings = settings or get_settings()
    # The driver warns about connection arguments an in-process chDB ignores: noise on a command line.
    logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)
    try:
        report = verify(settings, a, b, progress=sys.stdout.isatty(), max_examples=max(limit, 0))
    except ValueError as error:  # unknown or invalid generation
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None
    except (redis.RedisError, ClickHouseError, OSError) as error:
        typer.echo(f"error: cannot verify {a} vs {b}: {type(error).__name__}: {error}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None
    console = Console()
    print_report(console, report, limit)
    raise typer.Exit(0 if report.ok else DIFFERENT_EXIT_CODE)


def print_report(console: Console, report: VerifyReport, limit: int) -> None:
    """The summary lines, the notes, the totals per kind and the first ``limit`` differences."""
    found = report.difference_count
    verdict = "[green]identical[/green]" if report.ok else f"[red]{found:,} difference(s)[/red]"
    console.print(f"verify {report.a} vs {report.b}: {verdict} ({report.seconds:.1f} s)")
    console.print(
        f"  online: {report.entity_ids:,} entity ids ({report.entities} entities), {report.events:,} events, "
        f"{report.feature_values:,} feature values at {len(report.as_of_ms)} as_of time(s), "
        f"{report.seen:,} seen ids, {report.checkpoints} checkpoints, {report.counters} counters",
        highlight=False,
    )
    if report.history_compared:
        rows = ", ".join(f"{kind} {n_a:,}/{n_b:,}" for kind, (n_a, n_b) in report.history_rows.items())
        console.print(f"  history rows ({report.a}/{report.b}): {rows}", highlight=False)
    for note in report.notes:
        console.print(f"  note: {note}", highlight=False)
    if report.ok:
        return
    console.print(
        "  by kind: " + ", ".join(f"{kind} {n:,}" for kind, n in sorted(report.totals.items())),
        highlight=False,
    )
    shown = first_differences(report, limit)
    if not shown:
        return
    title = f"{len(shown)} of {found:,} differences (the first of each kind)" if found > len(shown) else ""
    table = Table(title=title or None, title_justify="left")
    table.add_column("kind", no_wrap=True)
    table.add_column("where", overflow="fold")
    table.add_column(report.a, overflow="fold")
    table.add_column(report.b, overflow="fold")
    for difference in shown:
        table.add_row(
            difference.kind,
            difference.where,
            format_value(difference.a_value),
            format_value(difference.b_value),
        )
    console.print(table)


def first_differences(report: VerifyReport, limit: int) -> list[Difference]:
    """Up to ``limit`` kept differences, taken from each kind in turn (so one kind cannot hide another),
    grouped by kind in the order the kinds were found."""
    by_kind: dict[str, list[Difference]] = {}
    for difference in report.differences:
        by_kind.setdefault(difference.kind, []).append(difference)
    taken = dict.fromkeys(by_kind, 0)
    left = max(limit, 0)
    while left and any(taken[kind] < len(found) for kind, found in by_kind.items()):
        for kind, found in by_kind.items():
            if left and taken[kind] < len(found):
                taken[kind] += 1
                left -= 1
    return [d for kind, found in by_kind.items() for d in found[: taken[kind]]]
