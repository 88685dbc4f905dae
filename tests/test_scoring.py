"""Scoring on the real stack: online store pending reads, the Scorer, ScoringService over gRPC, the CLI.

The module has a stack of its own (it reads whole topics): a synthetic stream is produced with the
platform's producer and applied by the real stream job. Served features are compared **exactly** with an
independent computation (``tests/oracle.exact_features``: the log decoded on its own, lateness and
duplicates recomputed in pandas, the scored transaction added unless it was applied) as of each
transaction's ``event_time``; scores with ``FraudModel.score`` of the version the server says it used,
loaded from the real model store.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pandas as pd
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

from highwater.bootstrap import bootstrapped_stack
from highwater.settings import Settings, get_settings
from highwater.stack.env import isolated_settings, settings_env
from schemas.catalog import TRANSACTIONS
from serving.protos import scoring_pb2, scoring_pb2_grpc
from serving.scoring_client import Score, ScoringClient, ScoringServiceError
from serving.scoring_service import MAX_BATCH, SERVICE_NAME, value_text
from serving.server import FeatureServer, build_server
from serving.service import SERVICE_NAME as FEATURE_SERVICE_NAME
from serving.timeconv import format_ms
from sinks.online import (
    AppliedEvent,
    AsOfTooOldError,
    EntityUpdate,
    PartitionCheckpoint,
    PendingEvent,
    ReadRequest,
    WriteBatch,
)
from sinks.redis_model_store import RedisModelStore
from sinks.redis_online import RedisOnlineStore
from streams.features import ENTITIES, FEATURES, REGISTRY, FeatureRegistry
from streams.fraud_model import INITIAL_VERSION, FraudModel, initial_model
from streams.job import run_job
from streams.producer import EventProducer
from streams.scorer import EventTimeTooOldError, InvalidTransactionError, Scorer
from streams.synthetic import SyntheticStream
from tests.oracle import Expected, classify_log, exact_features, read_topic

pytestmark = [pytest.mark.stack, pytest.mark.slow]

MIN = 60_000
HOUR = 60 * MIN
CARD_FEATURES = REGISTRY.features_of("card")
MERCHANT_FEATURES = REGISTRY.features_of("merchant")


# --- the stack, the log, the oracle -------------------------------------------------------------------
@dataclass
class World:
    """The module's stack after the stream job applied the synthetic stream."""

    settings: Settings
    transactions: dict[str, dict[str, Any]]
    """Every produced transaction by id, as produced (the scorer's input format)."""
    expected: Expected
    clock_ms: int

    def applied_plus(self, transaction: dict[str, Any]) -> pd.DataFrame:
        """The applied events, plus ``transaction`` when its id was not applied (it is then pending)."""
        applied = self.expected.applied
        if transaction["transaction_id"] in set(applied["transaction_id"]):
            return applied
        return pd.concat([applied, pd.DataFrame([transaction])], ignore_index=True)

    def expected_features(self, transaction: dict[str, Any]) -> dict[str, Any]:
        """Card then merchant features as of the transaction's event_time, itself included."""
        events = self.applied_plus(transaction)
        as_of = transaction["event_time"]
        return exact_features(
            events, "card_id", transaction["card_id"], CARD_FEATURES, as_of
        ) | exact_features(events, "merchant_id", transaction["merchant_id"], MERCHANT_FEATURES, as_of)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = isolated_settings(tmp_path_factory.mktemp("scoring"))
    settings.offline.history = False  # scoring reads Redis only; the job then reads transactions only
    settings.stream.batch_size = 400
    settings.model.refresh_s = 0.1
    stream = SyntheticStream(
        seed=23, count=2_500, span_ms=6 * HOUR, n_cards=40, n_merchants=40, disorder_ms=3_000, late_share=0.01
    )
    records = [d.record for d in stream.deliveries() if d.topic == TRANSACTIONS]
    with bootstrapped_stack(settings):
        report = EventProducer(settings).produce_many((TRANSACTIONS, r) for r in records)
        assert report.ok and report.written == len(records)
        assert run_job(until_end=True, settings=settings, show_progress=False) == len(records)
        expected = classify_log(settings, read_topic(settings, TRANSACTIONS))
        clock = RedisOnlineStore.from_settings(settings).clock_ms()
        assert clock == int(expected.applied["event_time"].max())
        yield World(settings, {r["transaction_id"]: r for r in records}, expected, clock)


