"""One progress bar for long work: count, rate and ETA.

Example:
    >>> with progress_bar("produce", total=1_000) as advance:   # doctest: +SKIP
    ...     for _ in range(1_000):
    ...         advance(1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def progress_bar(label: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A bar that shows done/total, items per second and time remaining; yields ``advance(n)``."""
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>10,.0f}/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not enabled) as bar:
        task = bar.add_task(label, total=total, rate=0.0)
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            elapsed = bar.tasks[task].elapsed or 0.0
            bar.update(task, advance=n, rate=done / elapsed if elapsed > 0 else 0.0)

        yield advance
