"""FraudModel: the inputs a score is made from, and that scoring a version never changes it."""

from __future__ import annotations

import pytest

from streams.fraud_model import FraudModel, initial_model
from streams.learner import DAY_MS

TXN = {
    "transaction_id": "t9",
    "card_id": "c1",
    "merchant_id": "m1",
    "event_time": 20 * DAY_MS,
    "amount": 99.5,
    "channel": "ecom",
    "mcc": "5732",
    "currency": "EUR",
    "latitude": -33.9,
    "longitude": 151.2,
}


def trained() -> FraudModel:
    model = initial_model()
    for i in range(40):
        model.label_features.observe_transaction(
            f"t{i}", merchant_id="m1", card_id="c1", event_time=i * DAY_MS // 4
        )
    for i in range(0, 40, 4):
        model.label_features.observe_label(
            f"t{i}", is_fraud=i % 8 == 0, label_time=10 * DAY_MS + i, card_id="c1"
        )
    for i in range(60):
        model.learner.learn({"amount": 10.0 + i % 5, "channel": "pos"}, False)
        model.learner.learn({"amount": 900.0, "channel": "ecom"}, True) if i % 6 == 0 else None
    return model


def test_inputs_are_features_own_fields_cell_and_label_features_as_of_event_time() -> None:
    model = trained()
    inputs = model.inputs(TXN, {"card_txn_count_1h": 2, "merchant_amount_avg_24h": None})
    assert inputs == {
        "card_txn_count_1h": 2,
        "merchant_amount_avg_24h": None,
        "amount": 99.5,
        "channel": "ecom",
        "mcc": "5732",
        "currency": "EUR",
        "geo_cell": "-40:150",
        "merchant_labels_30d": 10,
        "merchant_fraud_labels_30d": 5,
        "merchant_fraud_rate_30d": 0.5,
        "card_fraud_labels_30d": 5,
    }
    before_labels = model.inputs({**TXN, "event_time": 10 * DAY_MS - 1}, {})
    assert before_labels["merchant_labels_30d"] == 0 and before_labels["merchant_fraud_rate_30d"] is None


def test_scoring_never_changes_the_version() -> None:
    model = trained()
    first = model.score(TXN, {"card_txn_count_1h": 2})
    model.score({**TXN, "event_time": 400 * DAY_MS}, {})  # far ahead: must not move anything
    again = model.score(TXN, {"card_txn_count_1h": 2})
    assert again == first
    fresh = trained()  # never scored: what the version was when it was saved
    for day in (11, 15, 20):
        probe = {**TXN, "event_time": day * DAY_MS}
        assert model.score(probe, {"card_txn_count_1h": 1}) == fresh.score(probe, {"card_txn_count_1h": 1})


def test_artifact_round_trip_and_refusal() -> None:
    model = trained()
    copy = FraudModel.from_bytes(model.to_bytes())
    assert copy.score(TXN, {"card_txn_count_1h": 2}) == model.score(TXN, {"card_txn_count_1h": 2})
    with pytest.raises(ValueError, match="not a Highwater fraud model artifact"):
        FraudModel.from_bytes(b"garbage")
