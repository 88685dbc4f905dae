"""Streaming scores: the Quix Streams app scoring ``transactions`` into ``fraud-scores``.

The stack tests share a stack of their own (the app reads whole topics) and run in phases, each a
fixture depending on the one before:

1. ``early``: the app runs before the feature job with ``max_wait_ms=0``: every valid record after the
   first of its partition is scored ahead of the features;
2. ``applied``: the feature job applies the log;
3. ``main``: the app runs with the default group and wait: nothing ahead, malformed records skipped by
   the feature job's reasons; its scores are checked against ``Scorer.score`` of the same transactions,
   decoded with our own serde (``schemas.serde.AvroSerde``), not Quix's;
4. ``rerun``: the app from the start again (a re-delivery): the same keys and values;
5. ``waiting``: new transactions, and the feature job started only once the app is waiting for it.

Values are compared with an independent reading of the log (our serde plus ``validate_event``) and a
fresh ``Scorer``; the card transaction count is also recomputed from the log.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import Any, cast

import fastavro
import numpy as np
import pandas as pd
import pytest
import redis
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from typer.testing import CliRunner

from highwater.bootstrap import bootstrapped_stack
from highwater.cli import app as cli_app
from highwater.settings import Settings, get_settings
from highwater.stack.env import isolated_settings, settings_env
from schemas.catalog import CATALOG, FRAUD_SCORES, TRANSACTIONS
from schemas.serde import AvroSerde, SerdeError
from schemas.validate import validate_event
from sinks.model_store import model_store_from_settings
from sinks.online import PartitionCheckpoint, WriteBatch
from sinks.redis_online import LIVE_GENERATION_KEY, RedisOnlineStore
from streams.fraud_model import initial_model
from streams.job import run_job
from streams.kafka_source import log_end_offsets
from streams.producer import EventProducer
from streams.scorer import Scorer
from streams.scoring_app import (
    Admission,
    FeatureGate,
    LiveCheckpoints,
    LogEnd,
    ScoringPipeline,
    ScoringStats,
    avro_inputs,
    epoch_ms,
    fraud_score,
    run_scoring,
)
from streams.synthetic import HOUR_MS, MINUTE_MS, SyntheticStream
from tests.oracle import read_topic

COUNT = 300
DAY_MS = 24 * HOUR_MS
MALFORMED = {"undecodable": 4, "unknown_schema_id": 1, "validation_failed": 1}


# --- one record, without a stack ---------------------------------------------------------------------
@pytest.mark.parametrize("ms", [0, 1, 999, 1_772_409_600_123, -1, 253_402_300_799_999])
def test_epoch_ms_inverts_the_datetime_quix_deserializes(ms: int) -> None:
    schema = fastavro.parse_schema({"type": "long", "logicalType": "timestamp-millis"})
    buf = BytesIO()
    fastavro.schemaless_writer(buf, schema, ms)
    buf.seek(0)
    decoded = fastavro.schemaless_reader(buf, schema)
    assert isinstance(decoded, datetime)
    assert epoch_ms(decoded) == ms
    assert epoch_ms(ms) == ms


def test_avro_inputs_fit_the_fraud_score_map_and_round_trip() -> None:
    inputs = {
        "count": np.int64(3),
        "sum": np.float32(2.5),
        "flag": np.bool_(True),
        "plain_bool": False,
        "channel": "pos",
        "rate": None,
        "nan": float("nan"),
    }
    converted = avro_inputs(inputs)
    assert [type(v) for v in converted.values()] == [int, float, bool, bool, str, type(None), float]
    txn = {"transaction_id": "t1", "card_id": "c1", "merchant_id": "m1", "event_time": 5}

    @dataclass
    class Result:
        transaction_id: str = "t1"
        fraud_probability: float = 0.5
        model_version: str = "3"
        inputs: dict[str, Any] | None = None

    value = fraud_score(txn, cast(Any, Result(inputs=inputs)), 7)
    schema = fastavro.parse_schema(json.loads(CATALOG.entry(FRAUD_SCORES).text))
    buf = BytesIO()
    fastavro.schemaless_writer(buf, schema, value)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, schema)
    assert isinstance(back, dict)
    got = back["inputs"]
    assert got["count"] == 3 and type(got["count"]) is int
    assert got["flag"] is True and got["plain_bool"] is False
    assert got["channel"] == "pos" and got["rate"] is None and math.isnan(got["nan"])
    with pytest.raises(TypeError, match="inputs\\['bad'\\]"):
        avro_inputs({"bad": object()})


class FakeTime:
    """A clock the gate sleeps on, so waits take no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_gate_waits_until_the_partition_is_applied_then_trusts_its_cache() -> None:
    time_ = FakeTime()
    reads: list[float] = []

    def next_offsets() -> dict[int, int]:
        reads.append(time_.now)
        return {0: 11 if time_.now >= 0.5 else 5}

    gate = FeatureGate(next_offsets, max_wait_ms=2_000, poll_ms=100, clock=time_.clock, sleep=time_.sleep)
    assert gate.admit(0, 5) is Admission.READY
    assert gate.admit(0, 11) is Admission.WAITED
    assert 0.5 <= gate.last_wait_s <= 0.6
    calls = len(reads)
    assert [gate.admit(0, o) for o in (6, 10, 11)] == [Admission.READY] * 3
    assert len(reads) == calls, "offsets the cache covers need no read"


