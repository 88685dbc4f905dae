"""The batch classifier decides exactly what the record-by-record classifier decides.

Random batches of transactions and labels, disordered (some events beyond the allowed lateness), with
undecodable values, unknown schema ids and events failing each business rule (and ids that look odd but
are valid), are classified both ways, cut into batches at random places so the partition clock carries
from batch to batch. Every record must get the same fate, the same routed record (reason included), the
same event fields, and the clock and counters must agree.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from highwater.settings import Settings
from schemas.catalog import FRAUD_LABELS, TRANSACTIONS
from schemas.serde import AvroSerde
from streams.classify_batch import LATE, LATE_REASON, OFFSET, BatchClassifier, RawBatch
from streams.event_time import NEVER_LATE, Classifier, Fate, LatenessPolicy, PartitionClock, RawRecord

pytestmark = pytest.mark.stack

T0 = 1_772_000_000_000
POLICY = LatenessPolicy(max_out_of_orderness_ms=5_000, allowed_lateness_ms=60_000)


@pytest.fixture(scope="module")
def serde(stack: Settings) -> AvroSerde:
    return AvroSerde(stack.schema_registry_url)


def transaction(rng: random.Random, i: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "transaction_id": f"t{i}",
        "card_id": f"c{rng.randrange(50)}",
        "customer_id": f"u{rng.randrange(50)}",
        "merchant_id": f"m{rng.randrange(20)}",
        "amount": round(rng.uniform(0, 900), 2),
        "currency": "EUR",
        "event_time": T0 + i * 1_000 - rng.choice([0, 0, 0, 2_000, 70_000, 200_000]),
        "channel": rng.choice([None, "pos", "ecom"]),
        "mcc": rng.choice([None, "5411"]),
        "latitude": rng.choice([None, 48.1, -33.9]),
        "longitude": rng.choice([None, 11.5, 151.2]),
    }
    broken = rng.random()
    if broken < 0.03:
        record |= rng.choice(
            [
                {"amount": -1.0},
                {"amount": float("nan")},
                {"amount": float("inf")},
                {"currency": "eur"},
                {"currency": "EURO"},
                {"card_id": ""},
                {"merchant_id": "m\x07"},
                {"latitude": 91.0},
                {"longitude": float("nan")},
                {"event_time": -5},
            ]
        )
    elif broken < 0.05:  # unusual but valid: must not be refused
        record |= rng.choice(
            [{"merchant_id": "café ü"}, {"amount": 0.0}, {"latitude": -90.0}, {"amount": -0.0}]
        )
    return record


def label(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "transaction_id": f"t{i}",
        "card_id": f"c{rng.randrange(50)}",
        "is_fraud": rng.random() < 0.1,
        "label_time": T0 + rng.randrange(-(10**9), 10**9) if rng.random() > 0.02 else 0,
        "source": rng.choice(["chargeback", "review", ""]),
    }


def values_of(
    serde: AvroSerde, topic: str, records: list[dict[str, Any]], rng: random.Random
) -> list[bytes | None]:
    out: list[bytes | None] = []
    for record in records:
        value = serde.encode(topic, record)
        damage = rng.random()
        if damage < 0.01:
            value = value[:-3]
        elif damage < 0.015:
            value = b"\x00\x7f\x00\x00\x01" + value[5:]
        elif damage < 0.02:
            value = b"not avro"
        out.append(value)
    return out


@pytest.mark.parametrize(
    ("topic", "seed", "clock_start"),
    [
        (TRANSACTIONS, 1, None),
        (TRANSACTIONS, 2, T0 + 500_000),
        (TRANSACTIONS, 3, None),
        (FRAUD_LABELS, 4, None),
    ],
)
def test_batches_get_the_fates_records_get(
    serde: AvroSerde, topic: str, seed: int, clock_start: int | None
) -> None:
    rng = random.Random(seed)
    make = transaction if topic == TRANSACTIONS else label
    records = [make(rng, i) for i in range(1_500)]
    values = values_of(serde, topic, records, rng)
    offsets = list(range(100, 100 + len(values)))
    keys: list[bytes | None] = [f"k{i}".encode() for i in range(len(values))]
    policy = POLICY if topic == TRANSACTIONS else NEVER_LATE
    time_field = "event_time" if topic == TRANSACTIONS else "label_time"

    one = Classifier(serde, policy, time_field)
    clock_one = PartitionClock(clock_start)
    expected = [
        one.classify(clock_one, RawRecord(topic, 3, offsets[i], keys[i], values[i]))
        for i in range(len(values))
    ]

    batch = BatchClassifier(serde, policy, time_field)
    clock_batch = PartitionClock(clock_start)
    cuts = sorted({0, len(values), *rng.sample(range(1, len(values)), 6)})
    valid, routed, counters = [], [], {}
    for start, end in itertools.pairwise(cuts):
        out = batch.classify(
            clock_batch, RawBatch(topic, 3, offsets[start:end], keys[start:end], values[start:end])
        )
        assert out.next_offset == offsets[end - 1] + 1
        assert out.max_event_time_ms == expected[end - 1].max_event_time_ms
        valid += out.events.to_dicts()
        routed += out.routed
        for name, n in out.counters.items():
            counters[name] = counters.get(name, 0) + n

    assert routed == [c for c in expected if c.fate is not Fate.APPLIED]
    wanted = [c for c in expected if c.fate is not Fate.MALFORMED]
    assert [{k: v for k, v in row.items() if k not in (OFFSET, LATE, LATE_REASON)} for row in valid] == [
        c.event for c in wanted
    ]
    assert [(row[OFFSET], row[LATE], row[LATE_REASON]) for row in valid] == [
        (c.raw.offset, c.fate is Fate.LATE, c.reason) for c in wanted
    ]
    fates: dict[str, int] = {}
    for c in expected:
        name = f"malformed:{c.error_type}" if c.fate is Fate.MALFORMED else c.fate.value
        fates[name] = fates.get(name, 0) + 1
    assert counters == fates
    assert clock_batch == clock_one
    # The data must exercise every path.
    assert {
        "applied",
        "malformed:undecodable",
        "malformed:unknown_schema_id",
        "malformed:validation_failed",
    } <= set(fates)
    if topic == TRANSACTIONS:
        assert fates.get("late", 0) > 10
