"""An independent computation of what the online features must be, from the log alone.

Shares nothing with the pipeline but the feature *definitions* (names, windows): it reads the topic with
a plain consumer, decodes with confluent-kafka's ``AvroDeserializer`` (not our serde), recomputes
lateness per partition in pandas from log order, deduplicates by transaction id, and aggregates each
window with pandas. Tests compare what gRPC serves against it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from highwater.settings import Settings
from highwater.topics import partitions_of
from streams.features import Aggregation, Feature


def read_topic(settings: Settings, topic: str, timeout_s: float = 30.0) -> pd.DataFrame:
    """Every record of ``topic``: partition, offset, key, value (bytes), in log order per partition.

    The end of each partition is the high watermark of fetch responses (Tansu's ListOffsets is wrong).
    """
    consumer = Consumer(settings.kafka_config(**{"group.id": "oracle", "enable.auto.commit": False}))
    rows: list[dict[str, Any]] = []
    try:
        partitions = partitions_of(settings, topic)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        next_offset = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + timeout_s
        while True:
            highs = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
                for p in partitions
            }
            if all(h >= 0 and next_offset[p] >= h for p, h in highs.items()):
                break
            assert time.monotonic() < deadline, f"{topic}: stopped at {next_offset}, ends {highs}"
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            rows.append(
                {"partition": msg.partition(), "offset": msg.offset(), "key": msg.key(), "value": msg.value()}
            )
            next_offset[msg.partition()] = msg.offset() + 1
    finally:
        consumer.close()
    frame = pd.DataFrame(rows, columns=["partition", "offset", "key", "value"])
    return frame.sort_values(["partition", "offset"], ignore_index=True)


@dataclass
class Expected:
    """The oracle's view of the log: applied events, late records and malformed records."""

    applied: pd.DataFrame
    late: pd.DataFrame
    malformed: pd.DataFrame
    duplicates: int


def classify_log(settings: Settings, log: pd.DataFrame, topic: str = "transactions") -> Expected:
    """Decode independently and apply the documented lateness rule per partition in log order."""
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": settings.schema_registry_url}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    decoded: list[dict[str, Any] | None] = []
    for value in log["value"]:
        try:
            event = deserializer(value, ctx)
        except Exception:
            event = None
        if event is not None and (not math.isfinite(event["amount"]) or event["amount"] < 0):
            event = None
        decoded.append(event)
    ok = pd.Series([e is not None for e in decoded], index=log.index)
    malformed = log[~ok]
    events = pd.DataFrame([e for e in decoded if e is not None], index=log.index[ok])
    events["event_time"] = events["event_time"].map(_millis)
    events["partition"] = log.loc[ok, "partition"]
    events["offset"] = log.loc[ok, "offset"]
    events = events.sort_values(["partition", "offset"])
    d = settings.stream.max_out_of_orderness_ms
    lateness = settings.stream.allowed_lateness_ms
    # High-water mark before each event; late events never raise it (they are below it by definition).
    prior_max = events.groupby("partition")["event_time"].transform(lambda s: s.cummax().shift(1))
    is_late = prior_max.notna() & (events["event_time"] < prior_max - d - lateness)
    on_time = events[~is_late]
    applied = on_time.drop_duplicates("transaction_id", keep="first")
    return Expected(applied, events[is_late], malformed, duplicates=len(on_time) - len(applied))


def _millis(value: Any) -> int:
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return int(value)


def expected_features(
    applied: pd.DataFrame, key_field: str, features: list[Feature], as_of_ms: int
) -> pd.DataFrame:
    """Per entity id (index), each feature's value as of ``as_of_ms``; NaN/None where null."""
    ids = pd.Index(sorted(applied[key_field].unique()), name=key_field)
    out = pd.DataFrame(index=ids)
    for feature in features:
        window = applied[
            (applied["event_time"] > as_of_ms - feature.window_ms) & (applied["event_time"] <= as_of_ms)
        ]
        groups = window.groupby(key_field)
        agg = feature.aggregation
        if agg is Aggregation.COUNT:
            col = groups.size().reindex(ids, fill_value=0)
        elif agg is Aggregation.DISTINCT_COUNT:
            col = groups[feature.field].nunique().reindex(ids, fill_value=0)
        elif agg is Aggregation.SUM:
            col = groups[feature.field].sum().reindex(ids, fill_value=0.0)
        elif agg is Aggregation.MAX:
            col = groups[feature.field].max().reindex(ids)
        elif agg is Aggregation.AVG:
            col = groups[feature.field].mean().reindex(ids)
        elif agg is Aggregation.SECONDS_SINCE_LAST:
            col = ((as_of_ms - groups["event_time"].max()) / 1000).reindex(ids)
        else:
            raise AssertionError(f"oracle lacks aggregation {agg}")
        out[feature.name] = col
    return out


def assert_matches(served: dict[str, dict[str, Any]], expected: pd.DataFrame, context: str) -> int:
    """Compare every served value with the oracle: counts exactly, floats to 1e-9 relative, nulls as nulls."""
    mismatches: list[str] = []
    compared = 0
    for entity_id, row in expected.iterrows():
        got_row = served[str(entity_id)]
        for name, want in row.items():
            got = got_row[str(name)]
            compared += 1
            want_null = want is None or (isinstance(want, float) and np.isnan(want))
            if want_null or got is None:
                if not (want_null and got is None):
                    mismatches.append(f"{entity_id}.{name}: served {got!r}, expected {want!r}")
            elif isinstance(got, int) and not isinstance(want, float):
                if got != int(want):
                    mismatches.append(f"{entity_id}.{name}: served {got}, expected {int(want)}")
            elif not math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-9):
                mismatches.append(f"{entity_id}.{name}: served {got!r}, expected {float(want)!r}")
    assert not mismatches, f"{context}: {len(mismatches)} of {compared} differ, e.g. {mismatches[:10]}"
    return compared


def exact_features(
    events: pd.DataFrame, key_field: str, key: str, features: list[Feature], as_of_ms: int
) -> dict[str, Any]:
    """One id's features as of ``as_of_ms``, bit for bit as the online store computes them.

    ``events``: the applied events (``event_time`` in ms, ``transaction_id``, the fields). Sums fold left
    to right from 0 in (event_time, transaction_id) order, as docs/features.md says the store does, so
    they are compared exactly; counts are ints; max, avg and seconds-since-last are None over no events.
    """
    mine = events[events[key_field] == key].sort_values(["event_time", "transaction_id"])
    times = [int(t) for t in mine["event_time"]]
    out: dict[str, Any] = {}
    for feature in features:
        inside = [i for i, t in enumerate(times) if as_of_ms - feature.window_ms < t <= as_of_ms]
        column = [mine[feature.field].iloc[i] for i in inside] if feature.field else []
        agg = feature.aggregation
        if agg is Aggregation.COUNT:
            out[feature.name] = len(inside)
        elif agg is Aggregation.DISTINCT_COUNT:
            out[feature.name] = len(set(column))
        elif agg is Aggregation.SECONDS_SINCE_LAST:
            out[feature.name] = (as_of_ms - times[inside[-1]]) / 1000 if inside else None
        elif agg in (Aggregation.SUM, Aggregation.AVG, Aggregation.MAX):
            total = 0.0
            for value in column:
                total += float(value)
            if agg is Aggregation.SUM:
                out[feature.name] = total
            elif not inside:
                out[feature.name] = None
            else:
                out[feature.name] = total / len(inside) if agg is Aggregation.AVG else max(map(float, column))
        else:
            raise AssertionError(f"oracle lacks aggregation {agg}")
    return out