def test_gate_times_out_once_then_lets_the_partition_through_until_the_job_catches_up() -> None:
    time_ = FakeTime()
    applied = {0: 5}
    gate = FeatureGate(lambda: applied, max_wait_ms=1_000, poll_ms=50, clock=time_.clock, sleep=time_.sleep)
    assert gate.admit(0, 20) is Admission.AHEAD
    assert time_.slept == pytest.approx(1.0)
    assert [gate.admit(0, o) for o in (21, 22, 23)] == [Admission.AHEAD] * 3
    assert time_.slept == pytest.approx(1.0), "a stalled partition is not waited on for every record"
    assert gate.admit(1, 0) is Admission.READY
    applied[0] = 21  # the job caught up with the offset that timed out: waiting is back
    time_.now += 1
    assert gate.admit(0, 24) is Admission.AHEAD
    assert time_.slept == pytest.approx(2.0)
    applied[0] = 30
    time_.now += 1
    assert gate.admit(0, 25) is Admission.READY


def test_gate_with_no_wait_never_sleeps() -> None:
    time_ = FakeTime()
    gate = FeatureGate(lambda: {}, max_wait_ms=0, clock=time_.clock, sleep=time_.sleep)
    assert [gate.admit(0, o) for o in (0, 1, 2)] == [Admission.READY, Admission.AHEAD, Admission.AHEAD]
    assert time_.slept == 0


def test_log_end_counts_what_is_left_per_partition() -> None:
    end = LogEnd(starts={0: 5, 1: 2, 2: 0}, ends={0: 7, 1: 2, 2: 1})
    assert (end.remaining, end.reached) == (3, False)
    assert end.observe(0, 6) is False and end.remaining == 1  # offset 5 was a record Quix never handed on
    assert end.observe(2, 0) is True and end.remaining == 0


def test_summary_names_every_counter() -> None:
    stats = ScoringStats(scored=3, waited=1, waited_ms=12.4, scored_ahead_of_features=2)
    stats.skipped.update({"undecodable": 2, "as_of_too_old": 1})
    assert stats.summary() == (
        "scored 3, skipped 3 (as_of_too_old 1, undecodable 2), waited 1 (12 ms), scored ahead of features 2"
    )
    assert stats.processed == 6


# --- the stack ---------------------------------------------------------------------------------------
@dataclass
class Log:
    """What the tests produced, and the valid records as an independent reader sees them."""

    settings: Settings
    valid: pd.DataFrame
    """partition, offset, transaction_id, record (our serde's decode) of every record that decodes and
    passes validate_event, in log order."""
    stream_end_ms: int
    model_version: str
    """The live model version: trained a little, so scores depend on the inputs."""


def _valid_records(settings: Settings) -> pd.DataFrame:
    serde = AvroSerde(settings.schema_registry_url)
    rows = []
    for row in read_topic(settings, TRANSACTIONS).itertuples():
        try:
            record = serde.decode(TRANSACTIONS, cast(bytes | None, row.value))
        except SerdeError:
            continue
        if not validate_event(TRANSACTIONS, record):
            rows.append(
                {
                    "partition": row.partition,
                    "offset": row.offset,
                    "transaction_id": record["transaction_id"],
                    "record": record,
                }
            )
    return pd.DataFrame(rows)


