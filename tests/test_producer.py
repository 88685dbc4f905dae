"""The producer against the real broker and registry, and the file reader on the sample files.

Stack tests write to fresh topics of their own (``EventProducer(topic_names=...)``) so the shared
``transactions`` and ``fraud-labels`` topics stay untouched, and read them back with ``assign()``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from typer.testing import CliRunner

from highwater.cli import app
from highwater.settings import Settings
from highwater.topics import TopicSpec, admin_client, ensure_topics, partitions_of
from schemas.catalog import FRAUD_LABELS, TRANSACTIONS
from schemas.serde import AvroSerde
from schemas.validate import validate_event
from streams.file_input import Rejection, Row, read_events_file
from streams.producer import DeliveryError, EventProducer
from streams.synthetic import SyntheticStream

DATA = Path(__file__).parent / "data"

JSONL_REJECTIONS = [
    (4, "amount: must be >= 0, got -5.0"),
    (5, "invalid JSON: Expecting ',' delimiter (column 123)"),
    (6, "currency: must be a 3-letter ISO 4217 code, got 'euro'"),
    (7, "note: unknown field (not in the transactions schema)"),
    (8, "card_id: required field is missing"),
    (9, "expected a JSON object, got list"),
]
CSV_REJECTIONS = [
    (4, "amount: expected a number, got 'abc'"),
    (5, "card_id: required field is missing"),
    (6, "latitude: must be within [-90, 90], got 95.0"),
    (7, "amount: must be >= 0, got -5.0"),
    (9, "row has 6 cells, the header has 11"),
    (11, "amount: expected a number, got '1,5'"),
    (12, "event_time: expected epoch milliseconds or an ISO-8601 time, got 'yesterday'"),
]


def txn(transaction_id: str, card: str, merchant: str, amount: float, currency: str, event_time: int,
        channel: str | None = None, mcc: str | None = None,
        latitude: float | None = None, longitude: float | None = None) -> dict[str, Any]:  # fmt: skip
    """A complete transaction record (customer ids in the sample files follow the card ids)."""
    return {
        "transaction_id": transaction_id,
        "card_id": card,
        "customer_id": card.replace("card", "cust"),
        "merchant_id": merchant,
        "amount": amount,
        "currency": currency,
        "event_time": event_time,
        "channel": channel,
        "mcc": mcc,
        "latitude": latitude,
        "longitude": longitude,
    }


JSONL_GOOD = [
    txn("file-j-1", "card-f1", "merchant-f1", 12.5, "EUR", 1772445600000, "pos", "5411", 52.52, 13.405),
    txn("file-j-2", "card-f2", "merchant-f2", 40.0, "EUR", 1772445660000),
    txn("file-j-10", "card-f3", "merchant-f4", 75.25, "GBP", 1772445900000, "ecom", "5964"),
]
CSV_GOOD = [
    txn("file-c-2", "card-f1", "merchant-f1", 12.5, "EUR", 1772445600000, "pos", "5411", 52.52, 13.405),
    txn("file-c-3", "card-f2", "merchant-f2", 40.0, "EUR", 1772445660000),
    txn("file-c-8", "card-f3", "merchant-f4", 75.25, "GBP", 1772445900000, "ecom", "5964"),
    txn("file-c-13", "card-f2", "merchant-f5", 0.0, "EUR", 1772446100000, "atm", "6011", 48.85, 2.35),
]


# --- reading files (no stack) ---------------------------------------------------------------------------
def _split(path: Path, topic: str) -> tuple[list[Row], list[Rejection]]:
    rows = list(read_events_file(path, topic))
    return [r for r in rows if isinstance(r, Row)], [r for r in rows if isinstance(r, Rejection)]


def test_jsonl_rows_and_rejections_by_line() -> None:
    good, bad = _split(DATA / "transactions.jsonl", TRANSACTIONS)
    assert [row.record for row in good] == JSONL_GOOD
    assert [row.line for row in good] == [1, 2, 10]
    assert [(r.line, r.reason) for r in bad[:-1]] == JSONL_REJECTIONS
    # A wrong JSON type is reported by the schema check, naming the field.
    assert bad[-1].line == 11 and bad[-1].reason.startswith("amount: ")


@pytest.mark.parametrize("bad_id", ["card\x1f7", "card\n7", "card\u20287"])
def test_ids_with_control_or_separator_characters_are_refused(bad_id: str) -> None:
    record = txn("t-1", bad_id, "merchant-1", 1.0, "EUR", 1772445600000)
    record["customer_id"] = "customer-1"
    assert validate_event(TRANSACTIONS, record) == [
        f"card_id: must not contain control or separator characters, got {bad_id!r}"
    ]


def test_csv_rows_converted_to_schema_types_and_rejections_by_line() -> None:
    good, bad = _split(DATA / "transactions.csv", TRANSACTIONS)
    assert [row.record for row in good] == CSV_GOOD
    assert [(r.line, r.reason) for r in bad] == CSV_REJECTIONS
    assert str(bad[3]) == "line 7: amount: must be >= 0, got -5.0"


def test_csv_labels_booleans_and_rules() -> None:
    good, bad = _split(DATA / "fraud_labels.csv", FRAUD_LABELS)
    assert [(row.record["transaction_id"], row.record["is_fraud"]) for row in good] == [
        ("file-c-2", True),
        ("file-c-3", False),
    ]
    assert [(r.line, r.reason) for r in bad] == [
        (4, "is_fraud: expected true/false/1/0, got 'yes'"),
        (5, "label_time: must be a positive epoch-millis timestamp, got -1"),
        (6, "source: required field is missing"),
    ]


def test_csv_unknown_column_rejects_every_row() -> None:
    good, bad = _split(DATA / "transactions_unknown_column.csv", TRANSACTIONS)
    assert good == []
    assert [(r.line, r.reason) for r in bad] == [
        (2, "note: unknown column (not in the transactions schema)"),
        (3, "note: unknown column (not in the transactions schema)"),
    ]


def test_unsupported_file_type_and_topic_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported file type"):
        list(read_events_file(tmp_path / "events.parquet", TRANSACTIONS))
    with pytest.raises(ValueError, match="no schema"):
        list(read_events_file(DATA / "transactions.csv", "payments"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--file", str(DATA / "missing.csv")], "no such file"),
        (["--file", str(DATA / "transactions.csv"), "--topic", "payments"], "topic 'payments' has no schema"),
        (["--file", __file__], "unsupported file type '.py'"),
    ],
)
def test_produce_cli_refuses_bad_file_arguments_before_connecting(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["produce", *args])
    assert result.exit_code == 2
    assert message in result.output


# --- producing (stack) ----------------------------------------------------------------------------------
@pytest.fixture
def topics(stack: Settings) -> Iterator[dict[str, str]]:
    """Fresh transactions and fraud-labels topics for one test; deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        TRANSACTIONS: f"test-producer-{suffix}-transactions",
        FRAUD_LABELS: f"test-producer-{suffix}-labels",
    }
    ensure_topics(stack, [TopicSpec(name, "producer test", partitions=3) for name in names.values()])
    yield names
    admin = admin_client(stack)
    for future in admin.delete_topics(list(names.values()), operation_timeout=30).values():
        future.result()


