"""Schema evolution on a real registry: old and new producers share a topic under BACKWARD compatibility.

A producer still on the old Transaction schema and one on a new schema with an added optional field
(``device_id``, default null) write to the same fresh topic, registered under that topic's own subject.
One consumer decodes both: resolved to the platform's current reader schema, and resolved to the new
schema (old records get the default). A new required field without a default is refused by the registry.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import uuid
from collections.abc import Iterator
from typing import Any, cast

import fastavro
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from highwater.settings import Settings
from highwater.topics import TopicSpec, admin_client, ensure_topics
from schemas.catalog import CATALOG, TRANSACTIONS, SchemaCatalog, TopicSchema
from schemas.codec import parse_for_decoding
from schemas.serde import AvroSerde

pytestmark = pytest.mark.stack

OLD_RECORD: dict[str, Any] = {
    "transaction_id": "evo-1",
    "card_id": "card-e1",
    "customer_id": "cust-e1",
    "merchant_id": "merchant-e1",
    "amount": 19.9,
    "currency": "EUR",
    "event_time": 1772445600000,
    "channel": "ecom",
    "mcc": "5964",
    "latitude": None,
    "longitude": None,
}
NEW_RECORD = OLD_RECORD | {"transaction_id": "evo-2", "amount": 7.5, "device_id": "device-42"}


def transaction_schema_with(field: dict[str, Any]) -> str:
    """The Transaction schema text with one more field."""
    schema = copy.deepcopy(CATALOG.schema(TRANSACTIONS))
    schema["fields"].append(field)
    return json.dumps(schema)


NEW_SCHEMA = transaction_schema_with({"name": "device_id", "type": ["null", "string"], "default": None})
INCOMPATIBLE_SCHEMA = transaction_schema_with({"name": "risk_score", "type": "double"})


@pytest.fixture
def topic(stack: Settings) -> Iterator[str]:
    """A fresh one-partition topic (and so a fresh subject) for one test; deleted afterwards."""
    name = f"test-evolution-{uuid.uuid4().hex[:10]}"
    ensure_topics(stack, [TopicSpec(name, "schema evolution test", partitions=1)])
    yield name
    admin = admin_client(stack)
    for future in admin.delete_topics([name], operation_timeout=30).values():
        future.result()


def read_values(settings: Settings, topic: str, count: int) -> list[bytes]:
    """The first ``count`` values of partition 0 of ``topic``."""
    consumer = Consumer(settings.kafka_config(**{"group.id": f"test-evolution-{uuid.uuid4().hex}"}))
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        values: list[bytes] = []
        idle_polls = 0
        while len(values) < count:
            msg = consumer.poll(0.2)
            if msg is None:
                idle_polls += 1
                assert idle_polls < 100, f"only {len(values)} of {count} values on {topic}"
                continue
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value is not None
            values.append(value)
        return values
    finally:
        consumer.close()


def decode_with_reader(serde: AvroSerde, value: bytes, reader_schema: str) -> dict[str, Any]:
    """Decode like ``AvroSerde.decode`` but into ``reader_schema`` rather than a catalog topic's schema.

    ``AvroSerde.decode`` takes its reader schema from the platform catalog by topic name, which has no
    entry for a consumer already upgraded to the new schema; the writer schema still comes from the
    registry by the id in the Confluent header.
    """
    magic, schema_id = struct.unpack_from(">bI", value)
    assert magic == 0
    body = io.BytesIO(value[5:])
    record = fastavro.schemaless_reader(
        body, serde.writer_schema(schema_id), parse_for_decoding(reader_schema)
    )
    return cast(dict[str, Any], record)


def test_old_and_new_producers_share_a_topic(stack: Settings, topic: str) -> None:
    catalog = SchemaCatalog([TopicSchema(topic, "transaction.avsc")])
    old_producer = AvroSerde(stack.schema_registry_url, catalog)
    new_producer = AvroSerde(stack.schema_registry_url, catalog)

    producer = Producer(stack.kafka_config(**{"enable.idempotence": True, "acks": "all"}))
    producer.produce(topic, key=b"card-e1", value=old_producer.encode(topic, OLD_RECORD))
    producer.produce(
        topic, key=b"card-e1", value=new_producer.encode(topic, NEW_RECORD, schema_text=NEW_SCHEMA)
    )
    assert producer.flush(30) == 0

    subject = catalog.subject(topic)
    registry = old_producer.registry
    assert registry.get_compatibility(subject) == "BACKWARD"
    assert registry.get_versions(subject) == [1, 2]
    old_id, new_id = (registry.get_version(subject, v).schema_id for v in (1, 2))
    assert old_id != new_id

    consumer_serde = AvroSerde(stack.schema_registry_url)
    old_value, new_value = read_values(stack, topic, 2)
    assert struct.unpack_from(">bI", old_value)[1] == old_id
    assert struct.unpack_from(">bI", new_value)[1] == new_id

    # A consumer on the platform's current schema reads both; the field it does not know is dropped.
    assert consumer_serde.decode(TRANSACTIONS, old_value) == OLD_RECORD
    assert consumer_serde.decode(TRANSACTIONS, new_value) == {
        k: v for k, v in NEW_RECORD.items() if k != "device_id"
    }
    # A consumer upgraded to the new schema reads both; old records get the field's default.
    assert decode_with_reader(consumer_serde, old_value, NEW_SCHEMA) == OLD_RECORD | {"device_id": None}
    assert decode_with_reader(consumer_serde, new_value, NEW_SCHEMA) == NEW_RECORD


def test_new_required_field_without_default_is_refused(stack: Settings, topic: str) -> None:
    serde = AvroSerde(stack.schema_registry_url, SchemaCatalog([TopicSchema(topic, "transaction.avsc")]))
    serde.register(topic)
    serde.register(topic, schema_text=NEW_SCHEMA)
    with pytest.raises(SchemaRegistryError) as refused:
        serde.register(topic, schema_text=INCOMPATIBLE_SCHEMA)
    assert refused.value.http_status_code == 409
    subject = SchemaCatalog.subject(topic)
    assert serde.registry.get_versions(subject) == [1, 2]
    assert serde.registry.test_compatibility(subject, Schema(INCOMPATIBLE_SCHEMA, "AVRO")) is False