def _produce(settings: Settings) -> int:
    stream = SyntheticStream(seed=5, count=COUNT, span_ms=2 * HOUR_MS, n_cards=15, late_share=0.0)
    transactions = [d.record for d in stream.deliveries() if d.topic == TRANSACTIONS]
    report = EventProducer(settings).produce_many([(TRANSACTIONS, t) for t in transactions])
    assert report.written == COUNT and not report.rejected
    serde = AvroSerde(settings.schema_registry_url)
    raw = Producer(settings.kafka_config())
    first = transactions[0]
    # What the feature job dead-letters, written around validation:
    raw.produce(TRANSACTIONS, key=b"bad", value=b"not avro at all")
    raw.produce(TRANSACTIONS, key=b"bad", value=serde.encode(TRANSACTIONS, first)[:12])  # truncated body
    raw.produce(TRANSACTIONS, key=b"bad", value=None)
    trailing = serde.encode(TRANSACTIONS, first | {"transaction_id": "trailing"}) + b"\x00\x00"
    raw.produce(TRANSACTIONS, key=b"bad", value=trailing)  # Confluent's deserializer alone would accept it
    raw.produce(TRANSACTIONS, key=b"bad", value=b"\x00\x00\x01\x86\xa0garbage")  # schema id 100000
    invalid = first | {"transaction_id": "bad-amount", "amount": -5.0}
    raw.produce(TRANSACTIONS, key=b"bad", value=serde.encode(TRANSACTIONS, invalid))
    # A re-delivery: the same transaction, the same bytes, its card's partition.
    again = transactions[COUNT // 2]
    raw.produce(TRANSACTIONS, key=again["card_id"].encode(), value=serde.encode(TRANSACTIONS, again))
    assert raw.flush(30) == 0
    return stream.end_ms


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    settings = isolated_settings(tmp_path_factory.mktemp("scoring"))
    settings.offline.history = False
    settings.model.refresh_s = 60.0
    with bootstrapped_stack(settings):
        end_ms = _produce(settings)
        valid = _valid_records(settings)
        assert len(valid) == COUNT + 1 and valid["transaction_id"].nunique() == COUNT
        yield Log(settings, valid, end_ms, _live_model(settings))


def _live_model(settings: Settings) -> str:
    """Make a slightly trained model live (big amounts on busy cards are fraud); returns its version."""
    model = initial_model()
    for i in range(200):
        fraud = i % 4 == 0
        inputs = {"amount": 900.0 + i if fraud else 20.0 + i % 50, "card_txn_count_1h": 6 if fraud else 1}
        model.learner.learn(inputs, fraud)
    store = model_store_from_settings(settings)
    try:
        version = store.save(model.to_bytes(), None, {}, {}).version
        return store.promote(version).version
    finally:
        store.close()


def _with_group(settings: Settings, group: str) -> Settings:
    copy = settings.model_copy(deep=True)
    copy.model.consumer_group = group
    return copy


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    return {p: high for p, (_, high) in log_end_offsets(settings, topic).items()}


@dataclass
class Run:
    """One bounded run of the app: its counters, the scores it produced (raw), and when it ran."""

    stats: ScoringStats
    scores: pd.DataFrame
    started_ms: int
    ended_ms: int


def _run(settings: Settings, **kwargs: Any) -> Run:
    before = _ends(settings, FRAUD_SCORES)
    started = time.time_ns() // 1_000_000
    stats = run_scoring(settings, until_end=True, show_progress=False, **kwargs)
    ended = time.time_ns() // 1_000_000
    scores = read_topic(settings, FRAUD_SCORES)
    new = scores[[o >= before[p] for p, o in zip(scores["partition"], scores["offset"], strict=True)]]
    return Run(stats, new.reset_index(drop=True), started, ended)


@pytest.fixture(scope="module")
def early(log: Log) -> Run:
    """The app before the feature job ran, not waiting at all."""
    return _run(_with_group(log.settings, "scoring-early"), max_wait_ms=0)


@pytest.fixture(scope="module")
def applied(log: Log, early: Run) -> RedisOnlineStore:
    run_job(until_end=True, settings=log.settings, show_progress=False)
    return RedisOnlineStore.from_settings(log.settings)


@pytest.fixture(scope="module")
def main(log: Log, applied: RedisOnlineStore) -> Run:
    return _run(log.settings)


@pytest.fixture(scope="module")
def rerun(log: Log, main: Run) -> Run:
    return _run(_with_group(log.settings, "scoring-rerun"))


def _decoded(settings: Settings, run: Run) -> list[dict[str, Any]]:
    serde = AvroSerde(settings.schema_registry_url)
    out = []
    for key, value, partition in zip(
        run.scores["key"], run.scores["value"], run.scores["partition"], strict=True
    ):
        out.append(
            {"_key": key.decode(), "_schema_id": struct.unpack(">bI", value[:5])[1], "_partition": partition}
            | serde.decode(FRAUD_SCORES, value)
        )
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return isinstance(a, bool) == isinstance(b, bool) and bool(a == b)


def _same_inputs(got: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)


@pytest.mark.stack
def test_before_the_feature_job_every_later_record_is_scored_ahead_of_features(log: Log, early: Run) -> None:
    stats = early.stats
    assert stats.reached_end is True
    assert stats.scored == len(log.valid)
    assert stats.scored_ahead_of_features == int((log.valid["offset"] > 0).sum()) > 0
    assert stats.waited == 0
    assert dict(stats.skipped) == MALFORMED
    assert len(early.scores) == len(log.valid)


@pytest.mark.stack
def test_after_the_feature_job_nothing_is_ahead_and_the_skips_are_the_jobs_dead_letters(
    log: Log, applied: RedisOnlineStore, main: Run
) -> None:
    stats = main.stats
    assert stats.reached_end is True
    assert (stats.scored, stats.scored_ahead_of_features, stats.waited) == (len(log.valid), 0, 0)
    assert dict(stats.skipped) == MALFORMED
    dead_lettered = {
        k.removeprefix("malformed:"): v for k, v in applied.counters().items() if k.startswith("malformed:")
    }
    assert dead_lettered == MALFORMED


@pytest.mark.stack
def test_one_score_per_valid_transaction_keyed_by_its_id_equal_to_the_scorer(log: Log, main: Run) -> None:
    scores = _decoded(log.settings, main)
    assert len(scores) == len(log.valid)  # the re-delivered transaction is scored twice, same key
    assert all(s["_key"] == s["transaction_id"] for s in scores)
    # Co-partitioned: a score sits in the partition its transaction was read from.
    read_from = Counter(zip(log.valid["transaction_id"], log.valid["partition"], strict=True))
    assert Counter((s["transaction_id"], s["_partition"]) for s in scores) == read_from
    by_id = {s["transaction_id"]: s for s in scores}
    assert set(by_id) == set(log.valid["transaction_id"])
    registry = SchemaRegistryClient({"url": log.settings.schema_registry_url})
    registered = registry.lookup_schema(
        CATALOG.subject(FRAUD_SCORES), Schema(CATALOG.entry(FRAUD_SCORES).text, "AVRO")
    ).schema_id
    assert {s["_schema_id"] for s in scores} == {registered}
    assert registry.get_latest_version(f"{FRAUD_SCORES}-value").schema_id == registered

    records = {r["transaction_id"]: r for r in log.valid["record"]}
    with Scorer.from_settings(log.settings) as scorer:
        for txn_id, record in sorted(records.items(), key=lambda kv: kv[1]["event_time"]):
            score = by_id[txn_id]
            want = scorer.score(record)
            assert score["fraud_probability"] == want.fraud_probability, txn_id
            assert _same_inputs(score["inputs"], want.inputs), (txn_id, score["inputs"], want.inputs)
            assert score["model_version"] == want.model_version == log.model_version
            for name in ("event_time", "card_id", "merchant_id"):
                assert score[name] == record[name]
            assert main.started_ms <= score["score_time"] <= main.ended_ms
    redelivered = log.valid["transaction_id"].value_counts().idxmax()
    duplicate = [s for s in scores if s["transaction_id"] == redelivered]
    assert len(duplicate) == 2
    assert len({s["fraud_probability"] for s in scores}) > COUNT // 10, "the model must tell inputs apart"
    assert {k: v for k, v in duplicate[0].items() if k not in ("score_time", "_partition")} == {
        k: v for k, v in duplicate[1].items() if k not in ("score_time", "_partition")
    }


@pytest.mark.stack
def test_a_rerun_from_the_start_redelivers_the_same_keyed_scores(log: Log, main: Run, rerun: Run) -> None:
    first, second = _decoded(log.settings, main), _decoded(log.settings, rerun)
    assert Counter(s["_key"] for s in second) == Counter(s["_key"] for s in first)
    deduped = {s["_key"]: s for s in first + second}  # what a keyed consumer keeps: the last per key
    assert set(deduped) == set(log.valid["transaction_id"])

    def without_time(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k != "score_time"}

    assert {s["_key"]: json.dumps(without_time(s), sort_keys=True) for s in second} == {
        s["_key"]: json.dumps(without_time(s), sort_keys=True) for s in first
    }


class StartJobOnFirstRead:
    """The gate's checkpoint source, which starts the feature job (a subprocess) the first time the gate
    asks: so the app is certainly waiting for the job, not finding its work done."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._live = LiveCheckpoints(settings)
        self.job: subprocess.Popen[bytes] | None = None

    def __call__(self) -> dict[int, int]:
        offsets = self._live()
        if self.job is None:
            self.job = subprocess.Popen(
                [sys.executable, "-m", "highwater.cli", "run", "--until-end"],
                env=os.environ | settings_env(self._settings),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        return offsets

    def close(self) -> None:
        self._live.close()


@pytest.fixture(scope="module")
def waiting(log: Log, rerun: Run) -> tuple[Run, list[dict[str, Any]], StartJobOnFirstRead]:
    """Two new transactions of one card and one too old to score; the job starts once the app waits."""
    card = str(log.valid["record"].iloc[0]["card_id"])
    base = dict(log.valid["record"].iloc[0])
    fresh = [
        base | {"transaction_id": f"fresh-{i}", "event_time": log.stream_end_ms + i * MINUTE_MS}
        for i in (1, 2)
    ]
    too_old = base | {"transaction_id": "too-old", "event_time": log.stream_end_ms - 3 * DAY_MS}
    report = EventProducer(log.settings).produce_many([(TRANSACTIONS, t) for t in [*fresh, too_old]])
    assert report.written == 3 and all(t["card_id"] == card for t in fresh)
    source = StartJobOnFirstRead(log.settings)
    run = _run(log.settings, gate=FeatureGate(source, max_wait_ms=120_000))
    assert source.job is not None
    _, stderr = source.job.communicate(timeout=120)
    assert source.job.returncode == 0, stderr.decode()[-2000:]
    return run, fresh, source


@pytest.mark.stack
def test_the_app_waits_for_the_feature_job_and_scores_with_the_cards_earlier_transactions(
    log: Log, waiting: tuple[Run, list[dict[str, Any]], StartJobOnFirstRead]
) -> None:
    run, fresh, _ = waiting
    stats = run.stats
    assert stats.waited >= 1 and stats.waited_ms > 0
    assert (stats.scored, stats.scored_ahead_of_features) == (2, 0)
    assert dict(stats.skipped) == {"as_of_too_old": 1}
    scores = {s["transaction_id"]: s for s in _decoded(log.settings, run)}
    assert set(scores) == {"fresh-1", "fresh-2"}
    # The card's transactions in (t - 1h, t] from the log itself, the scored one included.
    card_times = {
        r["transaction_id"]: r["event_time"]
        for r in log.valid["record"]
        if r["card_id"] == fresh[0]["card_id"]
    }
    card_times.update({t["transaction_id"]: t["event_time"] for t in fresh})
    with Scorer.from_settings(log.settings) as scorer:
        for txn in fresh:
            t = txn["event_time"]
            count = sum(1 for e in card_times.values() if t - HOUR_MS < e <= t)
            got = scores[txn["transaction_id"]]
            assert got["inputs"]["card_txn_count_1h"] == count
            want = scorer.score(txn)
            assert got["fraud_probability"] == want.fraud_probability
            assert _same_inputs(got["inputs"], want.inputs)
    assert (
        scores["fresh-2"]["inputs"]["card_txn_count_1h"]
        == scores["fresh-1"]["inputs"]["card_txn_count_1h"] + 1
    )


@pytest.mark.stack
def test_score_stream_command_scores_the_log_to_its_end(
    log: Log, waiting: tuple[Run, list[dict[str, Any]], StartJobOnFirstRead], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in settings_env(_with_group(log.settings, "scoring-cli")).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["score-stream", "--until-end"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    scored = len(log.valid) + 2
    assert (
        f"scoring: scored {scored}, skipped 7 (as_of_too_old 1, undecodable 4, unknown_schema_id 1, "
        "validation_failed 1), waited 0 (0 ms), scored ahead of features 0"
    ) in result.output


# --- the gate and the error hook on the stack's Redis and registry -------------------------------------
@pytest.mark.stack
def test_live_checkpoints_follow_the_live_generation(log: Log) -> None:
    client = redis.Redis.from_url(log.settings.redis_url)
    for generation, offset in (("gate-a", 7), ("gate-b", 42)):
        store = RedisOnlineStore(client, log.settings.for_generation(generation))
        store.write(WriteBatch(checkpoints=[PartitionCheckpoint(TRANSACTIONS, 2, offset, None)]))
    checkpoints = LiveCheckpoints(log.settings.for_generation("gate-a"), client)
    try:
        assert checkpoints() == {2: 7}
        client.set(LIVE_GENERATION_KEY, "gate-b")
        assert checkpoints() == {2: 42}
    finally:
        client.delete(LIVE_GENERATION_KEY)
        client.close()


@pytest.mark.stack
def test_gate_waits_for_a_checkpoint_written_meanwhile(log: Log) -> None:
    settings = log.settings.for_generation("gate-wait")
    store = RedisOnlineStore.from_settings(settings)
    store.write(WriteBatch(checkpoints=[PartitionCheckpoint(TRANSACTIONS, 1, 3, None)]))
    gate = FeatureGate(LiveCheckpoints(settings), max_wait_ms=10_000)
    writer = threading.Timer(
        0.3, lambda: store.write(WriteBatch(checkpoints=[PartitionCheckpoint(TRANSACTIONS, 1, 9, None)]))
    )
    writer.start()
    try:
        assert gate.admit(1, 3) is Admission.READY
        assert gate.admit(1, 9) is Admission.WAITED
        assert 0.25 <= gate.last_wait_s < 5
    finally:
        writer.join()
        gate.close()


class Message:
    """A consumed record as Quix hands it to ``on_consumer_error``."""

    def __init__(self, value: bytes | None, partition: int = 2, offset: int = 17) -> None:
        self._value, self._partition, self._offset = value, partition, offset

    def topic(self) -> str:
        return TRANSACTIONS

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


@pytest.mark.stack
def test_deserialization_errors_are_counted_by_reason_and_other_failures_stop_the_app(log: Log) -> None:
    import logging

    positions: list[tuple[int, int]] = []
    pipeline = ScoringPipeline(
        cast(Any, None), FeatureGate(lambda: {}), AvroSerde(log.settings.schema_registry_url)
    )
    pipeline.on_position = lambda p, o: positions.append((p, o))
    logger = logging.getLogger("test")
    assert pipeline.on_consumer_error(ValueError("x"), cast(Any, Message(b"junk")), logger) is True
    framed_unknown = b"\x00\x00\x01\x86\xa0garbage"
    assert pipeline.on_consumer_error(ValueError("x"), cast(Any, Message(framed_unknown, 0, 3)), logger)
    assert dict(pipeline.stats.skipped) == {"undecodable": 1, "unknown_schema_id": 1}
    assert positions == [(2, 17), (0, 3)]
    # The registry unreachable: not the record's fault, so not suppressed (Quix raises; nothing commits).
    down = ScoringPipeline(cast(Any, None), FeatureGate(lambda: {}), AvroSerde("http://127.0.0.1:9"))
    assert down.on_consumer_error(ValueError("x"), cast(Any, Message(framed_unknown)), logger) is False
    assert not down.stats.skipped
    assert pipeline.on_consumer_error(ValueError("x"), None, logger) is False