def read_topic(settings: Settings, topic: str) -> list[tuple[int, bytes | None, bytes]]:
    """Every message of ``topic`` as ``(partition, key, value)``, in log order per partition.

    The end of each partition is the high watermark of the consumer's own fetch responses
    (``cached=True``): Tansu answers ListOffsets with the last record batch's base offset + 1, which
    is short of the end when the last batch holds several records.
    """
    config = {"group.id": f"test-readback-{uuid.uuid4().hex}", "enable.auto.commit": False}
    consumer = Consumer(settings.kafka_config(**config))
    try:
        parts = [TopicPartition(topic, p) for p in partitions_of(settings, topic)]
        consumer.assign([TopicPartition(topic, tp.partition, OFFSET_BEGINNING) for tp in parts])
        out: list[tuple[int, bytes | None, bytes]] = []
        idle_polls = 0
        while not all(_caught_up(consumer, tp) for tp in parts):
            msg = consumer.poll(0.2)
            if msg is None:
                idle_polls += 1
                assert idle_polls < 100, f"{topic} was not read to its end"
                continue
            assert msg.error() is None, msg.error()
            partition, value = msg.partition(), msg.value()
            assert partition is not None and value is not None
            out.append((partition, msg.key(), value))
        return out
    finally:
        consumer.close()


def _caught_up(consumer: Consumer, tp: TopicPartition) -> bool:
    low, high = consumer.get_watermark_offsets(tp, cached=True)
    if high < 0:
        return False  # no fetch response for this partition yet
    position = consumer.position([tp])[0].offset
    return (position if position >= 0 else low) >= high


def decoded(settings: Settings, topic: str, physical: str) -> list[tuple[int, bytes | None, dict[str, Any]]]:
    serde = AvroSerde(settings.schema_registry_url)
    return [(p, key, serde.decode(topic, value)) for p, key, value in read_topic(settings, physical)]


