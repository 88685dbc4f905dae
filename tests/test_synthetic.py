"""The synthetic stream: deterministic, valid, bounded disorder, the asked late share, fraud labelled."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import pytest

from schemas.catalog import FRAUD_LABELS, TRANSACTIONS
from schemas.validate import validate_event
from streams.synthetic import (
    ACCOUNT_TAKEOVER,
    CARD_TESTING,
    CITIES,
    COMPROMISED_MERCHANT,
    DAY_MS,
    DEFAULT_START_MS,
    MINUTE_MS,
    SyntheticStream,
)

COUNT = 10_000


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return SyntheticStream(seed=11, count=COUNT, disorder_ms=4_000, late_share=0.01)


def test_same_seed_same_events_in_same_order(stream: SyntheticStream) -> None:
    again = SyntheticStream(seed=11, count=COUNT, disorder_ms=4_000, late_share=0.01)
    assert list(again) == list(stream)


def test_different_seed_different_events() -> None:
    a = SyntheticStream(seed=1, count=500)
    b = SyntheticStream(seed=2, count=500)
    assert a.transactions() != b.transactions()


def test_counts_ids_and_span(stream: SyntheticStream) -> None:
    txns = stream.transactions()
    assert len(txns) == COUNT
    assert len({t["transaction_id"] for t in txns}) == COUNT
    assert all(DEFAULT_START_MS <= t["event_time"] < stream.end_ms for t in txns)
    assert [t["event_time"] for t in txns] == sorted(t["event_time"] for t in txns)
    assert len(stream) == COUNT + len(stream.labels())


def test_every_record_is_valid(stream: SyntheticStream) -> None:
    invalid = [(topic, r, validate_event(topic, r)) for topic, r in stream if validate_event(topic, r)]
    assert invalid == []


def test_on_time_disorder_is_bounded(stream: SyntheticStream) -> None:
    """An on-time transaction is never more than disorder_ms older than one delivered before it."""
    newest = -math.inf
    worst = 0.0
    for d in stream.deliveries():
        if d.topic != TRANSACTIONS:
            continue
        event_time = d.record["event_time"]
        if not d.late:
            worst = max(worst, newest - event_time)
        newest = max(newest, event_time)
    assert 0 < worst <= stream.disorder_ms


def test_late_events_share_and_delay(stream: SyntheticStream) -> None:
    late = [d for d in stream.deliveries() if d.late]
    assert all(d.topic == TRANSACTIONS for d in late)
    assert 0.007 <= len(late) / COUNT <= 0.013
    low, high = stream.late_delay_ms
    for d in late:
        assert low <= d.delivery_ms - d.record["event_time"] <= high + stream.disorder_ms


def test_delivery_order_is_by_delivery_time(stream: SyntheticStream) -> None:
    times = [d.delivery_ms for d in stream.deliveries()]
    assert times == sorted(times)
    labels = [d for d in stream.deliveries() if d.topic == FRAUD_LABELS]
    assert all(d.delivery_ms == d.record["label_time"] for d in labels)
    # Labels known after the last transaction come at the end.
    last_txn = max(i for i, d in enumerate(stream.deliveries()) if d.topic == TRANSACTIONS)
    assert len(stream.deliveries()) - last_txn - 1 > 0


def test_fraud_share_and_scenarios(stream: SyntheticStream) -> None:
    scenarios = stream.scenarios()
    assert 0.01 <= len(scenarios) / COUNT <= 0.03
    assert set(scenarios.values()) == {CARD_TESTING, ACCOUNT_TAKEOVER, COMPROMISED_MERCHANT}


def test_every_fraud_transaction_is_labelled_later(stream: SyntheticStream) -> None:
    by_id = {t["transaction_id"]: t for t in stream.transactions()}
    labels = {label["transaction_id"]: label for label in stream.labels()}
    for txn_id in stream.scenarios():
        label = labels[txn_id]
        assert label["is_fraud"] is True
        assert label["card_id"] == by_id[txn_id]["card_id"]
        assert DAY_MS <= label["label_time"] - by_id[txn_id]["event_time"] <= 10 * DAY_MS
    legit_labels = [label for label in labels.values() if not label["is_fraud"]]
    assert legit_labels and all(label["transaction_id"] not in stream.scenarios() for label in legit_labels)
    assert all(label["source"] == "analyst" for label in legit_labels)


def test_card_testing_bursts_follow_their_rule(stream: SyntheticStream) -> None:
    """4-12 small ecom payments minutes apart from far away, then a large one (the budget may cut one)."""
    by_id = {t["transaction_id"]: t for t in stream.transactions()}
    per_card: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for txn_id, scenario in stream.scenarios().items():
        if scenario == CARD_TESTING:
            per_card[by_id[txn_id]["card_id"]].append(by_id[txn_id])
    bursts: list[list[dict[str, Any]]] = []
    for txns in per_card.values():
        txns.sort(key=lambda t: t["event_time"])
        bursts.append([txns[0]])
        for prev, txn in itertools.pairwise(txns):
            if txn["event_time"] - prev["event_time"] > 30 * MINUTE_MS:
                bursts.append([])
            bursts[-1].append(txn)
    complete = 0
    for burst in bursts:
        assert all(t["channel"] == "ecom" for t in burst)
        assert all(_km_from_europe(t["latitude"], t["longitude"]) > 3_000 for t in burst)
        assert all(0.5 <= t["amount"] <= 5.0 for t in burst[:-1])
        if len(burst) >= 5 and burst[-1]["amount"] >= 150:
            complete += 1
    assert bursts and complete >= len(bursts) - 1


def test_account_takeover_and_compromised_merchant_rules(stream: SyntheticStream) -> None:
    txns = stream.transactions()
    scenarios = stream.scenarios()
    takeovers = [t for t in txns if scenarios.get(t["transaction_id"]) == ACCOUNT_TAKEOVER]
    assert takeovers
    for t in takeovers:
        assert t["channel"] == "ecom" and t["amount"] >= 150
        assert _km_from_europe(t["latitude"], t["longitude"]) > 3_000
    # Victims of a skimmed shop paid there (legitimately) before their fraud began.
    first_fraud: dict[str, int] = {}
    for t in txns:
        if scenarios.get(t["transaction_id"]) == COMPROMISED_MERCHANT:
            first_fraud.setdefault(t["card_id"], t["event_time"])
    shops: dict[str, set[str]] = defaultdict(set)
    for t in txns:
        fraud_at = first_fraud.get(t["card_id"])
        legit_pos = t["transaction_id"] not in scenarios and t["channel"] == "pos"
        if fraud_at is not None and legit_pos and t["event_time"] < fraud_at:
            shops[t["merchant_id"]].add(t["card_id"])
    assert max(len(cards) for cards in shops.values()) >= min(5, len(first_fraud))


def _km_from_europe(lat: float, lon: float) -> float:
    """Great-circle distance to the nearest home city."""

    def km(city_lat: float, city_lon: float) -> float:
        p1, p2 = math.radians(lat), math.radians(city_lat)
        dp, dl = p2 - p1, math.radians(city_lon - lon)
        a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * 6371 * math.asin(math.sqrt(a))

    return min(km(c.lat, c.lon) for c in CITIES)


def test_tiny_stream_has_no_fraud_and_stays_valid() -> None:
    stream = SyntheticStream(seed=3, count=10)
    assert len(stream.transactions()) == 10
    assert stream.scenarios() == {}
    assert all(not validate_event(topic, r) for topic, r in stream)


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="late_share"):
        SyntheticStream(seed=1, count=10, late_share=1.5)
    with pytest.raises(ValueError, match="n_merchants"):
        SyntheticStream(seed=1, count=10, n_merchants=3)
