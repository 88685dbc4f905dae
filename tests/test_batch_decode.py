"""BatchDecoder against AvroSerde.decode, record by record, on the real registry.

The block read is only allowed to be faster: for every batch, good or corrupt, the decoded rows, their
values (bit for bit) and each failed record's error type and message must equal decoding one by one.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest

from bench.common import synthetic_transactions
from highwater.settings import Settings
from schemas.batch_decode import ROW, BatchDecoder, encoded_sizes, polars_schema
from schemas.catalog import CATALOG, FRAUD_LABELS, TRANSACTIONS
from schemas.serde import AvroSerde, SerdeError
from tests.test_schema_evolution import NEW_SCHEMA

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def serde(stack: Settings) -> AvroSerde:
    return AvroSerde(stack.schema_registry_url)


@pytest.fixture(scope="module")
def transactions() -> list[dict[str, Any]]:
    records = synthetic_transactions(11, 3000)
    # Values that stress the sizes: long ids, non-ASCII text, large and negative longs, extreme floats.
    records[5] |= {"transaction_id": "t-" + "x" * 300, "merchant_id": "café-ü-€", "amount": 5e-324}
    records[6] |= {"event_time": 2**62, "amount": 1.7976931348623157e308, "latitude": -0.0}
    records[7] |= {"event_time": -(2**62), "channel": None, "mcc": None, "longitude": None}
    return records


def one_by_one(serde: AvroSerde, topic: str, values: list[bytes | None]) -> tuple[list[Any], dict[int, Any]]:
    rows, errors = [], {}
    for i, value in enumerate(values):
        try:
            rows.append({**serde.decode(topic, value), ROW: i})
        except SerdeError as exc:
            errors[i] = (type(exc), str(exc))
    return rows, errors


def assert_same_as_serde(serde: AvroSerde, topic: str, values: list[bytes | None]) -> pl.DataFrame:
    batch = BatchDecoder(serde).decode(topic, values)
    rows, errors = one_by_one(serde, topic, values)
    assert {i: (type(e), str(e)) for i, e in batch.errors.items()} == errors
    assert batch.frame.to_dicts() == rows
    assert batch.frame.schema == pl.Schema({**dict(polars_schema(topic)), ROW: pl.UInt32()})
    return batch.frame


def test_a_clean_batch_decodes_exactly(serde: AvroSerde, transactions: list[dict[str, Any]]) -> None:
    values: list[bytes | None] = [serde.encode(TRANSACTIONS, r) for r in transactions]
    frame = assert_same_as_serde(serde, TRANSACTIONS, values)
    assert frame.height == len(transactions)
    assert BatchDecoder(serde).decode(TRANSACTIONS, values).one_by_one == 0  # all read as one block


def test_labels_decode_exactly(serde: AvroSerde) -> None:
    labels = [
        {
            "transaction_id": f"t{i}",
            "card_id": f"c{i % 7}",
            "is_fraud": i % 3 == 0,
            "label_time": 10**12 + i,
            "source": "chargeback",
        }
        for i in range(500)
    ]
    assert_same_as_serde(serde, FRAUD_LABELS, [serde.encode(FRAUD_LABELS, r) for r in labels])


@pytest.mark.parametrize("seed", range(6))
def test_corrupt_records_get_the_same_errors_and_spare_their_neighbours(
    serde: AvroSerde, transactions: list[dict[str, Any]], seed: int
) -> None:
    rng = random.Random(seed)
    values: list[bytes | None] = [serde.encode(TRANSACTIONS, r) for r in transactions[:400]]
    for _ in range(12):
        i = rng.randrange(len(values))
        value = values[i] or b""
        damage = rng.choice(["truncate", "trail", "magic", "none", "short", "unknown_id", "flip", "utf8"])
        if damage == "truncate":
            values[i] = value[: rng.randrange(5, len(value))]
        elif damage == "trail":
            values[i] = value + bytes(rng.randrange(1, 4))
        elif damage == "magic":
            values[i] = b"\x07" + value[1:]
        elif damage == "none":
            values[i] = None
        elif damage == "short":
            values[i] = value[:3]
        elif damage == "unknown_id":
            values[i] = b"\x00\x7f\xff\xff\xf0" + value[5:]
        elif damage == "flip":
            body = bytearray(value)
            body[rng.randrange(5, len(body))] ^= 1 << rng.randrange(8)
            values[i] = bytes(body)
        else:  # a byte that is not UTF-8 inside the first string
            body = bytearray(value)
            body[6] = 0xFF
            values[i] = bytes(body)
    assert_same_as_serde(serde, TRANSACTIONS, values)


def test_trailing_bytes_on_the_last_value_are_its_error(
    serde: AvroSerde, transactions: list[dict[str, Any]]
) -> None:
    # The block read stops after the last record and ignores what follows it, so only the lengths check
    # tells this record from a clean one.
    values: list[bytes | None] = [serde.encode(TRANSACTIONS, r) for r in transactions[:50]]
    values[-1] = (values[-1] or b"") + b"\x00\x00"
    assert_same_as_serde(serde, TRANSACTIONS, values)
    assert set(BatchDecoder(serde).decode(TRANSACTIONS, values).errors) == {49}


@pytest.mark.parametrize("new_first", [True, False])
def test_old_and_new_writer_schemas_in_one_batch(
    serde: AvroSerde, transactions: list[dict[str, Any]], new_first: bool
) -> None:
    values: list[bytes | None] = []
    for i, record in enumerate(transactions[:300]):
        if (i % 3 == 0) == new_first:
            values.append(serde.encode(TRANSACTIONS, record | {"device_id": f"d{i}"}, schema_text=NEW_SCHEMA))
        else:
            values.append(serde.encode(TRANSACTIONS, record))
    frame = assert_same_as_serde(serde, TRANSACTIONS, values)
    new_records = 100 if new_first else 200
    assert BatchDecoder(serde).decode(TRANSACTIONS, values).one_by_one == new_records
    assert "device_id" not in frame.columns  # resolved to the reader schema, as one by one


def test_an_empty_batch(serde: AvroSerde) -> None:
    batch = BatchDecoder(serde).decode(TRANSACTIONS, [])
    assert batch.frame.height == 0 and batch.errors == {}


def test_sizes_match_the_encoder(serde: AvroSerde, transactions: list[dict[str, Any]]) -> None:
    values = [serde.encode(TRANSACTIONS, r) for r in transactions]
    frame = pl.from_dicts(transactions, schema=polars_schema(TRANSACTIONS))
    from schemas.batch_decode import _fields
    from schemas.codec import decoding_schema_json

    fields = _fields(decoding_schema_json(CATALOG.entry(TRANSACTIONS).text))
    assert fields is not None
    assert encoded_sizes(frame, fields).tolist() == [len(v) - 5 for v in values]
