"""``highwater score``: score a transaction over gRPC and print the probability, features and reasons.

The transaction comes from options (``--card-id``, ``--merchant-id``, ``--amount`` are required; the id
defaults to a fresh ``cli-...`` one, ``event_time`` to now, the currency to EUR) or from ``--json FILE``
(``-`` reads stdin): one JSON object is scored with ``Score``, a JSON array with ``ScoreBatch``.
``event_time`` in JSON may be ISO-8601 text or epoch milliseconds. Null prints as a dimmed ``null``,
never as 0. A gRPC error prints ``error: <STATUS>: <message>`` and exits with code 2, without a traceback.

Example:
    $ highwater score --card-id card-00042 --merchant-id merchant-0007 --amount 912.50 --channel ecom
    transaction cli-3f9a…: fraud probability 0.8731 (model version 12)
    ┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━┓
    ┃ feature                     ┃  value ┃ latest event             ┃
    ...
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from highwater.settings import Settings, get_settings
from serving.cli import ERROR_EXIT_CODE, _cell, _null
from serving.scoring_client import Score, ScoringClient, ScoringServiceError
from serving.timeconv import format_ms, parse_as_of


def score_command(
    *,
    card_id: str | None,
    merchant_id: str | None,
    amount: float | None,
    transaction_id: str | None = None,
    customer_id: str = "cli",
    currency: str = "EUR",
    event_time: str | None = None,
    channel: str | None = None,
    mcc: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
    json_file: str | None = None,
    settings: Settings | None = None,
) -> None:
    """Build the transaction(s), score them at ``settings.effective_grpc_target`` and print the result.

    Raises ``typer.Exit(2)`` after printing the error when the input is unusable or the call fails.
    """
    settings = settings or get_settings()
    try:
        if json_file is not None:
            if card_id is not None or merchant_id is not None or amount is not None:
                raise ValueError("--json: give the transaction either as JSON or as options, not both")
            transactions, batch = _from_json(json_file)
        else:
            transactions = [
                _from_options(
                    card_id=card_id,
                    merchant_id=merchant_id,
                    amount=amount,
                    transaction_id=transaction_id,
                    customer_id=customer_id,
                    currency=currency,
                    event_time=event_time,
                    channel=channel,
                    mcc=mcc,
                    latitude=latitude,
                    longitude=longitude,
                )
            ]
            batch = False
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None
    try:
        with ScoringClient(settings.effective_grpc_target) as client:
            scores = client.score_batch(transactions) if batch else [client.score(transactions[0])]
    except ScoringServiceError as error:
        typer.echo(f"error: {error.code.name}: {error.details}", err=True)
        raise typer.Exit(ERROR_EXIT_CODE) from None
    console = Console()
    if batch:
        console.print(render_batch(scores))
        return
    score = scores[0]
    console.print(
        f"transaction {score.transaction_id}: fraud probability {score.fraud_probability:.4f} "
        f"(model version {score.model_version})",
        highlight=False,
    )
    console.print(render_features(score))
    console.print(render_reasons(score))


def _from_options(*, event_time: str | None, **fields: Any) -> dict[str, Any]:
    missing = [name for name in ("card_id", "merchant_id", "amount") if fields[name] is None]
    if missing:
        options = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ValueError(f"{options}: required (or give the transaction with --json)")
    record = dict(fields)
    record["transaction_id"] = record["transaction_id"] or f"cli-{uuid.uuid4().hex[:12]}"
    record["event_time"] = _event_time(event_time, "--event-time")
    return record


def _from_json(path: str) -> tuple[list[dict[str, Any]], bool]:
    """The transactions in a JSON file (``-``: stdin) and whether it held an array (a batch)."""
    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text()
        data = json.loads(raw)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--json: cannot read {path}: {error}") from None
    batch = isinstance(data, list)
    items = data if batch else [data]
    transactions = []
    for index, item in enumerate(items):
        where = f"[{index}]" if batch else ""
        if not isinstance(item, dict):
            raise ValueError(f"--json{where}: expected a JSON object with the transaction's fields")
        record = dict(item)
        record["event_time"] = _event_time(record.get("event_time"), f"--json{where}.event_time")
        transactions.append(record)
    return transactions, batch


def _event_time(value: Any, where: str) -> int:
    """Epoch ms of ISO-8601 text or ms; now when absent."""
    if value is None:
        return int(time.time() * 1000)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{where}: expected ISO-8601 text or epoch milliseconds, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return parse_as_of(value)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def render_features(score: Score) -> Table:
    """One row per feature: its value (``null`` dimmed) and the newest event that contributed."""
    table = Table(title="features as of the transaction's event time (itself included)", title_justify="left")
    table.add_column("feature")
    table.add_column("value", justify="right")
    table.add_column("latest event")
    for name, value in score.features.items():
        ms = score.latest_event_times_ms[name]
        table.add_row(name, _cell(value), format_ms(ms) if ms is not None else _null())
    return table


def render_reasons(score: Score) -> Table:
    """The top reasons: the model input, its source's value and its contribution (log-odds)."""
    table = Table(title="top reasons (log-odds towards fraud)", title_justify="left")
    table.add_column("input")
    table.add_column("value", justify="right")
    table.add_column("contribution", justify="right")
    for reason in score.reasons:
        value = Text(reason.value) if reason.value is not None else _null()
        table.add_row(reason.feature, value, f"{reason.contribution:+.4f}")
    return table


def render_batch(scores: list[Score]) -> Table:
    """One row per transaction: probability, model version and its top reason."""
    table = Table(title=f"{len(scores)} transaction(s) scored", title_justify="left")
    table.add_column("transaction")
    table.add_column("probability", justify="right")
    table.add_column("model")
    table.add_column("top reason")
    for score in scores:
        top = score.reasons[0] if score.reasons else None
        reason = f"{top.feature} ({top.contribution:+.3f})" if top is not None else ""
        table.add_row(score.transaction_id, f"{score.fraud_probability:.4f}", score.model_version, reason)
    return table
