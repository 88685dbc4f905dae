"""``highwater features get``: read online features over gRPC and print them as a table.

One id prints one row per feature (value and the time of the newest contributing event); a few ids print
one row per feature and one column per id, so they compare side by side; many ids print one row per id
and one column per feature. Null prints as a dimmed ``null``, never as an empty cell or 0. A gRPC error
prints ``error: <STATUS>: <message>`` and exits with code 2, without a traceback.

Example:
    $ highwater features get card card-00001 -f card_txn_count_1h -f card_amount_max_24h
    card as of 2026-03-01T12:00:00.000Z (event-time clock 2026-03-01T12:00:00.000Z)
    ┏━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━┓
    ┃ feature             ┃  value ┃ latest event             ┃
    ...
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from highwater.settings import Settings, get_settings
from serving.client import FeatureClient, FeatureScalar, FeatureServiceError, OnlineFeatures
from serving.timeconv import format_ms, parse_as_of

MAX_ID_COLUMNS = 4
"""Up to this many ids are shown as columns (features as rows); more ids are shown as rows."""

ERROR_EXIT_CODE = 2


def features_get_command(
    entity: str,
    entity_ids: list[str],
    features: list[str],
    as_of: str | None,
    settings: Settings | None = None,
) -> None:
    """Fetch ``features`` (all when empty) of ``entity_ids`` as of ``as_of`` (ISO-8601 or ms) and print them.

    Dials ``settings.effective_grpc_target``. Raises ``typer.Exit(2)`` after printing the error when the
    as-of text cannot be parsed or the call fails.
    """
    settings = settings or get_settings()
    as_of_ms: int | None = None
    if as_of is not None:
        try:
            as_of_ms = parse_as_of(as_of)
        except ValueError as error:
            typer.echo(f"error: as_of: {error}", err=True)
            raise typer.Exit(ERROR_EXIT_CODE) from None
    try:
        with FeatureClient(settings.effective_grpc_target) as client:
            answer = client.get_online_features(entity, entity_ids, features, as_of=as_of_ms)
    except FeatureServiceError as error:
        typer.echo(f"error: {error.code.name}: {error.details}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None
    console = Console()
    console.print(_caption(answer), highlight=False)
    console.print(render_table(answer))


def render_table(answer: OnlineFeatures) -> Table:
    """The answer as a rich table, oriented by how many ids it holds (see the module docstring)."""
    if len(answer.rows) == 1:
        row = answer.rows[0]
        table = Table(title=f"{answer.entity} {row.entity_id}", title_justify="left")
        table.add_column("feature")
        table.add_column("value", justify="right")
        table.add_column("latest event")
        for name in answer.feature_names:
            ms = row.latest_event_times_ms[name]
            table.add_row(name, _cell(row.values[name]), format_ms(ms) if ms is not None else _null())
        return table
    if len(answer.rows) <= MAX_ID_COLUMNS:
        table = Table()
        table.add_column("feature")
        for row in answer.rows:
            table.add_column(row.entity_id, justify="right")
        for name in answer.feature_names:
            table.add_row(name, *(_cell(row.values[name]) for row in answer.rows))
        return table
    table = Table()
    table.add_column(answer.entity)
    for name in answer.feature_names:
        table.add_column(name, justify="right")
    for row in answer.rows:
        table.add_row(row.entity_id, *(_cell(row.values[name]) for name in answer.feature_names))
    return table


def _caption(answer: OnlineFeatures) -> str:
    clock = format_ms(answer.event_time_clock_ms) if answer.event_time_clock_ms is not None else "none yet"
    return f"{answer.entity} as of {format_ms(answer.as_of_ms)} (event-time clock {clock})"


def _null() -> Text:
    return Text("null", style="dim italic")


def _cell(value: FeatureScalar) -> Text:
    if value is None:
        return _null()
    if isinstance(value, int):
        return Text(str(value))
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return Text("0" if text in ("", "-0") else text)
