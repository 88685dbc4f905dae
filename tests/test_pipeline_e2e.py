"""End to end on the real local stack: Avro events on the log -> Bytewax job -> Redis -> gRPC.

Served values are compared with an independent computation (``tests/oracle.py``: its own decoder,
its own lateness rule in pandas, its own windows) for every feature of every entity at several as-of
times. The module has a stack of its own because it reads whole topics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import redis
from confluent_kafka import Producer

from highwater.bootstrap import bootstrapped_stack
from highwater.settings import Settings
from highwater.stack.env import isolated_settings, settings_env
from schemas.catalog import DEAD_LETTER, FRAUD_LABELS, LATE_EVENTS, TRANSACTIONS
from schemas.serde import AvroSerde
from serving.client import FeatureClient
from serving.server import build_server
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.redis_online import RedisOnlineStore
from streams.features import REGISTRY
from streams.job import run_job
from streams.producer import EventProducer
from streams.synthetic import SyntheticStream
from tests.oracle import Expected, assert_matches, classify_log, expected_features, read_topic

pytestmark = [pytest.mark.stack, pytest.mark.slow]

COUNT = 12_000
MINUTE = 60_000


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack of its own with a disordered stream, very late events and malformed records on the log."""
    settings = isolated_settings(tmp_path_factory.mktemp("pipeline"))
    settings.stream.batch_size = 500
    with bootstrapped_stack(settings):
        _produce(settings)
        yield settings


def _produce(settings: Settings) -> None:
    stream = SyntheticStream(seed=11, count=COUNT, disorder_ms=4_000, late_share=0.01)
    deliveries = list(stream.deliveries())
    transactions = [(d.topic, d.record) for d in deliveries if d.topic == TRANSACTIONS]
    labels = [(d.topic, d.record) for d in deliveries if d.topic == FRAUD_LABELS]
    report = EventProducer(settings).produce_many(transactions + labels)
    assert report.written == COUNT + len(labels) and not report.rejected
    # What a bad producer or a broken network can put on the log, written around validation:
    serde = AvroSerde(settings.schema_registry_url)
    raw = Producer(settings.kafka_config())
    first = transactions[0][1]
    raw.produce(TRANSACTIONS, key=b"bad", value=b"not avro at all")
    raw.produce(TRANSACTIONS, key=b"bad", value=b"\x00\x00\x01\x86\xa0garbage")  # schema id 100000
    raw.produce(TRANSACTIONS, key=b"bad", value=serde.encode(TRANSACTIONS, first | {"amount": -5.0}))
    # Re-delivered events (same id, same bytes): old ones arrive late, recent ones on time.
    for _, record in transactions[100:105] + transactions[-5:]:
        raw.produce(TRANSACTIONS, key=record["card_id"].encode(), value=serde.encode(TRANSACTIONS, record))
    assert raw.flush(30) == 0


def _label_count(settings: Settings) -> int:
    return len(read_topic(settings, FRAUD_LABELS))


def _history(settings: Settings, table: str) -> list[dict[str, Any]]:
    store = ClickHouseOfflineStore.from_settings(settings)
    try:
        return store.query_arrow(
            f"SELECT * FROM {{{table}}} FINAL ORDER BY partition, offset", settings.online.generation
        ).to_pylist()
    finally:
        store.close()


@pytest.fixture(scope="module")
def expected(pipeline: Settings) -> Expected:
    return classify_log(pipeline, read_topic(pipeline, TRANSACTIONS))


@pytest.fixture(scope="module")
def applied(pipeline: Settings) -> RedisOnlineStore:
    processed = run_job(until_end=True, settings=pipeline, show_progress=False)
    assert processed == COUNT + 3 + 10 + _label_count(pipeline)
    return RedisOnlineStore.from_settings(pipeline)


@pytest.fixture(scope="module")
def client(pipeline: Settings, applied: RedisOnlineStore) -> Iterator[FeatureClient]:
    server_settings = pipeline.model_copy(update={"grpc_port": 0})
    server = build_server(server_settings, applied)
    server.start()
    try:
        with FeatureClient(server.target) as feature_client:
            yield feature_client
    finally:
        server.stop(None)


def _served(client: FeatureClient, entity: str, ids: list[str], as_of_ms: int) -> dict[str, dict[str, Any]]:
    served: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 1000):
        response = client.get_online_features(entity, ids[start : start + 1000], as_of=as_of_ms)
        assert response.as_of_ms == as_of_ms
        served.update(response.to_dict())
    return served


def test_the_log_holds_what_the_test_needs(expected: Expected) -> None:
    assert len(expected.late) >= 50, "the stream must carry events beyond lateness"
    assert expected.duplicates > 0, "some re-delivered events must arrive on time"
    assert len(expected.malformed) == 3
    assert expected.applied["transaction_id"].is_unique