@pytest.fixture(scope="module")
def redis_conn(world: World) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(world.settings.redis_url)
    yield client
    client.close()


def _model_store(world: World) -> RedisModelStore:
    """A model store of its own (a fresh key prefix) on the stack's Redis: nothing is live in it yet."""
    client = redis.Redis.from_url(world.settings.redis_url)
    return RedisModelStore(client, prefix=f"test:models:{uuid.uuid4().hex[:8]}", owns_client=True)


def _trained_model(world: World, seed: int, rounds: int) -> FraudModel:
    """A model with non-zero weights and label history, deterministic per (seed, rounds)."""
    model = initial_model(seed)
    ordered = sorted(world.transactions.values(), key=lambda r: (r["event_time"], r["transaction_id"]))
    for i, record in enumerate(ordered[: 60 * rounds]):
        tid, card, merchant = record["transaction_id"], record["card_id"], record["merchant_id"]
        model.label_features.observe_transaction(tid, merchant_id=merchant, card_id=card, event_time=0)
        if i % 5 == 0:
            model.label_features.observe_label(
                tid, is_fraud=i % 10 == 0, label_time=record["event_time"], card_id=card
            )
        inputs = model.inputs(record, {"card_txn_count_1h": i % 7, "card_amount_avg_7d": 40.0 + i % 13})
        model.learner.learn(inputs, record["amount"] > 150 or i % 10 == 0)
    return model


@dataclass
class Running:
    """A started server (FeatureService + ScoringService) whose scorer follows ``models``."""

    server: FeatureServer
    scorer: Scorer
    models: RedisModelStore

    @property
    def target(self) -> str:
        return self.server.target


@pytest.fixture(scope="module")
def running(world: World) -> Iterator[Running]:
    settings = world.settings.model_copy(update={"grpc_port": 0})
    store = RedisOnlineStore.from_settings(settings, follow_live=True)
    models = _model_store(world)
    scorer = Scorer(store, models, refresh_s=0.1)
    server = build_server(settings, store, scorer=scorer)
    server.start()
    try:
        yield Running(server, scorer, models)
    finally:
        server.stop(None)
        scorer.close()
        models.close()


@pytest.fixture()
def client(running: Running) -> Iterator[ScoringClient]:
    with ScoringClient(running.target) as c:
        yield c


def _served_model(running: Running, version: str) -> FraudModel:
    return (
        initial_model() if version == INITIAL_VERSION else FraudModel.from_bytes(running.models.load(version))
    )


def _assert_score(world: World, running: Running, transaction: dict[str, Any], got: Score) -> None:
    """Features exactly as the oracle says; probability, inputs and reasons as FraudModel.score says."""
    want = world.expected_features(transaction)
    assert list(got.features) == list(want), "card features then merchant features, definition order"
    for name, value in want.items():
        served = got.features[name]
        assert served == value and type(served) is type(value), (
            transaction["transaction_id"],
            name,
            served,
            value,
        )
    model = _served_model(running, got.model_version)
    scored = model.score(transaction, want, 3)
    assert got.transaction_id == transaction["transaction_id"]
    assert got.fraud_probability == scored.probability
    assert [(r.feature, r.source, r.contribution) for r in got.reasons] == [
        (r.feature, r.source, r.contribution) for r in scored.reasons
    ]
    assert [r.value for r in got.reasons] == [
        None if r.value is None else value_text(r.value) for r in scored.reasons
    ]
    assert len(got.reasons) == 3


