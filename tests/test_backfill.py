"""Backfill on the real local stack: a feature added to the definitions is computed over the whole log by
a replay into a new generation, while the live generation stays untouched and is still read correctly
by the new code (by the layout it was created with) until the replay is promoted.

"New code" is a registry with one more merchant feature, defined first so that it also moves the
positions of the merchant's existing fields: reading an old generation by the new code's layout would
misread every merchant sum.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from highwater.bootstrap import bootstrapped_stack
from highwater.settings import Settings
from highwater.stack.env import isolated_settings
from replay.generations import list_generations, live_generation, promote
from replay.replay import replay
from replay.verify import verify
from schemas.catalog import TRANSACTIONS
from serving.client import FeatureClient, FeatureServiceError
from serving.server import build_server
from sinks.online import FeatureNotHeldError
from sinks.redis_online import RedisOnlineStore
from streams.features import ENTITIES, FEATURES, REGISTRY, Aggregation, Feature, FeatureRegistry
from streams.job import run_job
from streams.producer import EventProducer
from streams.synthetic import SyntheticStream
from tests.oracle import Expected, assert_matches, classify_log, expected_features, read_topic
from tests.state import online_state

pytestmark = [pytest.mark.stack, pytest.mark.slow]

COUNT = 4_000
ADDED = Feature(
    "merchant_distinct_cards_1h",
    "merchant",
    Aggregation.DISTINCT_COUNT,
    timedelta(hours=1),
    "card_id",
    "Distinct cards at the merchant in the last hour.",
)
NEW_CODE = FeatureRegistry(ENTITIES, [ADDED, *FEATURES])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """g1, live: built by the old code from the log's first half, then by the new code from the rest."""
    settings = isolated_settings(tmp_path_factory.mktemp("backfill"))
    settings.stream.batch_size = 400
    with bootstrapped_stack(settings):
        stream = SyntheticStream(seed=17, count=COUNT, disorder_ms=3_000, late_share=0.01)
        deliveries = [(d.topic, d.record) for d in stream.deliveries()]
        half = len(deliveries) // 2
        producer = EventProducer(settings)
        assert not producer.produce_many(deliveries[:half]).rejected
        run_job(until_end=True, settings=settings, show_progress=False)  # the old code
        assert not producer.produce_many(deliveries[half:]).rejected
        run_job(until_end=True, settings=settings, show_progress=False, registry=NEW_CODE)  # redeployed
        yield settings


@pytest.fixture(scope="module")
def expected(live: Settings) -> Expected:
    return classify_log(live, read_topic(live, TRANSACTIONS))


def _served(store: RedisOnlineStore, ids: list[str], features: list[Feature], as_of: int) -> dict[str, Any]:
    rows = store.read("merchant", ids, [f.name for f in features], as_of).rows
    return {i: {name: value.value for name, value in row.items()} for i, row in zip(ids, rows, strict=True)}


def _as_of_times(store: RedisOnlineStore) -> list[int]:
    clock = store.clock_ms()
    assert clock is not None
    return [clock, clock - 3_600_000, clock - 7 * 3_600_000]


def test_new_code_keeps_and_reads_the_live_generation_by_its_own_layout(
    live: Settings, expected: Expected
) -> None:
    store = RedisOnlineStore.from_settings(live, NEW_CODE, follow_live=True)
    assert store.held_layouts()["merchant"] == REGISTRY.layout("merchant")
    assert NEW_CODE.layout("merchant").fields == ("card_id", "amount")  # what a misread would use
    old_features = REGISTRY.features_of("merchant")
    ids = sorted(expected.applied["merchant_id"].unique())
    for as_of in _as_of_times(store):
        want = expected_features(expected.applied, "merchant_id", old_features, as_of)
        assert_matches(_served(store, ids, old_features, as_of), want, f"g1 by new code @ {as_of}")
    with pytest.raises(FeatureNotHeldError, match="'card_id' is not among the fields"):
        store.read("merchant", ids[:1], [ADDED.name])


def test_the_server_refuses_a_feature_the_live_generation_lacks(live: Settings) -> None:
    store = RedisOnlineStore.from_settings(live, NEW_CODE, follow_live=True)
    server = build_server(live.model_copy(update={"grpc_port": 0}), store, registry=NEW_CODE)
    server.start()
    try:
        with FeatureClient(server.target) as client:
            with pytest.raises(FeatureServiceError) as refused:
                client.get_online_features("merchant", ["m-1"], [ADDED.name, "merchant_txn_count_1h"])
            old = client.get_online_features("merchant", ["m-1"], ["merchant_txn_count_1h"])
    finally:
        server.stop(None)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert ADDED.name in refused.value.details and "'g1'" in refused.value.details
    assert old.rows[0].entity_id == "m-1"


def test_a_replay_backfills_the_added_feature_and_promotion_serves_it(
    live: Settings, expected: Expected
) -> None:
    before = online_state(live, "g1")

    replay(live, "g2", show_progress=False, registry=NEW_CODE)

    assert online_state(live, "g1") == before, "the replay touched the live generation"
    assert live_generation(live) == "g1"
    replayed = RedisOnlineStore.from_settings(live.for_generation("g2"), NEW_CODE)
    assert replayed.held_layouts()["merchant"] == NEW_CODE.layout("merchant")
    features = NEW_CODE.features_of("merchant")
    ids = sorted(expected.applied["merchant_id"].unique())
    for as_of in _as_of_times(replayed):
        want = expected_features(expected.applied, "merchant_id", features, as_of)
        assert_matches(_served(replayed, ids, features, as_of), want, f"g2 @ {as_of}")

    report = verify(live, "g1", "g2", registry=NEW_CODE, progress=False)
    assert any(f"feature {ADDED.name} not compared: held by g2 only" in note for note in report.notes)
    assert report.totals["online.feature"] == 0, report.differences[:5]

    listed = {info.name: info for info in list_generations(live, NEW_CODE)}
    assert listed["g1"].unheld == [ADDED.name] and listed["g2"].unheld == []

    promote(live, "g2")
    serving = RedisOnlineStore.from_settings(live, NEW_CODE, follow_live=True)
    answer = serving.read("merchant", ids, [ADDED.name])
    assert answer.generation == "g2"
    want = expected_features(expected.applied, "merchant_id", [ADDED], answer.as_of_ms)
    assert_matches(
        {i: {ADDED.name: row[ADDED.name].value} for i, row in zip(ids, answer.rows, strict=True)},
        want,
        "served after promotion",
    )
