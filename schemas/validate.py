"""Checks an event must pass before it is written to the log or applied by the stream.

Two layers: the Avro schema (types, required fields) and the business rules the schema cannot say
(non-negative finite amounts, three-letter currencies, coordinates on the globe, non-empty printable
ids).
Every error names the field it is about.

Example:
    >>> from schemas.validate import validate_event
    >>> validate_event("transactions", {"transaction_id": "t1", "card_id": "c", "customer_id": "u",
    ...     "merchant_id": "m", "amount": -1.0, "currency": "EUR", "event_time": 1})
    ['amount: must be >= 0, got -1.0']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import polars as pl
from fastavro.validation import ValidationError, validate

from schemas.catalog import CATALOG, FRAUD_LABELS, TRANSACTIONS
from schemas.codec import decode_schema

Rule = Callable[[dict[str, Any]], list[str]]


def _identifiers(*fields: str) -> Rule:
    """Ids must be non-empty and printable: they become store keys and field separators are controls."""

    def check(record: dict[str, Any]) -> list[str]:
        errors = []
        for f in fields:
            value = record.get(f)
            if value == "":
                errors.append(f"{f}: must not be empty")
            elif type(value) is str and not value.isprintable():
                errors.append(f"{f}: must not contain control or separator characters, got {value!r}")
        return errors

    return check


def _transaction_rules(record: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    amount = record.get("amount")
    if type(amount) is float or type(amount) is int:
        if not math.isfinite(amount):
            errors.append(f"amount: must be finite, got {amount!r}")
        elif amount < 0:
            errors.append(f"amount: must be >= 0, got {amount!r}")
    currency = record.get("currency")
    if type(currency) is str and not (
        len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()
    ):
        errors.append(f"currency: must be a 3-letter ISO 4217 code, got {currency!r}")
    event_time = record.get("event_time")
    if type(event_time) is int and event_time <= 0:
        errors.append(f"event_time: must be a positive epoch-millis timestamp, got {event_time}")
    lat, lon = record.get("latitude"), record.get("longitude")
    if lat is not None and type(lat) in (float, int) and not -90 <= lat <= 90:
        errors.append(f"latitude: must be within [-90, 90], got {lat}")
    if lon is not None and type(lon) in (float, int) and not -180 <= lon <= 180:
        errors.append(f"longitude: must be within [-180, 180], got {lon}")
    return errors


def _label_rules(record: dict[str, Any]) -> list[str]:
    label_time = record.get("label_time")
    if isinstance(label_time, int) and label_time <= 0:
        return [f"label_time: must be a positive epoch-millis timestamp, got {label_time}"]
    return []


_RULES: dict[str, list[Rule]] = {
    TRANSACTIONS: [
        _identifiers("transaction_id", "card_id", "customer_id", "merchant_id"),
        _transaction_rules,
    ],
    FRAUD_LABELS: [_identifiers("transaction_id", "card_id", "source"), _label_rules],
}


def validate_event(topic: str, record: dict[str, Any]) -> list[str]:
    """All reasons ``record`` may not be written to ``topic``; empty when it is valid."""
    schema = decode_schema(topic)
    if validate(record, schema, raise_errors=False):  # fast path: building error objects is slow
        return business_rule_errors(topic, record)
    try:
        validate(record, schema, raise_errors=True)
    except ValidationError as exc:
        return [_schema_error(str(err)) for err in exc.errors] or [str(exc)]
    return business_rule_errors(topic, record)


def business_rule_errors(topic: str, record: dict[str, Any]) -> list[str]:
    """The rules the schema cannot express; enough on its own for records just decoded from Avro."""
    errors: list[str] = []
    for rule in _RULES.get(topic, []):
        errors.extend(rule(record))
    return errors


def _plain_ids(*fields: str) -> list[pl.Expr]:
    # Non-empty printable ASCII passes _identifiers; anything else is left to it.
    return [pl.col(f).str.contains(r"^[ -~]+$") for f in fields]


def _within(field: str, low: float, high: float) -> pl.Expr:
    value = pl.col(field)
    return value.is_null() | (value.is_not_nan() & (value >= low) & (value <= high))


# Per topic, conditions under which a decoded row surely passes every business rule of ``_RULES``.
_SURELY_VALID: dict[str, list[pl.Expr]] = {
    TRANSACTIONS: [
        *_plain_ids("transaction_id", "card_id", "customer_id", "merchant_id"),
        pl.col("amount").is_finite() & (pl.col("amount") >= 0),
        pl.col("currency").str.contains(r"^[A-Z]{3}$"),
        pl.col("event_time") > 0,
        _within("latitude", -90, 90),
        _within("longitude", -180, 180),
    ],
    FRAUD_LABELS: [*_plain_ids("transaction_id", "card_id", "source"), pl.col("label_time") > 0],
}


def rows_to_check(topic: str, frame: pl.DataFrame) -> list[int]:
    """Positions of the rows of ``frame`` (decoded events of ``topic``) that :func:`business_rule_errors`
    must look at one by one; a vectorized check proves the rules pass for every other row.

    Example:
        >>> frame = pl.DataFrame({"transaction_id": ["t1", "t2"], "card_id": ["c", "c"], "source": ["s", ""],
        ...                       "label_time": [5, 6]})
        >>> rows_to_check("fraud-labels", frame)
        [1]
    """
    if not _RULES.get(topic) or frame.height == 0:
        return []
    checks = _SURELY_VALID.get(topic)
    if checks is None:
        return list(range(frame.height))
    surely = frame.select(pl.all_horizontal(checks).fill_null(False)).to_series()
    return (~surely).arg_true().to_list()


def _schema_error(message: str) -> str:
    # fastavro says "highwater.events.Transaction.amount is <x> of type <t> expected double"
    field_path, sep, rest = message.partition(" is ")
    if not sep:
        return message
    return f"{field_path.rsplit('.', 1)[-1]}: {rest}"


def known_topic(topic: str) -> bool:
    """Whether the platform has a schema for ``topic``."""
    return topic in CATALOG.topics()