@pytest.mark.parametrize("entity", ["card", "merchant"])
@pytest.mark.parametrize(
    "offset_ms", [0, -17 * MINUTE, -6 * 60 * MINUTE, -(24 * 60 - 1) * MINUTE, 45 * MINUTE]
)
def test_served_features_equal_an_independent_computation(
    client: FeatureClient, applied: RedisOnlineStore, expected: Expected, entity: str, offset_ms: int
) -> None:
    clock = applied.clock_ms()
    assert clock == int(expected.applied["event_time"].max())
    as_of = clock + offset_ms
    key_field = REGISTRY.entity(entity).key_field
    want = expected_features(expected.applied, key_field, REGISTRY.features_of(entity), as_of)
    ids = [str(i) for i in want.index]
    compared = assert_matches(
        _served(client, entity, ids, as_of), want, f"{entity} as of clock{offset_ms:+d}ms"
    )
    assert compared == len(ids) * len(REGISTRY.features_of(entity))


def test_default_as_of_is_the_event_time_clock(client: FeatureClient, applied: RedisOnlineStore) -> None:
    response = client.get_online_features("card", ["no-such-card"])
    assert response.as_of_ms == applied.clock_ms() == response.event_time_clock_ms
    assert response.value("no-such-card", "card_txn_count_1h") == 0
    assert response.value("no-such-card", "card_amount_max_24h") is None


def test_every_late_and_malformed_record_is_routed_and_counted(
    pipeline: Settings, applied: RedisOnlineStore, expected: Expected
) -> None:
    counters = applied.counters()
    assert counters["late"] == len(expected.late)
    assert counters["applied"] == len(expected.applied) + expected.duplicates
    assert counters["malformed:undecodable"] == 1
    assert counters["malformed:unknown_schema_id"] == 1
    assert counters["malformed:validation_failed"] == 1
    assert counters.get("duplicates", 0) == expected.duplicates

    serde = AvroSerde(pipeline.schema_registry_url)
    late = [serde.decode(LATE_EVENTS, v) for v in read_topic(pipeline, LATE_EVENTS)["value"]]
    assert {(r["source_partition"], r["source_offset"]) for r in late} == set(
        zip(expected.late["partition"], expected.late["offset"], strict=True)
    )
    assert all("older than watermark" in r["reason"] and r["lateness_ms"] > 0 for r in late)

    dead = [serde.decode(DEAD_LETTER, v) for v in read_topic(pipeline, DEAD_LETTER)["value"]]
    by_kind = {r["error_type"]: r for r in dead}
    assert set(by_kind) == {"undecodable", "unknown_schema_id", "validation_failed"}
    assert by_kind["undecodable"]["original"] == b"not avro at all"
    assert "amount: must be >= 0" in by_kind["validation_failed"]["error"]
    assert "100000" in by_kind["unknown_schema_id"]["error"]
    malformed_offsets = set(zip(expected.malformed["partition"], expected.malformed["offset"], strict=True))
    assert {(r["source_partition"], r["source_offset"]) for r in dead} == malformed_offsets
    assert all(r["source_topic"] == TRANSACTIONS for r in dead + late)


def _snapshot(settings: Settings, as_of_ms: int, expected: Expected) -> dict[str, list[Any]]:
    store = RedisOnlineStore.from_settings(settings)
    snapshot: dict[str, list[Any]] = {}
    for entity in REGISTRY.entities():
        ids = sorted(str(i) for i in expected.applied[entity.key_field].unique())
        names = [f.name for f in REGISTRY.features_of(entity.name)]
        snapshot[entity.name] = store.read(entity.name, ids, names, as_of_ms).rows
    return snapshot