@pytest.mark.stack
def test_synthetic_stream_round_trips_in_order(stack: Settings, topics: dict[str, str]) -> None:
    stream = SyntheticStream(seed=5, count=400, late_share=0.05, legit_label_share=0.05)
    with EventProducer(stack, topic_names=topics) as producer:
        report = producer.produce_many(stream)
    assert report.ok and report.written == len(stream)

    for topic, physical in topics.items():
        messages = decoded(stack, topic, physical)
        sent = [record for t, record in stream if t == topic]
        assert sorted(m[2]["transaction_id"] for m in messages) == sorted(r["transaction_id"] for r in sent)
        assert all(key == record["card_id"].encode() for _, key, record in messages)
        per_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        partition_of_card: dict[str, int] = {}
        for partition, _, record in messages:
            per_partition[partition].append(record)
            assert partition_of_card.setdefault(record["card_id"], partition) == partition
        # Each partition holds its cards' records exactly, in delivery order.
        for partition, records in per_partition.items():
            assert records == [r for r in sent if partition_of_card[r["card_id"]] == partition]


@pytest.mark.stack
@pytest.mark.parametrize(
    ("name", "good", "bad_lines", "reasons"),
    [
        ("transactions.jsonl", JSONL_GOOD, [4, 5, 6, 7, 8, 9, 11], JSONL_REJECTIONS),
        ("transactions.csv", CSV_GOOD, [4, 5, 6, 7, 9, 11, 12], CSV_REJECTIONS),
    ],
)
def test_produce_file_writes_good_rows_and_reports_bad_ones(
    stack: Settings,
    topics: dict[str, str],
    name: str,
    good: list[dict[str, Any]],
    bad_lines: list[int],
    reasons: list[tuple[int, str]],
) -> None:
    with EventProducer(stack, topic_names=topics) as producer:
        report = producer.produce_file(DATA / name, TRANSACTIONS)
    assert report.written == len(good) and report.delivery_failures == 0
    rejected = {r.line: r.reason for r in report.rejected}
    assert sorted(rejected) == bad_lines
    assert [(line, rejected[line]) for line, _ in reasons] == reasons
    on_topic = [record for _, _, record in decoded(stack, TRANSACTIONS, topics[TRANSACTIONS])]
    assert sorted(on_topic, key=lambda r: r["transaction_id"]) == sorted(
        good, key=lambda r: r["transaction_id"]
    )


@pytest.mark.stack
def test_invalid_record_raises_naming_the_field_and_is_not_written(
    stack: Settings, topics: dict[str, str]
) -> None:
    bad = txn("api-1", "card-a1", "merchant-a1", -5.0, "EUR", 1772445600000)
    with EventProducer(stack, topic_names=topics) as producer:
        with pytest.raises(ValueError, match=r"amount: must be >= 0, got -5\.0"):
            producer.produce(TRANSACTIONS, bad)
        with pytest.raises(ValueError, match="currency: required field is missing"):
            producer.produce(
                TRANSACTIONS, {k: v for k, v in bad.items() if k != "currency"} | {"amount": 1.0}
            )
        good = bad | {"transaction_id": "api-2", "amount": 5.0}
        producer.produce(TRANSACTIONS, good)
        report = producer.produce_many([(TRANSACTIONS, bad), (FRAUD_LABELS, {"transaction_id": "api-2"})])
    assert report.written == 1  # the good record sent just before the batch
    assert [(r.line, r.reason) for r in report.rejected] == [
        (1, "amount: must be >= 0, got -5.0"),
        (2, "card_id: required field is missing; is_fraud: required field is missing; "
            "label_time: required field is missing; source: required field is missing"),
    ]  # fmt: skip
    assert [record for _, _, record in decoded(stack, TRANSACTIONS, topics[TRANSACTIONS])] == [good]
    assert read_topic(stack, topics[FRAUD_LABELS]) == []


@pytest.mark.stack
def test_delivery_failures_are_reported_not_ignored(stack: Settings) -> None:
    """With no broker at the address, every message times out: the report and flush say so."""
    unreachable = stack.model_copy(update={"broker_bootstrap": "127.0.0.1:9"})
    stream = SyntheticStream(seed=2, count=20, fraud_share=0.0, legit_label_share=0.0)
    producer = EventProducer(unreachable, config={"message.timeout.ms": 500})
    report = producer.produce_many(stream, timeout=30)
    assert report.written == 0 and report.delivery_failures == 20 and not report.ok
    assert report.delivery_errors and "timed out" in report.delivery_errors[0]
    producer.produce(TRANSACTIONS, stream.transactions()[0])
    with pytest.raises(DeliveryError, match="1 message"):
        producer.flush(30)
