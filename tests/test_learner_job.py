"""The learner job: fraud scores and labels on the log in, versioned models out, reproducibly.

The scoring app is not there yet, so the ``fraud-scores`` records are simulated honestly: a synthetic
stream's transactions with their point-in-time features (``streams.quality``, numpy), own fields and
location cell, plus the label features and probability a delayed-label trainer gave each when it
scored it (``progressive_validation``: scored at event_time, labels learned when known). Added to the
stream: a label delivered before its score (and one at the same millisecond), a label whose score never
comes, a fraud label after the transaction was learned as legit by implication, a relabel, an
undecodable record, and (in the "dup" topics) re-delivered score records, adjacent and 30 min later.

What must hold, checked against independent computations from the records as read back from the log:
the job learns what the spec says (labels, implied legit, holds, lateness, duplicates), with metrics;
label features count only labels known by then; a label before its score is held then learned, one
whose score never comes is dead-lettered with its reason; a run stopped or killed and resumed equals
one uninterrupted run bit for bit; a replay up to a live version rebuilds it; duplicates change
nothing. The unit tests (no stack) prove the core's determinism over interleavings of the same records.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from highwater.cli import app
from highwater.settings import Settings
from highwater.stack.env import settings_env
from highwater.topics import TopicSpec, admin_client, ensure_topics
from schemas.catalog import DEAD_LETTER, FRAUD_LABELS, FRAUD_SCORES
from schemas.serde import AvroSerde
from sinks.file_model_store import FileModelStore
from sinks.model_store import ModelStore
from sinks.redis_model_store import RedisModelStore
from streams.fraud_model import FraudModel
from streams.kafka_source import log_end_offsets
from streams.learner import DAY_MS, DEFAULT_LEGIT_AFTER_MS, DelayedLabelTrainer, FraudLearner
from streams.learner_core import DUPLICATE_WINDOW_MS, LearnerCore, LearnerOptions
from streams.learner_job import DRAINED, LearnerJobError, LearnReport, replay_model, run_learner
from streams.learning_metrics import BINS, ProgressiveMetrics, binned_auc_ap, score_bin
from streams.model_verify import Probe, compare_models, verify_versions
from streams.producer import EventProducer
from streams.quality import EvaluationData, model_inputs, progressive_validation
from streams.simulated_scores import score_log, simulated_scores
from streams.synthetic import SyntheticStream

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
SPAN_MS = 14 * DAY_MS
SCORE_PARTITIONS, LABEL_PARTITIONS = 3, 2
Record = tuple[str, dict[str, Any], bytes]
"""(catalog topic, record, message key) in log order."""


# --- the scenario ---------------------------------------------------------------------------------------
@dataclass
class Scenario:
    base: list[Record]
    dup: list[Record]
    """``base`` plus re-delivered score records."""
    duplicates: int
    scores: dict[str, dict[str, Any]]
    ghost: str
    before: str
    same_ms: str
    after_implied_legit: str
    relabelled: str


def build_scenario(seed: int = 11, count: int = 3_000) -> Scenario:
    stream = SyntheticStream(seed=seed, count=count, span_ms=SPAN_MS, late_share=0.01, legit_label_share=0.05)
    scores = simulated_scores(stream)
    timeline: list[tuple[int, int, Record]] = [
        (d.delivery_ms, seq, record)
        for seq, (d, record) in enumerate(zip(stream.deliveries(), score_log(stream, scores), strict=True))
    ]
    labelled = {label["transaction_id"]: label for label in stream.labels()}
    late = {d.record["transaction_id"] for d in stream.deliveries() if d.late}
    quiet = [s for s in scores.values() if s["transaction_id"] not in labelled.keys() | late]
    quiet.sort(key=lambda s: (s["event_time"], s["transaction_id"]))
    before, same_ms = quiet[len(quiet) * 2 // 5], quiet[len(quiet) * 9 // 20]
    early = quiet[len(quiet) // 40]
    assert early["event_time"] < stream.start_ms + 2 * DAY_MS
    relabelled = next(
        lab for lab in stream.labels() if lab["is_fraud"] and lab["label_time"] > stream.start_ms + 5 * DAY_MS
    )

    def label(txn: dict[str, Any], is_fraud: bool, at: int, source: str = "analyst") -> dict[str, Any]:
        return {
            "transaction_id": txn["transaction_id"],
            "card_id": txn["card_id"],
            "is_fraud": is_fraud,
            "label_time": at,
            "source": source,
        }

    specials = [
        label(before, True, before["event_time"] - 10 * MINUTE_MS),
        label(same_ms, False, same_ms["event_time"]),
        label(early, True, early["event_time"] + DEFAULT_LEGIT_AFTER_MS + DAY_MS, "chargeback"),
        label(relabelled, False, relabelled["label_time"] + DAY_MS),
        label(
            {"transaction_id": "ghost-1", "card_id": before["card_id"]}, True, stream.start_ms + 6 * DAY_MS
        ),
    ]
    for k, special in enumerate(specials):
        timeline.append(
            (special["label_time"], 10**9 + k, (FRAUD_LABELS, special, special["card_id"].encode()))
        )
    timeline.sort(key=lambda entry: entry[:2])
    base = [entry[2] for entry in timeline]
    # Re-deliveries: 12 right after the original, 12 half an hour later (late in their partition).
    rng = random.Random(seed)
    on_time = [
        i
        for i, (topic, rec, _) in enumerate(base)
        if topic == FRAUD_SCORES and rec["transaction_id"] not in late
    ]
    picked = rng.sample(on_time, 24)
    dup_timeline = [(entry[0], entry[1], entry[2]) for entry in timeline]
    for n, index in enumerate(picked):
        delivery_ms, seq, record = timeline[index]
        later = 0 if n < 12 else 30 * MINUTE_MS
        dup_timeline.append((delivery_ms + later, seq, record))
    dup_timeline.sort(key=lambda entry: entry[:2])
    return Scenario(
        base=base,
        dup=[entry[2] for entry in dup_timeline],
        duplicates=len(picked),
        scores=scores,
        ghost="ghost-1",
        before=before["transaction_id"],
        same_ms=same_ms["transaction_id"],
        after_implied_legit=early["transaction_id"],
        relabelled=relabelled["transaction_id"],
    )


def probes(scenario: Scenario) -> list[Probe]:
    """Every 10th transaction: a fixed probe set."""
    ordered = sorted(scenario.scores.values(), key=lambda s: (s["event_time"], s["transaction_id"]))
    return [Probe.from_score(s) for s in ordered[::10]]


# --- an independent computation of what the job must do --------------------------------------------------
@dataclass
class LogRecord:
    topic: str  # catalog topic
    partition: int
    offset: int
    event: dict[str, Any]


def expected_outcome(log: list[LogRecord], d_ms: int, hold_ms: int, legit_after_ms: int) -> dict[str, Any]:
    """What the spec says the learner does with ``log`` (per partition in log order), computed directly.

    Returns the counts, each kept transaction's event_time and the accepted records in release order.
    (Re-deliveries here are at most 30 min late, inside the duplicate window.)
    """
    by_partition: dict[tuple[str, int], list[LogRecord]] = defaultdict(list)
    for record in log:
        by_partition[(record.topic, record.partition)].append(record)
    out = Counter[str]()
    accepted: list[tuple[int, int, str, str, int, int, LogRecord]] = []
    newest_of: dict[tuple[str, int], int] = {}
    for source, records in by_partition.items():
        newest: int | None = None
        ids: set[str] = set()
        for r in sorted(records, key=lambda r: r.offset):
            tid = r.event["transaction_id"]
            kind, t = (1, r.event["event_time"]) if r.topic == FRAUD_SCORES else (0, r.event["label_time"])
            if newest is not None and t < newest - d_ms:  # late in its own partition
                if kind == 1 and tid in ids:
                    out["duplicate_scores"] += 1
                else:
                    out["late_scores" if kind == 1 else "late_labels"] += 1
                continue
            newest = t if newest is None else max(newest, t)
            ids.add(tid)
            accepted.append((t, kind, tid, r.topic, r.partition, r.offset, r))
        assert newest is not None
        newest_of[source] = newest
    accepted.sort(key=lambda a: a[:6])
    frontier = min(newest_of.values()) - d_ms  # what is released before the final drain: time < frontier
    times = [a[0] for a in accepted]
    score_time: dict[str, int] = {}
    for t, kind, tid, *_ in accepted:
        if kind == 1:
            if tid in score_time:
                out["duplicate_scores"] += 1
            else:
                score_time[tid] = t

    def expires_before(deadline: int, score_at: int | None) -> bool:
        """A held label expires when a record later than its deadline is released before the drain
        (and before its score)."""
        i = int(np.searchsorted(times, deadline, side="right"))
        return i < len(times) and times[i] < frontier and (score_at is None or times[i] <= score_at)

    learned: set[str] = set()
    learned_labels: list[tuple[str, bool]] = []
    seen_label: set[str] = set()
    for t, kind, tid, *_rest, r in accepted:
        if kind == 1:
            continue
        out["labels"] += 1
        fraud = bool(r.event["is_fraud"])
        e = score_time.get(tid)
        first = tid not in seen_label
        seen_label.add(tid)
        if e is not None and t > e:  # released after its score
            if not first or t > e + legit_after_ms:
                out["labels_settled"] += 1  # a relabel, or after the implied-legit delay
                out["fraud_labels_settled"] += fraud
            else:
                out["labels_learned"] += 1
                learned.add(tid)
                learned_labels.append((tid, fraud))
        else:  # released before its score: held
            out["labels_held"] += 1
            if expires_before(t + hold_ms, e):
                out["labels_dead_lettered"] += 1
            elif e is not None and tid in learned:
                out["labels_settled"] += 1  # a second label held for the same transaction
                out["fraud_labels_settled"] += fraud
            elif e is not None:
                out["held_labels_learned"] += 1
                out["labels_learned"] += 1
                learned.add(tid)
                learned_labels.append((tid, fraud))
    last_time = times[-1]
    out["implied_legit"] = sum(
        1 for tid, e in score_time.items() if tid not in learned and e + legit_after_ms < last_time
    )
    out["scores_kept"] = len(score_time)
    out["late_labels"] += 0
    out["late_scores"] += 0
    return {"counts": dict(out), "score_time": score_time, "learned_labels": learned_labels}


# --- unit tests (no stack) -------------------------------------------------------------------------------
def partitioned(records: list[Record]) -> list[tuple[str, int, int, dict[str, Any]]]:
    """(topic, partition, offset, record) in log order, partitions chosen by a hash of the key."""
    offsets: Counter[tuple[str, int]] = Counter()
    out = []
    for topic, record, key in records:
        partition = zlib.crc32(key) % (SCORE_PARTITIONS if topic == FRAUD_SCORES else LABEL_PARTITIONS)
        out.append((topic, partition, offsets[(topic, partition)], record))
        offsets[(topic, partition)] += 1
    return out


def sources() -> list[tuple[str, int]]:
    return [(FRAUD_SCORES, p) for p in range(SCORE_PARTITIONS)] + [
        (FRAUD_LABELS, p) for p in range(LABEL_PARTITIONS)
    ]


def shuffled_arrivals(log: list[tuple[str, int, int, dict[str, Any]]], seed: int) -> list[Any]:
    """The records in a random interleaving of the partitions (each partition keeps its order)."""
    rng = random.Random(seed)
    queues: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for entry in log:
        queues[(entry[0], entry[1])].append(entry)
    cursors = dict.fromkeys(queues, 0)
    out = []
    while True:
        open_ = [q for q in queues if cursors[q] < len(queues[q])]
        if not open_:
            return out
        q = rng.choice(open_)
        burst = rng.randint(1, 200)  # fetches come in batches of varying size
        out.extend(queues[q][cursors[q] : cursors[q] + burst])
        cursors[q] += burst


def feed(log: list[Any], seed: int) -> tuple[LearnerCore, list[Any]]:
    """A core fed one interleaving, checkpointed (pickled and restored) and advanced at random points."""
    rng = random.Random(seed)
    core = LearnerCore(sources(), LearnerOptions())
    dead = []
    for topic, partition, offset, record in shuffled_arrivals(log, seed):
        dead.extend(core.offer(topic, partition, offset, None, b"", record))
        if rng.random() < 0.05:
            dead.extend(core.advance())
        if rng.random() < 0.002:
            core = LearnerCore.from_bytes(core.to_bytes())
    dead.extend(core.advance())
    core.drain()
    return core, sorted(dead, key=lambda d: d.message_key)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario()


def predictions(model: FraudModel, probe_set: list[Probe]) -> list[str]:
    return [model.learner.predict_proba(p.inputs).hex() for p in probe_set]


def test_core_learns_the_same_model_for_every_interleaving(scenario: Scenario) -> None:
    log = partitioned(scenario.dup)
    probe_set = probes(scenario)
    first, first_dead = feed(log, seed=0)
    assert first.counters.labels_learned > 100 and first.counters.implied_legit > 100
    for seed in (1, 2, 3):
        core, dead = feed(log, seed)
        assert predictions(core.model, probe_set) == predictions(first.model, probe_set)
        assert asdict(core.counters) == asdict(first.counters)
        assert dead == first_dead
        assert core.metrics() == first.metrics()
        copies = [FraudModel.from_bytes(m.to_bytes()) for m in (core.model, first.model)]
        assert compare_models(copies[0], copies[1], probe_set).identical  # label features too


def test_progressive_predictions_equal_an_in_memory_progressive_validation() -> None:
    """Through partitions, the merge, checkpoints and the logged inputs, the core's progressive
    predictions are bit for bit those of streams.quality.progressive_validation over the same
    transactions and labels (which computes the features and label features itself, in one loop)."""
    stream = SyntheticStream(seed=5, count=2_500, span_ms=SPAN_MS, late_share=0.0, legit_label_share=0.05)
    log = partitioned([(t, r, k) for t, r, k in score_log(stream, simulated_scores(stream))])
    seen: dict[str, float] = {}
    core = LearnerCore(sources(), LearnerOptions())
    core.on_prediction = lambda transaction_id, _time, p: seen.setdefault(transaction_id, p)
    for n, (topic, partition, offset, record) in enumerate(shuffled_arrivals(log, 9)):
        assert not core.offer(topic, partition, offset, None, b"", record)
        if n % 700 == 0:
            core.advance()
            restored = LearnerCore.from_bytes(core.to_bytes())
            assert restored.on_prediction is None
            restored.on_prediction, core = core.on_prediction, restored
    core.drain()
    data = EvaluationData.from_stream(stream)
    expected = progressive_validation(data, FraudLearner(), inputs=model_inputs(data)).probability
    got = [seen[t] for t in data.transactions["transaction_id"]]
    assert [p.hex() for p in got] == [float(p).hex() for p in expected]
    assert core.metrics()["labels_learned"] > 50


def test_without_the_merge_the_interleaving_changes_the_model(scenario: Scenario) -> None:
    """The check above can fail: learning in arrival order gives a different model per interleaving."""

    def arrival_order(seed: int) -> list[str]:
        trainer = DelayedLabelTrainer(FraudLearner(), None)
        for topic, _, _, record in shuffled_arrivals(partitioned(scenario.dup), seed):
            if topic == FRAUD_SCORES:
                trainer.keep(record, record["inputs"], record["fraud_probability"])
            else:
                trainer.label(record)
        return [trainer.learner.predict_proba(p.inputs).hex() for p in probes(scenario)]

    assert arrival_order(0) != arrival_order(1)


def test_core_counts_match_the_independent_computation(scenario: Scenario) -> None:
    log = partitioned(scenario.dup)
    core, _ = feed(log, seed=5)
    expected = expected_outcome(
        [LogRecord(t, p, o, r) for t, p, o, r in log], 5_000, 3_600_000, DEFAULT_LEGIT_AFTER_MS
    )["counts"]
    got = asdict(core.counters)
    assert {name: got[name] for name in expected} == expected


def score(tid: str, t: int, p: float = 0.5, amount: float = 10.0) -> dict[str, Any]:
    return {
        "transaction_id": tid,
        "card_id": "c1",
        "merchant_id": "m1",
        "event_time": t,
        "fraud_probability": p,
        "model_version": "0",
        "score_time": t,
        "inputs": {"amount": amount},
    }


def label(tid: str, t: int, fraud: bool = True) -> dict[str, Any]:
    return {"transaction_id": tid, "card_id": "c1", "is_fraud": fraud, "label_time": t, "source": "analyst"}


def test_a_label_before_its_score_is_held_then_learned_or_dead_lettered_after_the_hold() -> None:
    core = LearnerCore([(FRAUD_SCORES, 0), (FRAUD_LABELS, 0)], LearnerOptions(max_out_of_orderness_ms=0))
    t0 = 1_000_000_000
    core.offer(FRAUD_LABELS, 0, 0, b"c1", b"raw-a", label("a", t0))
    core.offer(FRAUD_LABELS, 0, 1, b"c1", b"raw-b", label("b", t0 + 1))
    core.offer(FRAUD_LABELS, 0, 2, b"c1", b"raw-c", label("c", t0 + 2))
    core.offer(FRAUD_SCORES, 0, 0, b"a", None, score("a", t0 + 30 * MINUTE_MS, p=0.8))
    assert core.advance() == [] and (core.frontier, core.counters.labels_held) == (t0 + 2, 2)  # a, b
    core.offer(FRAUD_LABELS, 0, 3, b"c1", None, label("y", t0 + 2 * HOUR_MS, fraud=False))
    core.offer(FRAUD_SCORES, 0, 1, b"c", None, score("c", t0 + 2 + HOUR_MS))  # c's deadline exactly
    assert core.advance() == [] and core.frontier == t0 + 2 + HOUR_MS
    assert (core.counters.labels_held, core.counters.held_labels_learned, core.held) == (3, 1, 2)  # b, c
    core.offer(FRAUD_SCORES, 0, 2, b"z", None, score("z", t0 + 3 * HOUR_MS))
    dead = core.advance()  # releases c's score: b's deadline (t0 + 1 + 1h) is behind it
    assert [(d.error_type, d.topic, d.partition, d.offset, d.value) for d in dead] == [
        ("no_score_for_label", FRAUD_LABELS, 0, 1, b"raw-b")
    ]
    assert dead[0].error.startswith("no score for transaction b within 1h of its label")
    assert dead[0].message_key == b"fraud-labels:0:1"
    c = core.counters
    assert (c.held_labels_learned, c.labels_dead_lettered, c.labels_learned) == (2, 1, 2)
    assert (core.held, core.buffered) == (0, 2)  # y and z wait for the frontier
    core.drain()  # the end of a bounded run: y is held, and stays held (nothing is dead-lettered)
    assert core.held == 1 and core.counters.labels_dead_lettered == 1 and core.metrics()["held"] == 1.0


def test_late_records_are_dead_lettered_and_late_re_deliveries_counted_as_duplicates() -> None:
    core = LearnerCore([(FRAUD_SCORES, 0), (FRAUD_LABELS, 0)], LearnerOptions(max_out_of_orderness_ms=1_000))
    t0 = 1_000_000_000
    core.offer(FRAUD_SCORES, 0, 0, b"a", None, score("a", t0))
    core.offer(FRAUD_SCORES, 0, 1, b"b", None, score("b", t0 + 10 * MINUTE_MS))
    assert core.offer(FRAUD_SCORES, 0, 2, b"a", None, score("a", t0)) == []  # a re-delivery, late
    late = core.offer(FRAUD_SCORES, 0, 3, b"c", b"raw", score("c", t0 + 1))  # late, never seen
    assert [(d.error_type, d.offset, d.value) for d in late] == [("late", 3, b"raw")]
    assert "598999 ms older than the watermark 1000599000" in late[0].error
    invalid = core.offer(FRAUD_SCORES, 0, 4, b"d", None, score("d", t0 + 11 * MINUTE_MS, p=1.5))
    assert invalid[0].error_type == "validation_failed"
    c = core.counters
    assert (c.duplicate_scores, c.late_scores, c.invalid) == (1, 1, 1)
    # Older than the duplicate window: no longer recognised, late.
    core.offer(FRAUD_SCORES, 0, 5, b"e", None, score("e", t0 + DUPLICATE_WINDOW_MS + 20 * MINUTE_MS))
    assert core.offer(FRAUD_SCORES, 0, 6, b"a", None, score("a", t0))[0].error_type == "late"


def test_progressive_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(3_000) < 0.1
    p = 1 / (1 + np.exp(-(rng.normal(0, 2, y.size) + 2.5 * y)))
    metrics = ProgressiveMetrics(window=500)
    for pi, yi in zip(p.tolist(), y.tolist(), strict=True):
        metrics.add(pi, yi)
    summary = metrics.summary()
    assert summary["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert summary["ap"] == pytest.approx(average_precision_score(y, p), abs=1e-3)
    assert summary["recent_auc"] == roc_auc_score(y[-500:], p[-500:])
    assert summary["recent_ap"] == average_precision_score(y[-500:], p[-500:])
    fraud = np.bincount([score_bin(v) for v in p[y]], minlength=BINS)
    legit = np.bincount([score_bin(v) for v in p[~y]], minlength=BINS)
    assert binned_auc_ap(fraud, legit) == (summary["auc"], summary["ap"])


# --- stack tests -----------------------------------------------------------------------------------------
@dataclass
class TopicSet:
    options: LearnerOptions
    log: list[LogRecord]
    """Every record as read back from the broker (the malformed one left out)."""
    malformed: int


def _produce(settings: Settings, records: list[Record], options: LearnerOptions) -> None:
    names = {FRAUD_SCORES: options.score_topic, FRAUD_LABELS: options.label_topic}
    with EventProducer(settings, topic_names=names) as producer:
        for topic, record, key in records:
            producer.produce(topic, record, key=key)
    raw = Producer(settings.kafka_config())
    raw.produce(options.label_topic, value=b"not avro: a broken producer", key=b"c-bad")
    assert raw.flush(30) == 0


def read_back(settings: Settings, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every message of ``topic`` as (partition, offset, key, value), to the log end."""
    ends = {p: high for p, (_, high) in log_end_offsets(settings, topic).items()}
    consumer = Consumer(
        settings.kafka_config(**{"group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    out = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p, high in ends.items() if high > 0])
        remaining = {p for p, high in ends.items() if high > 0}
        deadline = time.monotonic() + 60
        while remaining:
            assert time.monotonic() < deadline, f"{topic} not read to its end"
            for m in consumer.consume(1_000, 0.5):
                assert m.error() is None, m.error()
                partition, offset = m.partition(), m.offset()
                assert partition is not None and offset is not None
                out.append((partition, offset, m.key(), m.value()))
                if offset + 1 >= ends[partition]:
                    remaining.discard(partition)
    finally:
        consumer.close()
    return out


@pytest.fixture(scope="module")
def topic_sets(stack: Settings, scenario: Scenario) -> Iterator[dict[str, TopicSet]]:
    """The scenario on fresh topics: "base" and "dup" (with re-deliveries), each with a dead-letter topic."""
    suffix = uuid.uuid4().hex[:8]
    made: dict[str, TopicSet] = {}
    names: list[str] = []
    serde = AvroSerde(stack.schema_registry_url)
    for name, records in (("base", scenario.base), ("dup", scenario.dup)):
        options = LearnerOptions(
            max_out_of_orderness_ms=stack.stream.max_out_of_orderness_ms,
            label_hold_ms=stack.model.label_hold_ms,
            score_topic=f"test-learner-{suffix}-{name}-scores",
            label_topic=f"test-learner-{suffix}-{name}-labels",
            dead_letter_topic=f"test-learner-{suffix}-{name}-dead",
        )
        specs = [
            TopicSpec(options.score_topic, "learner test", partitions=SCORE_PARTITIONS),
            TopicSpec(options.label_topic, "learner test", partitions=LABEL_PARTITIONS),
            TopicSpec(options.dead_letter_topic, "learner test", partitions=1),
        ]
        ensure_topics(stack, specs)
        names.extend(s.name for s in specs)
        _produce(stack, records, options)
        log, malformed = [], 0
        for catalog, physical in ((FRAUD_SCORES, options.score_topic), (FRAUD_LABELS, options.label_topic)):
            for partition, offset, _, value in read_back(stack, physical):
                if value is not None and value.startswith(b"not avro"):
                    malformed += 1
                    continue
                log.append(LogRecord(catalog, partition, offset, serde.decode(catalog, value)))
        assert len(log) == len(records) and malformed == 1
        made[name] = TopicSet(options, log, malformed)
    yield made
    admin = admin_client(stack)
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result()


def learner_settings(stack: Settings, checkpoint_every: int = 500) -> Settings:
    settings = stack.model_copy(deep=True)
    settings.model.checkpoint_every = checkpoint_every
    return settings


@pytest.fixture(scope="module")
def store(stack: Settings) -> Iterator[RedisModelStore]:
    """A Redis model store of this module's own (a key prefix no other test uses)."""
    store = RedisModelStore.from_url(stack.redis_url, prefix=f"hw:test-learner-{uuid.uuid4().hex[:8]}")
    yield store
    store.close()


@pytest.fixture(scope="module")
def whole(stack: Settings, topic_sets: dict[str, TopicSet], store: RedisModelStore) -> LearnReport:
    """One uninterrupted run over the "dup" topics, to the log end."""
    return run_learner(
        learner_settings(stack),
        lineage="whole",
        until_end=True,
        options=topic_sets["dup"].options,
        store=store,
    )


def model_of(store: ModelStore, version: str) -> FraudModel:
    return FraudModel.from_bytes(store.load(version))


@pytest.mark.stack
def test_the_job_learns_what_an_independent_count_says(
    stack: Settings,
    topic_sets: dict[str, TopicSet],
    whole: LearnReport,
    store: RedisModelStore,
    scenario: Scenario,
) -> None:
    dup = topic_sets["dup"]
    expected = expected_outcome(
        dup.log, stack.stream.max_out_of_orderness_ms, stack.model.label_hold_ms, DEFAULT_LEGIT_AFTER_MS
    )
    counts = expected["counts"]
    got = asdict(whole.counters)
    assert {name: got[name] for name in counts} == counts
    assert counts["labels_learned"] > 150 and counts["implied_legit"] > 500 and counts["late_scores"] > 0
    assert (
        counts["labels_settled"] == 2 and counts["fraud_labels_settled"] == 1
    )  # after implied legit, relabel
    assert got["malformed"] == 1 and got["records"] == len(dup.log)
    # Versions: every 500 records and at the end; offsets at the log end; metrics present.
    versions = store.versions("whole")
    assert len(versions) == len(dup.log) // 500 + 1 == len(whole.saved)
    last = versions[-1]
    ends = {
        t: {p: high for p, (_, high) in log_end_offsets(stack, t).items()}
        for t in (dup.options.score_topic, dup.options.label_topic)
    }
    assert last.offsets == ends
    assert last.metrics[DRAINED] == 1.0 and all(v.metrics[DRAINED] == 0.0 for v in versions[:-1])
    for name in ("auc", "ap", "recent_auc", "recent_ap", "drift_events", "labels_per_s", "labels_learned"):
        assert name in last.metrics, name
    assert last.metrics["labels_learned"] == counts["labels_learned"]
    # served_auc is that of the logged probabilities against the labels learned; auc, the learner's own
    # progressive predictions', is checked bit for bit by the core-level test above.
    learned_pairs = _learned_pairs(dup.log, expected)
    y = np.array([fraud for _, fraud in learned_pairs])
    p = np.array([prob for prob, _ in learned_pairs])
    assert last.metrics["served_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert 0.5 < last.metrics["auc"] <= 1.0
    assert store.live() is None, "a lineage that is not live is never promoted"


def _learned_pairs(log: list[LogRecord], expected: dict[str, Any]) -> list[tuple[float, bool]]:
    """(probability the transaction was scored with, label) of every label learned."""
    first_score: dict[str, float] = {}
    for r in sorted(log, key=lambda r: (r.partition, r.offset)):
        if r.topic == FRAUD_SCORES:
            first_score.setdefault(r.event["transaction_id"], r.event["fraud_probability"])
    return [(first_score[tid], fraud) for tid, fraud in expected["learned_labels"]]


@pytest.mark.stack
def test_label_features_count_only_labels_known_by_then(
    stack: Settings, topic_sets: dict[str, TopicSet], whole: LearnReport, store: RedisModelStore
) -> None:
    assert whole.last is not None
    model = model_of(store, whole.last.version)
    log = topic_sets["dup"].log
    # A label counts for the merchant of a transaction the learner has seen (a score not late).
    seen = expected_outcome(
        log, stack.stream.max_out_of_orderness_ms, stack.model.label_hold_ms, DEFAULT_LEGIT_AFTER_MS
    )["score_time"]
    merchant_of = {
        r.event["transaction_id"]: r.event["merchant_id"]
        for r in log
        if r.topic == FRAUD_SCORES and r.event["transaction_id"] in seen
    }
    labels = sorted((r.event for r in log if r.topic == FRAUD_LABELS), key=lambda e: e["label_time"])

    def independent(merchant: str, card: str, as_of: int) -> dict[str, Any]:
        latest: dict[str, dict[str, Any]] = {}
        for lab in labels:  # the latest label of each transaction known at as_of, within 30 days
            if as_of - 30 * DAY_MS < lab["label_time"] <= as_of:
                latest[lab["transaction_id"]] = lab
        of_merchant = [lab for tid, lab in latest.items() if merchant_of.get(tid) == merchant]
        fraud = sum(lab["is_fraud"] for lab in of_merchant)
        return {
            "merchant_labels_30d": len(of_merchant),
            "merchant_fraud_labels_30d": fraud,
            "merchant_fraud_rate_30d": fraud / len(of_merchant) if of_merchant else None,
            "card_fraud_labels_30d": sum(
                lab["is_fraud"] for lab in latest.values() if lab["card_id"] == card
            ),
        }

    checked = changed = 0
    for lab in labels[-60:]:
        merchant = merchant_of.get(lab["transaction_id"], "unknown-merchant")
        for as_of in (lab["label_time"] - 1, lab["label_time"]):
            got = model.label_features.features(merchant, lab["card_id"], as_of=as_of)
            assert got == independent(merchant, lab["card_id"], as_of), (lab, as_of)
            checked += 1
        changed += got != independent(merchant, lab["card_id"], lab["label_time"] - 1)
    assert checked == 120 and changed > 30, "a label must count from its label_time, not a millisecond before"


@pytest.mark.stack
def test_held_labels_are_learned_or_dead_lettered_with_their_reason(
    stack: Settings, topic_sets: dict[str, TopicSet], whole: LearnReport, scenario: Scenario
) -> None:
    dup = topic_sets["dup"]
    counts = expected_outcome(
        dup.log, stack.stream.max_out_of_orderness_ms, stack.model.label_hold_ms, DEFAULT_LEGIT_AFTER_MS
    )["counts"]
    c = whole.counters
    assert c.held_labels_learned == counts["held_labels_learned"] >= 2  # the label before, the same-ms one
    assert c.labels_dead_lettered == counts["labels_dead_lettered"] >= 1  # ghost-1 (and late scores' labels)
    serde = AvroSerde(stack.schema_registry_url)
    letters = {}
    for _, _, key, value in read_back(stack, dup.options.dead_letter_topic):
        assert key is not None
        letters[key] = serde.decode(DEAD_LETTER, value)  # repeats (one per run) share a key
    by_type = Counter(letter["error_type"] for letter in letters.values())
    assert by_type == {
        "late": c.late_scores + c.late_labels,
        "no_score_for_label": c.labels_dead_lettered,
        "undecodable": 1,
    }
    ghost = [
        letter for letter in letters.values()
        if letter["error_type"] == "no_score_for_label" and "transaction ghost-1 " in letter["error"]
    ]  # fmt: skip
    assert len(ghost) == 1
    assert ghost[0]["error"].startswith("no score for transaction ghost-1 within 1h of its label")
    assert ghost[0]["source_topic"] == dup.options.label_topic and ghost[0]["original"]
    for tid in (scenario.before, scenario.same_ms):
        assert not any(f"transaction {tid} " in letter["error"] for letter in letters.values())


@pytest.mark.stack
def test_stopped_at_offsets_and_resumed_equals_one_run(
    stack: Settings,
    topic_sets: dict[str, TopicSet],
    whole: LearnReport,
    store: RedisModelStore,
    scenario: Scenario,
) -> None:
    options = topic_sets["dup"].options
    settings = learner_settings(stack, checkpoint_every=300)
    middle = {
        topic: {p: high * 11 // 20 for p, (_, high) in log_end_offsets(stack, topic).items()}
        for topic in (options.score_topic, options.label_topic)
    }
    first = run_learner(settings, lineage="stop", until=middle, options=options, store=store)
    assert first.offsets == middle and first.last is not None and first.last.metrics[DRAINED] == 1.0
    second = run_learner(settings, lineage="stop", until_end=True, store=store)
    assert second.resumed_from == first.last.version and second.records == whole.records - first.records
    assert asdict(second.counters) == asdict(whole.counters)
    assert whole.last is not None and second.last is not None
    assert verify_versions(store, whole.last.version, second.last.version, probes(scenario)).identical
    # A re-run with nothing new saves nothing; a lineage past the requested end refuses to go back.
    assert run_learner(settings, lineage="stop", until_end=True, store=store).saved == []
    with pytest.raises(LearnerJobError, match="past the requested end"):
        run_learner(settings, lineage="stop", until=middle, store=store)


@pytest.mark.stack
@pytest.mark.slow
def test_killed_mid_run_and_resumed_equals_one_run(
    stack: Settings, topic_sets: dict[str, TopicSet], whole: LearnReport, store: RedisModelStore,
    scenario: Scenario, tmp_path: Path,
) -> None:  # fmt: skip
    options = topic_sets["dup"].options
    settings = learner_settings(stack, checkpoint_every=200)
    settings.model.store = "file"
    settings.model.directory = tmp_path / "models"
    files = FileModelStore(settings.model.directory)
    # Start the lineage in-process (it fixes the lineage's topics), then let the CLI tail it.
    start = {
        options.score_topic: dict.fromkeys(range(SCORE_PARTITIONS), 50),
        options.label_topic: dict.fromkeys(range(LABEL_PARTITIONS), 2),
    }
    run_learner(settings, lineage="crash", until=start, options=options, store=files)
    env = os.environ | settings_env(settings) | {"PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "highwater.cli", "learn", "--lineage", "crash"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while len(files.versions("crash")) < 4:
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the learner subprocess saved no versions"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    killed_at = files.latest("crash")
    assert killed_at is not None and sum(sum(p.values()) for p in killed_at.offsets.values()) < len(
        topic_sets["dup"].log
    )
    resumed = run_learner(settings, lineage="crash", until_end=True, store=files)
    assert resumed.resumed_from == killed_at.version
    assert asdict(resumed.counters) == asdict(whole.counters)
    assert whole.last is not None and resumed.last is not None
    comparison = compare_models(
        model_of(store, whole.last.version), model_of(files, resumed.last.version), probes(scenario)
    )
    assert comparison.identical, comparison.differences[:5]


@pytest.mark.stack
def test_a_replay_up_to_a_live_version_rebuilds_it(
    stack: Settings, topic_sets: dict[str, TopicSet], scenario: Scenario
) -> None:
    options = topic_sets["dup"].options
    settings = learner_settings(stack, checkpoint_every=700)
    store = RedisModelStore.from_url(stack.redis_url, prefix=f"hw:test-learner-live-{uuid.uuid4().hex[:8]}")
    try:
        live = run_learner(settings, lineage="main", until_end=True, options=options, store=store)
        assert live.last is not None and store.live() == live.last  # the live lineage promotes
        middle = store.versions("main")[2]
        assert middle.metrics[DRAINED] == 0.0
        for lineage, version in (("r1", live.last), ("r2", middle)):
            replayed = replay_model(settings, lineage, until=version.version, store=store)
            assert replayed.last is not None and replayed.last.offsets == version.offsets
            assert replayed.last.metrics[DRAINED] == version.metrics[DRAINED]
            result = verify_versions(store, version.version, replayed.last.version, probes(scenario))
            assert result.identical and result.probes == len(probes(scenario))
            assert store.live() == live.last, "a replay never promotes"
        # The versions differ from each other, so verify can tell models apart.
        assert not verify_versions(store, middle.version, live.last.version, probes(scenario)).identical
        with pytest.raises(LearnerJobError, match="live learner"):
            replay_model(settings, "main", until=live.last.version, store=store)
    finally:
        store.close()


@pytest.mark.stack
def test_re_delivered_scores_change_nothing(
    stack: Settings,
    topic_sets: dict[str, TopicSet],
    whole: LearnReport,
    store: RedisModelStore,
    scenario: Scenario,
) -> None:
    base = run_learner(
        learner_settings(stack),
        lineage="base",
        until_end=True,
        options=topic_sets["base"].options,
        store=store,
    )
    assert whole.last is not None and base.last is not None
    assert verify_versions(store, base.last.version, whole.last.version, probes(scenario)).identical
    with_dups, without = asdict(whole.counters), asdict(base.counters)
    assert with_dups.pop("duplicate_scores") == scenario.duplicates and without.pop("duplicate_scores") == 0
    assert with_dups.pop("records") == without.pop("records") + scenario.duplicates
    assert with_dups == without


@pytest.mark.stack
def test_cli_learns_replays_and_verifies(
    stack: Settings,
    topic_sets: dict[str, TopicSet],
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    directory = tmp_path / "models"
    for name, value in {"STORE": "file", "DIRECTORY": str(directory), "CHECKPOINT_EVERY": "1000"}.items():
        monkeypatch.setenv(f"HIGHWATER_MODEL__{name}", value)
    options = topic_sets["base"].options
    settings = learner_settings(stack, checkpoint_every=1_000)
    files = FileModelStore(directory)
    start = {
        options.score_topic: dict.fromkeys(range(SCORE_PARTITIONS), 100),
        options.label_topic: dict.fromkeys(range(LABEL_PARTITIONS), 5),
    }
    run_learner(settings, lineage="cli", until=start, options=options, store=files)  # fixes its topics
    runner = CliRunner()
    learned = runner.invoke(app, ["learn", "--until-end", "--lineage", "cli"])
    assert learned.exit_code == 0, learned.output
    last = files.latest("cli")
    assert last is not None and f'"resumed_from": "{files.versions("cli")[0].version}"' in learned.output
    replayed = runner.invoke(app, ["models", "replay", "--lineage", "cli-r", "--until", last.version])
    assert replayed.exit_code == 0, replayed.output
    copy = files.latest("cli-r")
    assert copy is not None and copy.offsets == last.offsets
    same = runner.invoke(app, ["models", "verify", last.version, copy.version])
    assert same.exit_code == 0, same.output
    assert f"versions {last.version} and {copy.version} on 1000 probe(s): identical" in same.output
    earlier = files.versions("cli")[1]
    different = runner.invoke(app, ["models", "verify", earlier.version, last.version])
    assert different.exit_code == 1 and "difference(s)" in different.output
    unknown = runner.invoke(app, ["models", "verify", "999", last.version])
    assert unknown.exit_code == 2 and "unknown model version '999'" in unknown.output