def test_a_killed_job_resumes_without_losing_or_double_counting(
    pipeline: Settings, applied: RedisOnlineStore, expected: Expected
) -> None:
    crashing = pipeline.for_generation("crash")
    crashing.stream.batch_size = 200
    env = os.environ | settings_env(crashing)
    job = subprocess.Popen(
        [sys.executable, "-m", "highwater.cli", "run", "--until-end"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = RedisOnlineStore.from_settings(crashing)
    deadline = time.monotonic() + 120
    try:
        # Labels are a source too: their batch can be the first checkpoint, so wait for a transactions one.
        while not store.checkpoints(TRANSACTIONS):
            assert job.poll() is None, "the job ended before it could be killed mid-way"
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.01)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(30)
    resumed_from = sum(c.next_offset for c in store.checkpoints(TRANSACTIONS).values())
    assert 0 < resumed_from < COUNT, "the kill must land mid-way"

    run_job(until_end=True, settings=crashing, show_progress=False)

    clock = applied.clock_ms()
    assert store.clock_ms() == clock
    assert store.counters() == applied.counters()
    assert _snapshot(crashing, clock, expected) == _snapshot(pipeline, clock, expected)
    # History trails the online writes: what the kill left pending was written before resuming.
    assert store.pending_history() == []
    positions = [(r["partition"], r["offset"]) for r in _history(crashing, "transactions")]
    assert positions == _valid_positions(pipeline, read_topic(pipeline, TRANSACTIONS))


def test_history_a_failed_insert_left_unwritten_is_written_on_restart(
    pipeline: Settings, applied: RedisOnlineStore, expected: Expected
) -> None:
    halted = pipeline.for_generation("halted")
    halted.stream.batch_size = 200
    offline = ClickHouseOfflineStore.from_settings(halted)
    store = RedisOnlineStore.from_settings(halted)
    try:
        offline.migrate("halted")
        # ClickHouse refuses the history of later offsets; the online writes go on until the job stops.
        offline.command("ALTER TABLE {transactions} ADD CONSTRAINT refuse CHECK offset < 1000", "halted")
        job = subprocess.run(
            [sys.executable, "-m", "highwater.cli", "run", "--until-end"],
            env=os.environ | settings_env(halted),
            capture_output=True,
            timeout=300,
        )
        assert job.returncode != 0
        assert b"refuse" in job.stderr  # the constraint's name: the insert failed, nothing else
        pending = store.pending_history()
        assert pending, "the online writes should have run ahead of the failing history"
        stopped_at = {p: c.next_offset for p, c in store.checkpoints(TRANSACTIONS).items()}
        last_seq = int(redis.Redis.from_url(halted.redis_url).get(store.keys.apply_seq) or 0)
        assert any(offset > 1000 for offset in stopped_at.values())
        offline.command("ALTER TABLE {transactions} DROP CONSTRAINT refuse", "halted")
    finally:
        offline.close()

    run_job(until_end=True, settings=halted, show_progress=False)

    assert store.pending_history() == []
    rows = _history(halted, "transactions")
    assert [(r["partition"], r["offset"]) for r in rows] == _valid_positions(
        pipeline, read_topic(pipeline, TRANSACTIONS)
    )
    late = set(zip(expected.late["partition"], expected.late["offset"], strict=True))
    assert {(r["partition"], r["offset"]) for r in rows if r["late"]} == late
    # Recovered rows keep the sequence number of the batch that applied them online (the feature log's
    # "applied by then"); rows of batches applied after the restart have later numbers.
    for row in rows:
        before_stop = row["offset"] < stopped_at.get(row["partition"], 0)
        assert (row["apply_seq"] <= last_seq) == before_stop, row
    clock = applied.clock_ms()
    assert store.counters() == applied.counters()
    assert _snapshot(halted, clock, expected) == _snapshot(pipeline, clock, expected)


def test_processing_the_same_offsets_twice_changes_no_value(
    pipeline: Settings, applied: RedisOnlineStore, expected: Expected
) -> None:
    twice = pipeline.for_generation("twice")
    run_job(until_end=True, settings=twice, show_progress=False)
    store = RedisOnlineStore.from_settings(twice)
    before = store.counters()
    # A crash between the writes and the checkpoint, as a non-atomic sink could have: forget the offsets.
    redis.Redis.from_url(twice.redis_url).delete(f"hw:{twice.online.generation}:meta:checkpoints")
    run_job(until_end=True, settings=twice, show_progress=False)
    clock = applied.clock_ms()
    assert _snapshot(twice, clock, expected) == _snapshot(pipeline, clock, expected)
    after = store.counters()
    assert after["duplicates"] == before["duplicates"] + before["applied"]
    positions = [(r["partition"], r["offset"]) for r in _history(twice, "transactions")]
    assert positions == _valid_positions(pipeline, read_topic(pipeline, TRANSACTIONS))


def test_history_keeps_every_valid_event_with_its_position_and_fate(
    pipeline: Settings, applied: RedisOnlineStore, expected: Expected
) -> None:
    rows = _history(pipeline, "transactions")
    got = {(r["partition"], r["offset"]): r for r in rows}
    assert sorted(got) == _valid_positions(pipeline, read_topic(pipeline, TRANSACTIONS))
    late = set(zip(expected.late["partition"], expected.late["offset"], strict=True))
    assert {k for k, r in got.items() if r["late"]} == late
    assert all("older than watermark" in got[k]["late_reason"] for k in late)
    for row in expected.applied.itertuples():
        stored = got[(row.partition, row.offset)]
        assert stored["transaction_id"] == row.transaction_id
        assert stored["amount"] == row.amount
        assert int(stored["event_time"].timestamp() * 1000) == row.event_time
        assert stored["apply_seq"] > 0
    labels = _history(pipeline, "fraud_labels")
    log = read_topic(pipeline, FRAUD_LABELS)
    assert sorted((r["partition"], r["offset"]) for r in labels) == sorted(
        zip(log["partition"], log["offset"], strict=True)
    )
    assert applied.counters()[f"recorded:{FRAUD_LABELS}"] == len(log)


def _valid_positions(settings: Settings, log: pd.DataFrame) -> list[tuple[int, int]]:
    """(partition, offset) of every record that decodes and validates: applied, late or duplicate."""
    malformed = classify_log(settings, log).malformed
    bad = set(zip(malformed["partition"], malformed["offset"], strict=True))
    return sorted(
        (int(p), int(o)) for p, o in zip(log["partition"], log["offset"], strict=True) if (p, o) not in bad
    )
