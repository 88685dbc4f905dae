"""``highwater models``: list model versions, promote one, roll back (registered in ``highwater/cli.py``).

The store is the one the settings name (``model.store``: Redis or a directory). Errors a user can fix
(an unknown version, nothing to roll back to, an unreachable store) print ``error: <message>`` and exit
with status 2, without a traceback.

Example:
    $ highwater models list --lineage main
    $ highwater models promote 7
    model version 7 (lineage main) is live (was 5); servers switch at their next look (every 2 s)
    $ highwater models rollback
    rolled back: model version 5 (lineage main) is live (was 7)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import redis
import typer
from rich.console import Console
from rich.table import Table

from highwater.settings import get_settings
from sinks.model_store import ModelStore, ModelStoreError, ModelVersion, Offsets, model_store_from_settings

ERROR_EXIT_CODE = 2


@contextmanager
def _store() -> Iterator[ModelStore]:
    """The settings' model store; known failures become one line on stderr and exit code 2."""
    store: ModelStore | None = None
    try:
        store = model_store_from_settings(get_settings())
        yield store
    except ModelStoreError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None
    except (redis.RedisError, OSError) as error:
        typer.echo(f"error: cannot reach the model store: {error}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None
    finally:
        if store is not None:
            store.close()


def offsets_summary(offsets: Offsets) -> str:
    """Records consumed per topic: the next offsets of its partitions, summed (offsets count from 0).

    Example:
        >>> offsets_summary({"transactions": {0: 100, 1: 20}, "fraud-labels": {0: 3}})
        'fraud-labels 3, transactions 120'
    """
    return ", ".join(f"{topic} {sum(parts.values()):,}" for topic, parts in sorted(offsets.items())) or "-"


def _number(value: float) -> str:
    if math.isfinite(value) and value.is_integer():
        return f"{int(value):,}"
    return f"{value:.4f}"


def metrics_summary(metrics: dict[str, float]) -> str:
    """The metrics by name: whole numbers (counts) with separators, others with 4 decimals.

    Example:
        >>> metrics_summary({"auc": 0.97123, "labels_learned": 4000.0})
        'auc 0.9712, labels_learned 4,000'
    """
    return ", ".join(f"{name} {_number(value)}" for name, value in sorted(metrics.items())) or "-"


def size_text(size: int) -> str:
    """A byte count for people.

    Example:
        >>> size_text(512), size_text(2_500_000)
        ('512 B', '2.4 MiB')
    """
    amount = float(size)
    for unit in ("B", "KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def _created(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def versions_table(versions: list[ModelVersion], live: str | None) -> Table:
    """The table ``highwater models list`` prints: one row per version, oldest first."""
    table = Table("version", "live", "lineage", "created (UTC)", "consumed", "metrics", "size")
    for v in versions:
        table.add_row(
            v.version,
            "yes" if v.version == live else "",
            v.lineage,
            _created(v.created_at_ms),
            offsets_summary(v.offsets),
            metrics_summary(v.metrics),
            size_text(v.size_bytes),
        )
    return table


def _describe(version: ModelVersion) -> str:
    return f"model version {version.version} (lineage {version.lineage})"


def models_list_command(lineage: str | None) -> None:
    """Print every model version (of ``lineage`` if given) and which one is live."""
    with _store() as store:
        versions = store.versions(lineage)
        live = store.live()
    if not versions:
        typer.echo("no model versions" + (f" in lineage {lineage}" if lineage else ""))
        return
    # A console per call: it sizes itself from the terminal (or COLUMNS) of this run.
    Console().print(versions_table(versions, live.version if live else None))


def models_promote_command(version: str) -> None:
    """Make ``version`` live."""
    with _store() as store:
        before = store.live()
        promoted = store.promote(version)
    was = before.version if before else "none"
    refresh = get_settings().model.refresh_s
    typer.echo(
        f"{_describe(promoted)} is live (was {was}); servers switch at their next look (every {refresh:g} s)"
    )


def models_rollback_command() -> None:
    """Make the previously live version live again."""
    with _store() as store:
        before = store.live()
        current = store.rollback()
    was = before.version if before else "none"
    typer.echo(f"rolled back: {_describe(current)} is live (was {was})")