def _promote(running: Running, model: FraudModel) -> str:
    version = running.models.save(model.to_bytes(), None, {}, {}).version
    running.models.promote(version)
    return version


def _wait_for_version(running: Running, version: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while running.scorer.model_version != version:
        assert time.monotonic() < deadline, f"the scorer never switched to version {version}"
        time.sleep(0.02)


# --- transactions to score ----------------------------------------------------------------------------
def _busiest(world: World, key: str) -> str:
    return str(world.expected.applied[key].value_counts().index[0])


def _applied_sample(world: World, count: int) -> list[dict[str, Any]]:
    """Applied transactions spread over the stream (all within the online retention)."""
    ids = list(world.expected.applied.sort_values("event_time")["transaction_id"])
    step = max(1, len(ids) // count)
    return [world.transactions[i] for i in ids[::step][:count]]


def _pending(world: World, suffix: str, **changes: Any) -> dict[str, Any]:
    """A new transaction (never produced) on the busiest card and merchant, near the clock."""
    card, merchant = _busiest(world, "card_id"), _busiest(world, "merchant_id")
    base = next(r for r in world.transactions.values() if r["card_id"] == card)
    record = dict(base, transaction_id=f"pending-{suffix}", merchant_id=merchant, amount=123.25)
    record["event_time"] = world.clock_ms - 7 * MIN
    return record | changes


def _scored_transactions(world: World) -> list[dict[str, Any]]:
    """Applied ones, a late one (never applied: pending forever) and new ones, incl. ties and a new card."""
    applied = world.expected.applied
    card = _busiest(world, "card_id")
    of_card = applied[applied["card_id"] == card].sort_values("event_time")
    tie_time = int(of_card["event_time"].iloc[-2])
    late = world.expected.late
    late_recent = late[late["event_time"] >= world.clock_ms - world.settings.online.retention_ms]
    assert len(late_recent) > 0, "the stream must carry a late transaction to score"
    return [
        *_applied_sample(world, 12),
        world.transactions[str(late_recent["transaction_id"].iloc[0])],
        _pending(world, "a"),
        # The same time as an applied event of the card: ids before and after it in member order.
        _pending(world, "tie-0", transaction_id="0-tie", event_time=tie_time, amount=0.1),
        _pending(world, "tie-z", transaction_id="zz-tie", event_time=tie_time, amount=0.3),
        _pending(world, "after-clock", event_time=world.clock_ms + 30 * MIN),
        _pending(world, "new-card", card_id="card-never-seen", merchant_id="merchant-never-seen"),
    ]


# --- the online store: reads with a pending event -----------------------------------------------------
def _card_event(event_id: str, card: str, at: int, amount: float, merchant: str = "m1") -> AppliedEvent:
    record = {"card_id": card, "merchant_id": merchant, "amount": amount}
    return AppliedEvent(event_id, at, (EntityUpdate("card", card, REGISTRY.payload_of("card", record)),))


def _pending_event(event_id: str, card: str, at: int, amount: float, merchant: str = "m1") -> PendingEvent:
    record = {
        "transaction_id": event_id,
        "card_id": card,
        "merchant_id": merchant,
        "amount": amount,
        "event_time": at,
    }
    return PendingEvent.from_record(record, REGISTRY)


def _store(world: World, registry: FeatureRegistry = REGISTRY) -> RedisOnlineStore:
    return RedisOnlineStore.from_settings(
        world.settings.for_generation(f"p{uuid.uuid4().hex[:10]}"), registry
    )


T0 = 1_772_409_600_000
CARD_NAMES = [f.name for f in CARD_FEATURES]


def test_a_pending_event_reads_as_it_will_once_applied_ties_ordered_by_member(world: World) -> None:
    store = _store(world)
    # Three events at one time: the sum folds them in member order (0.1 + 0.2) + 0.3 = 0.6000000000000001,
    # while the pending one last would give (0.2 + 0.3) + 0.1 = 0.6.
    store.write(WriteBatch([_card_event("m", "c1", T0, 0.2), _card_event("z", "c1", T0, 0.3)]))
    pending = _pending_event("a", "c1", T0, 0.1, merchant="m2")
    with_pending = store.read("card", ["c1", "c2", "c1"], CARD_NAMES, T0, pending).rows
    assert with_pending[0]["card_amount_sum_1h"].value == 0.6000000000000001 != (0.2 + 0.3) + 0.1
    assert with_pending[0]["card_txn_count_5m"].value == 3
    assert with_pending[0]["card_distinct_merchants_24h"].value == 2
    assert with_pending[1]["card_txn_count_24h"].value == 0, "it counts for its own id only"
    assert with_pending[2] == with_pending[0], "a repeated id gets it too"
    store.write(WriteBatch([_card_event("a", "c1", T0, 0.1, merchant="m2")]))
    assert store.read("card", ["c1"], CARD_NAMES, T0).rows[0] == with_pending[0]
    # Applied now: the pending copy is not counted again (nor a different copy with the same id).
    assert store.read("card", ["c1"], CARD_NAMES, T0, pending).rows[0] == with_pending[0]
    other = _pending_event("a", "c1", T0 + 1, 50.0)
    assert store.read("card", ["c1"], CARD_NAMES, T0 + 1, other).rows[0]["card_txn_count_5m"].value == 3


def test_a_pending_event_between_applied_ties_is_summed_in_its_place(world: World) -> None:
    store = _store(world)
    # An earlier event, then ties "a" and "z": the pending "m" folds third. Every other place gives 3.9.
    earlier, tie_a, tie_z = (
        _card_event("e", "c1", T0 - MIN, 0.1),
        _card_event("a", "c1", T0, 0.2),
        _card_event("z", "c1", T0, 0.3),
    )
    store.write(WriteBatch([earlier, tie_a, tie_z]))
    pending = _pending_event("m", "c1", T0, 3.3)
    names = ["card_amount_sum_1h", "card_amount_sum_24h", "card_txn_count_5m"]
    row = store.read("card", ["c1"], names, T0, pending).rows[0]
    assert [row[n].value for n in names] == [0.1 + 0.2 + 3.3 + 0.3, 0.1 + 0.2 + 3.3 + 0.3, 4]
    assert row["card_amount_sum_1h"].value == 3.8999999999999995
    store.write(WriteBatch([_card_event("m", "c1", T0, 3.3)]))
    assert store.read("card", ["c1"], names, T0).rows[0] == row


def test_a_pending_event_counts_only_inside_the_window(world: World) -> None:
    store = _store(world)
    store.write(WriteBatch([_card_event("e1", "c1", T0, 10.0)]))
    names = ["card_txn_count_5m", "card_txn_count_1h", "card_seconds_since_last_txn"]

    def counts(pending_at: int, as_of: int) -> list[Any]:
        row = store.read("card", ["c1"], names, as_of, _pending_event("p", "c1", pending_at, 1.0)).rows[0]
        return [row[n].value for n in names]

    assert counts(T0 + MIN, T0 + MIN) == [2, 2, 0.0]
    assert counts(T0 + MIN + 1, T0 + MIN) == [1, 1, 60.0], "after as_of: not yet"
    assert counts(T0 + MIN - 5 * MIN, T0 + MIN) == [1, 2, 60.0], "exactly as_of - 5 min: out of the 5m window"
    assert counts(T0 - HOUR, T0) == [1, 1, 0.0]
    # In an otherwise empty key, with the same latest-event time a read after its apply would report.
    fresh = store.read("card", ["c9"], names, T0, _pending_event("q", "c9", T0 - 1_500, 1.0)).rows[0]
    assert fresh["card_seconds_since_last_txn"].value == 1.5
    assert fresh["card_txn_count_1h"].latest_event_time_ms == T0 - 1_500


def test_a_pending_event_is_laid_out_as_the_generation_recorded(world: World) -> None:
    # A generation created by code whose card events carry their fields in another order.
    reordered = FeatureRegistry(
        ENTITIES,
        [
            *[f for f in FEATURES if f.entity != "card" or f.field != "amount"],
            *[f for f in FEATURES if f.entity == "card" and f.field == "amount"],
        ],
    )
    assert reordered.layout("card").fields == ("merchant_id", "amount")
    writer = _store(world, reordered)

    def event(event_id: str, amount: float, merchant: str) -> AppliedEvent:
        fields = reordered.payload_of("card", {"amount": amount, "merchant_id": merchant})
        return AppliedEvent(event_id, T0, (EntityUpdate("card", "c1", fields),))

    checkpoint = PartitionCheckpoint("transactions", 0, 2, T0)  # a write with one records the layout
    writer.write(WriteBatch([event("b", 0.2, "m1"), event("c", 0.3, "m3")], [checkpoint]))
    assert writer.held_layouts()["card"].fields == ("merchant_id", "amount")
    # Today's code (amount first) reads it: the pending event must follow the recorded layout.
    reader = RedisOnlineStore.from_settings(world.settings.for_generation(writer.keys.generation))
    names = ["card_amount_sum_1h", "card_amount_max_24h", "card_distinct_merchants_24h"]
    row = reader.read("card", ["c1"], names, T0, _pending_event("a", "c1", T0, 0.1, "m9")).rows[0]
    assert [row[n].value for n in names] == [(0.1 + 0.2) + 0.3, 0.3, 3]


def test_read_many_answers_each_request_or_its_own_error(world: World) -> None:
    store = _store(world)
    store.write(
        WriteBatch([_card_event("e1", "c1", T0, 5.0)], [PartitionCheckpoint("transactions", 0, 1, T0)])
    )
    too_old = T0 - store.retention_ms - 1
    answers = store.read_many(
        [
            ReadRequest("card", ["c1"], ["card_txn_count_1h"], T0, _pending_event("p", "c1", T0, 1.0)),
            ReadRequest("card", ["c1"], ["card_txn_count_1h"], too_old),
            ReadRequest(
                "merchant", ["m1"], ["merchant_txn_count_1h"], T0, _pending_event("p", "c1", T0, 1.0)
            ),
        ]
    )
    first, second, third = answers
    assert not isinstance(first, Exception) and first.rows[0]["card_txn_count_1h"].value == 2
    assert isinstance(second, AsOfTooOldError) and second.as_of_ms == too_old
    assert not isinstance(third, Exception) and third.rows[0]["merchant_txn_count_1h"].value == 1
    assert third.clock_ms == T0


# --- Score and ScoreBatch against the oracle ----------------------------------------------------------
def test_before_any_version_is_live_the_initial_model_scores_as_version_0(world: World) -> None:
    store = RedisOnlineStore.from_settings(world.settings, follow_live=True)
    models = _model_store(world)
    with Scorer(store, models, refresh_s=0) as scorer:
        transaction = _pending(world, "initial")
        result = scorer.score(transaction)
        assert result.model_version == INITIAL_VERSION == "0"
        want = initial_model().score(transaction, world.expected_features(transaction), 3)
        assert (result.fraud_probability, result.inputs, result.reasons) == (
            want.probability,
            want.inputs,
            want.reasons,
        )
        assert result.clock_ms == world.clock_ms and result.event_time_ms == transaction["event_time"]
        # Promoted: the next refresh swaps it in.
        model = _trained_model(world, seed=3, rounds=2)
        version = models.save(model.to_bytes(), None, {}, {}).version
        models.promote(version)
        assert scorer.refresh() is True
        again = scorer.score(transaction)
        assert again.model_version == version
        assert (
            again.fraud_probability
            == model.score(transaction, world.expected_features(transaction)).probability
        )
    models.close()


def test_hot_swap_while_scoring_fails_no_request(world: World, running: Running) -> None:
    transaction = _pending(world, "swap")
    first = _promote(running, _trained_model(world, seed=1, rounds=1))
    _wait_for_version(running, first)
    seen: list[tuple[str, float]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_scoring() -> None:
        with ScoringClient(running.target) as c:
            while not stop.is_set():
                try:
                    got = c.score(transaction)
                    seen.append((got.model_version, got.fraud_probability))
                except BaseException as error:
                    errors.append(error)

    thread = threading.Thread(target=keep_scoring)
    thread.start()
    try:
        time.sleep(0.3)
        second_model = _trained_model(world, seed=2, rounds=4)
        second = _promote(running, second_model)
        deadline = time.monotonic() + 10
        while not any(v == second for v, _ in seen[-5:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    versions = [v for v, _ in seen]
    assert versions[0] == first and versions[-1] == second
    switch = versions.index(second)
    assert set(versions[:switch]) == {first} and set(versions[switch:]) == {second}, "no flip-flop"
    features = world.expected_features(transaction)
    probabilities = {
        first: _served_model(running, first).score(transaction, features).probability,
        second: second_model.score(transaction, features).probability,
    }
    assert probabilities[first] != probabilities[second]
    assert all(p == probabilities[v] for v, p in seen), "every answer is wholly one version's"


def test_score_serves_features_as_of_event_time_with_the_transaction_itself(
    world: World, running: Running, client: ScoringClient
) -> None:
    _wait_for_version(running, _promote(running, _trained_model(world, seed=5, rounds=3)))
    for transaction in _scored_transactions(world):
        _assert_score(world, running, transaction, client.score(transaction))


def test_score_batch_equals_score_per_item(world: World, running: Running, client: ScoringClient) -> None:
    transactions = _scored_transactions(world)
    # The same card twice in one batch: neither is counted in the other's features.
    transactions.append(
        _pending(world, "a-again", transaction_id="pending-b", event_time=world.clock_ms - 6 * MIN)
    )
    batch = client.score_batch(transactions)
    assert batch == [client.score(t) for t in transactions]
    for transaction, got in zip(transactions, batch, strict=True):
        _assert_score(world, running, transaction, got)


def test_scoring_before_or_after_the_apply_gives_the_same_features(
    world: World, running: Running, client: ScoringClient
) -> None:
    # Cards and a merchant of their own, so the other tests' expectations stay as they are.
    base = _pending(world, "x")
    fresh = [
        dict(
            base,
            transaction_id=f"late-apply-{i}",
            card_id=f"card-apply-{i % 2}",
            merchant_id="merchant-apply",
            amount=10.0 + i / 10,
            event_time=world.clock_ms - (5 - i) * MIN,
        )
        for i in range(5)
    ]
    before = [client.score(t) for t in fresh]
    report = EventProducer(world.settings).produce_many((TRANSACTIONS, t) for t in fresh)
    assert report.ok and report.written == len(fresh)
    assert run_job(until_end=True, settings=world.settings, show_progress=False) == len(fresh)
    after = [client.score(t) for t in fresh]
    assert [b.features for b in before] == [a.features for a in after]
    assert [b.fraud_probability for b in before] == [a.fraud_probability for a in after]
    # And both equal the oracle over the log as it is now (they are applied).
    world.expected = classify_log(world.settings, read_topic(world.settings, TRANSACTIONS))
    for transaction, got in zip(fresh, after, strict=True):
        _assert_score(world, running, transaction, got)


def test_the_scorer_api_equals_the_rpc(world: World, running: Running, client: ScoringClient) -> None:
    transactions = _scored_transactions(world)[-4:]
    scorer = Scorer.from_settings(
        world.settings.model_copy(update={"model": world.settings.model.model_copy(update={"refresh_s": 0})})
    )
    try:
        results = scorer.score_batch(transactions)
    finally:
        scorer.close()
    # Scorer.from_settings follows the settings' model store (nothing promoted there): version 0.
    assert {r.model_version for r in results} == {INITIAL_VERSION}
    served = client.score_batch(transactions)
    for result, got in zip(results, served, strict=True):
        assert {n: v.value for n, v in result.features.items()} == got.features
        assert {n: v.latest_event_time_ms for n, v in result.features.items()} == got.latest_event_times_ms


# --- refusals -----------------------------------------------------------------------------------------
def _error(call: Callable[[], object]) -> ScoringServiceError:
    with pytest.raises(ScoringServiceError) as info:
        call()
    return info.value


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"amount": -1.0}, "transaction.amount: must be >= 0, got -1.0"),
        ({"amount": float("nan")}, "transaction.amount: must be finite, got nan"),
        ({"currency": "eur"}, "transaction.currency: must be a 3-letter ISO 4217 code, got 'eur'"),
        ({"currency": None}, "transaction.currency: must be a 3-letter ISO 4217 code, got ''"),
        ({"card_id": ""}, "transaction.card_id: must not be empty"),
        ({"transaction_id": None}, "transaction.transaction_id: must not be empty"),
        (
            {"merchant_id": "m\x1f1"},
            "transaction.merchant_id: must not contain control or separator characters",
        ),
        ({"latitude": 91.0}, "transaction.latitude: must be within [-90, 90], got 91.0"),
        ({"longitude": -181.0}, "transaction.longitude: must be within [-180, 180], got -181.0"),
        ({"event_time": None}, "transaction.event_time: required"),
        ({"event_time": -5}, "transaction.event_time: must be a positive epoch-millis timestamp, got -5"),
    ],
)
def test_invalid_transactions_name_the_field(
    world: World, client: ScoringClient, change: dict[str, Any], expected: str
) -> None:
    transaction = _pending(world, "bad") | change
    error = _error(lambda: client.score(transaction))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(expected), error.details
    batch = [_pending(world, f"ok{i}") for i in range(3)] + [transaction]
    error = _error(lambda: client.score_batch(batch))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(expected.replace("transaction.", "transactions[3].")), error.details


def test_malformed_requests_name_the_field(world: World, running: Running, client: ScoringClient) -> None:
    with grpc.insecure_channel(running.target) as channel:
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(scoring_pb2.ScoreRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "transaction: required"
        bad_nanos = scoring_pb2.Transaction(
            transaction_id="t", card_id="c", customer_id="u", merchant_id="m", amount=1.0, currency="EUR"
        )
        bad_nanos.event_time.seconds, bad_nanos.event_time.nanos = 1_772_409_600, -1
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(scoring_pb2.ScoreRequest(transaction=bad_nanos), timeout=10)
        assert info.value.details() == "transaction.event_time: nanos must be in [0, 999999999], got -1"
    error = _error(lambda: client.score_batch([]))
    assert (error.code, error.details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "transactions: expected 1 to 1000 transactions, got 0",
    )
    too_many = [_pending(world, str(i)) for i in range(MAX_BATCH + 1)]
    error = _error(lambda: client.score_batch(too_many))
    assert error.details == "transactions: expected 1 to 1000 transactions, got 1001"


def test_an_event_time_older_than_the_retention_fails_the_precondition(
    world: World, client: ScoringClient
) -> None:
    retention = world.settings.online.retention_ms
    too_old = world.clock_ms - retention - 1
    error = _error(lambda: client.score(_pending(world, "old", event_time=too_old)))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details.startswith(
        f"transaction.event_time: {format_ms(too_old)} is older than the event-time clock"
    )
    assert (
        f"the earliest servable transaction.event_time is {format_ms(world.clock_ms - retention)}"
        in error.details
    )
    batch = [_pending(world, "fine"), _pending(world, "old", event_time=too_old)]
    error = _error(lambda: client.score_batch(batch))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details.startswith("transactions[1].event_time: ")
    # The scorer raises the store's error, with the position in the batch.
    with Scorer(RedisOnlineStore.from_settings(world.settings), None, refresh_s=0) as scorer:
        with pytest.raises(EventTimeTooOldError) as raised:
            scorer.score_batch(batch)
        assert isinstance(raised.value, AsOfTooOldError) and raised.value.index == 1
        with pytest.raises(InvalidTransactionError) as invalid:
            scorer.score(_pending(world, "x") | {"amount": None})
        assert invalid.value.problems == [("amount", "required, missing")] and invalid.value.index is None


def test_redis_down_is_unavailable(world: World) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    settings = world.settings.model_copy(update={"grpc_port": 0, "redis_url": f"redis://127.0.0.1:{dead}/0"})
    server = build_server(settings, RedisOnlineStore.from_settings(settings, follow_live=True))
    server.start()
    try:
        with ScoringClient(server.target) as c:
            error = _error(lambda: c.score(_pending(world, "down")))
    finally:
        server.stop(None)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.details.startswith("online store unavailable:")
    assert "Traceback" not in error.details


# --- server plumbing and CLI --------------------------------------------------------------------------
def test_health_and_reflection_list_the_scoring_service(world: World) -> None:
    settings = world.settings.model_copy(update={"grpc_port": 0})
    server = build_server(settings, RedisOnlineStore.from_settings(settings, follow_live=True))
    server.start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", FEATURE_SERVICE_NAME, SERVICE_NAME):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = list(
                stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            )
            names = {s.name for s in replies[0].list_services_response.service}
            assert {SERVICE_NAME, FEATURE_SERVICE_NAME, "grpc.health.v1.Health"} <= names
            # The default scorer (the settings' model store) answers too.
            with ScoringClient(server.target) as c:
                assert c.score(_pending(world, "default")).model_version == INITIAL_VERSION
    finally:
        server.graceful_stop(grace_s=1.0)
    reply = server.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), None)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def _cli(running: Running, world: World, *args: str, stdin: str | None = None) -> tuple[int, str]:
    from highwater.cli import app

    env = settings_env(world.settings.model_copy(update={"grpc_target": running.target}))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["score", *args], env=env, input=stdin)
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def test_cli_prints_a_score(world: World, running: Running, client: ScoringClient) -> None:
    transaction = _pending(world, "cli")
    args = [
        "--transaction-id", "cli-1",
        "--card-id", transaction["card_id"],
        "--merchant-id", transaction["merchant_id"],
        "--amount", "123.25",
        "--event-time", format_ms(transaction["event_time"]),
        "--channel", "ecom",
    ]  # fmt: skip
    code, out = _cli(running, world, *args)
    assert code == 0, out
    got = client.score(
        transaction
        | {
            "transaction_id": "cli-1",
            "channel": "ecom",
            "mcc": None,
            "latitude": None,
            "longitude": None,
            "customer_id": "cli",
        }
    )
    probability = f"{got.fraud_probability:.4f}"
    assert f"transaction cli-1: fraud probability {probability} (model version {got.model_version})" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("│ card_")}
    assert rows["card_txn_count_1h"][3] == str(got.features["card_txn_count_1h"])
    assert "top reasons" in out and got.reasons[0].feature in out
    # A JSON array is a batch; errors are one line and exit 2.
    code, out = _cli(
        running,
        world,
        "--json",
        "-",
        stdin='[{"transaction_id": "j1", "card_id": "c", "customer_id": "u", '
        '"merchant_id": "m", "amount": 5, "currency": "EUR", "event_time": "'
        + format_ms(world.clock_ms)
        + '"}]',
    )
    assert code == 0, out
    assert "1 transaction(s) scored" in out and "j1" in out
    code, out = _cli(running, world, "--card-id", "c", "--merchant-id", "m", "--amount", "-3")
    assert code == 2
    assert out.strip() == "error: INVALID_ARGUMENT: transaction.amount: must be >= 0, got -3.0"
    code, out = _cli(running, world, "--card-id", "c")
    assert (
        code == 2
        and out.strip() == "error: --merchant-id, --amount: required (or give the transaction with --json)"
    )
