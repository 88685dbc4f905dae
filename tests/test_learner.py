"""The online fraud learner, label features, delayed-label training and the quality helpers (no stack).

What must hold: the same ordered inputs give the same model (replays, checkpoints); nulls and categories
are handled; a label counts only from its label_time on; imbalance handling changes what is learned;
ADWIN reports an abrupt concept change; ``top_reasons`` names the feature that drives a score; the
point-in-time features follow docs/features.md at the window edges.
"""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import numpy as np
import pandas as pd
import pytest

from streams.learner import (
    DAY_MS,
    DelayedLabelTrainer,
    FraudLearner,
    LabelFeatures,
    encode,
)
from streams.quality import EvaluationData, auc_ap, point_in_time_features, training_labels

MINUTE_MS = 60_000


def sample(rng: random.Random, fraud: bool) -> dict[str, Any]:
    """A transaction-like feature dict where frauds are large, online and bursty."""
    return {
        "amount": rng.lognormvariate(6.5 if fraud else 3.0, 0.5),
        "card_txn_count_1h": rng.randint(3, 9) if fraud else rng.randint(1, 3),
        "card_amount_avg_7d": rng.lognormvariate(3.0, 0.5) if rng.random() < 0.9 else None,
        "channel": "ecom" if fraud or rng.random() < 0.2 else "pos",
        "noise": rng.gauss(0.0, 1.0),
    }


def stream(seed: int, n: int, fraud_share: float = 0.05) -> list[tuple[dict[str, Any], bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        fraud = rng.random() < fraud_share
        out.append((sample(rng, fraud), fraud))
    return out


def probe(seed: int = 99, n: int = 200) -> list[dict[str, Any]]:
    return [x for x, _ in stream(seed, n, fraud_share=0.5)]


def train(learner: FraudLearner, data: list[tuple[dict[str, Any], bool]]) -> FraudLearner:
    for x, y in data:
        learner.learn(x, y)
    return learner


# --- determinism and persistence ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"imbalance": "undersample"},
        {"imbalance": "weight", "fraud_weight": None, "optimizer": "sgd"},
        {"model": "adaptive_tree"},
    ],
    ids=["default", "undersample", "balanced-sgd", "adaptive-tree"],
)
def test_same_ordered_inputs_give_identical_predictions(options: dict[str, Any]) -> None:
    data = stream(1, 3_000)
    a = train(FraudLearner(seed=5, **options), data)
    b = train(FraudLearner(seed=5, **options), data)
    probes = probe()
    first = [a.predict_proba(x) for x in probes]
    assert first == [b.predict_proba(x) for x in probes]
    assert len(set(first)) > 1, "the probe set should get varied scores, or the check proves little"
    assert a.drift_events == b.drift_events


def test_key_order_of_the_input_does_not_change_the_model() -> None:
    data = stream(2, 1_000)
    shuffled = [(dict(reversed(list(x.items()))), y) for x, y in data]
    a, b = train(FraudLearner(), data), train(FraudLearner(), shuffled)
    assert [a.predict_proba(x) for x in probe()] == [b.predict_proba(x) for x in probe()]


def test_a_different_order_gives_a_different_model() -> None:
    """The check above can fail: the model does depend on what it is fed, in order."""
    data = stream(3, 1_000)
    a, b = train(FraudLearner(), data), train(FraudLearner(), list(reversed(data)))
    assert [a.predict_proba(x) for x in probe()] != [b.predict_proba(x) for x in probe()]


def test_pickle_round_trip_keeps_predictions_and_learning_identical() -> None:
    learner = train(FraudLearner(imbalance="undersample", seed=3), stream(4, 2_000))
    restored = FraudLearner.from_bytes(learner.to_bytes())
    via_pickle = pickle.loads(pickle.dumps(learner))
    probes = probe()
    expected = [learner.predict_proba(x) for x in probes]
    assert [restored.predict_proba(x) for x in probes] == expected
    assert [via_pickle.predict_proba(x) for x in probes] == expected
    more = stream(5, 500)
    train(learner, more)
    train(restored, more)  # the restored sampler's random state continues exactly
    assert [restored.predict_proba(x) for x in probes] == [learner.predict_proba(x) for x in probes]


def test_from_bytes_refuses_other_data() -> None:
    with pytest.raises(ValueError, match="not a FraudLearner"):
        FraudLearner.from_bytes(pickle.dumps({"weights": {}}))


# --- nulls and encoding ---------------------------------------------------------------------------------
def test_encode_log_scales_numbers_one_hots_categories_and_flags_nulls() -> None:
    x = encode({"amount": 99.0, "channel": "ecom", "card_amount_avg_7d": None, "rate": float("nan"), "n": 0})
    assert x == {
        "amount": math.log1p(99.0),
        "channel=ecom": 1.0,
        "missing=card_amount_avg_7d": 1.0,
        "missing=rate": 1.0,
        "n": 0.0,
    }
    assert list(x) == sorted(x)
    assert encode({"amount": 9.0, "card_amount_avg_7d": 9.0})["amount_vs_card_avg_7d"] == 0.0
    with pytest.raises(ValueError, match="reserved"):
        encode({"a=b": 1.0})
    with pytest.raises(TypeError):
        encode({"when": object()})


def test_nulls_are_handled_and_their_meaning_is_learned() -> None:
    rng = random.Random(6)
    learner = FraudLearner()
    for _ in range(3_000):
        fraud = rng.random() < 0.1
        # Frauds come from cards without history: their 7-day average is null.
        avg = None if fraud else rng.lognormvariate(3.0, 0.5)
        learner.learn({"amount": rng.lognormvariate(3.0, 0.5), "card_amount_avg_7d": avg}, fraud)
    without = learner.predict_proba({"amount": 20.0, "card_amount_avg_7d": None})
    with_history = learner.predict_proba({"amount": 20.0, "card_amount_avg_7d": 20.0})
    assert 0.0 < with_history < 0.5 < without < 1.0
    assert learner.weights()["missing=card_amount_avg_7d"] > 0
    assert math.isfinite(learner.predict_proba({"amount": None, "card_amount_avg_7d": float("nan")}))
    assert learner.top_reasons({"amount": 20.0, "card_amount_avg_7d": None}, k=1)[0].source == (
        "card_amount_avg_7d"
    )


def test_categories_are_not_scaled_away() -> None:
    """River's StandardScaler would scale an always-1.0 one-hot key to 0; the learner must not."""
    rng = random.Random(7)
    learner = FraudLearner()
    for _ in range(2_000):
        fraud = rng.random() < 0.2
        learner.learn({"mcc": "5732" if fraud else rng.choice(["5411", "5812"]), "amount": 10.0}, fraud)
    assert learner.predict_proba({"mcc": "5732", "amount": 10.0}) > 0.9
    assert learner.predict_proba({"mcc": "5411", "amount": 10.0}) < 0.1


# --- imbalance ------------------------------------------------------------------------------------------
def test_imbalance_handling_raises_the_scores_of_the_rare_class() -> None:
    data = stream(8, 4_000, fraud_share=0.01)
    frauds = [x for x, y in stream(9, 2_000, fraud_share=0.5) if y]
    mean_score = {}
    for name, options in {
        "none": {"imbalance": "none"},
        "weight": {"imbalance": "weight", "fraud_weight": 5.0},
        "undersample": {"imbalance": "undersample"},
    }.items():
        learner = train(FraudLearner(seed=1, **options), data)
        mean_score[name] = float(np.mean([learner.predict_proba(x) for x in frauds]))
    assert mean_score["weight"] > mean_score["none"] + 0.05
    assert mean_score["undersample"] > mean_score["none"] + 0.05


def test_balanced_weight_follows_the_label_mix() -> None:
    learner = FraudLearner(fraud_weight=None, max_fraud_weight=50.0)
    for x, _ in stream(10, 99):
        learner.learn(x, False)
    assert learner._weight(True) == 50.0  # (99 + 1) / (0 + 1) = 100, clipped
    for x, _ in stream(11, 9):
        learner.learn(x, True)
    assert learner._weight(True) == pytest.approx(100 / 10)
    assert learner._weight(False) == 1.0


# --- drift ----------------------------------------------------------------------------------------------
def test_drift_detector_fires_after_an_abrupt_concept_change() -> None:
    rng = random.Random(11)
    learner = FraudLearner(imbalance="none")
    change_at = 3_000
    for i in range(6_000):
        x = rng.uniform(-1.0, 1.0)
        positive = x > 0
        label = positive if i < change_at else not positive  # the concept flips
        learner.learn({"x": x}, label, at_ms=i)
    assert not [e for e in learner.drift_events if e.rising and e.position <= change_at]
    after = [e for e in learner.drift_events if e.position > change_at]
    assert after, f"no drift reported after the change: {learner.drift_events}"
    first = after[0]
    assert first.position < change_at + 500, first
    assert first.rising and first.error_after > first.error_before
    assert first.at_ms is not None and first.at_ms >= change_at


def test_no_drift_without_a_change_once_learned() -> None:
    rng = random.Random(12)
    learner = FraudLearner(imbalance="none")
    for _ in range(8_000):
        x = rng.uniform(-1.0, 1.0)
        learner.learn({"x": x}, (x > 0) != (rng.random() < 0.05))
    # ADWIN may cut its window while the young model improves (the error falls), never for a rise.
    assert not [e for e in learner.drift_events if e.rising]


# --- explanations ---------------------------------------------------------------------------------------
def test_top_reasons_names_the_feature_that_drives_the_score() -> None:
    rng = random.Random(13)
    learner = FraudLearner()
    for _ in range(4_000):
        fraud = rng.random() < 0.1
        learner.learn(
            {
                "amount": rng.lognormvariate(7.0 if fraud else 3.0, 0.3),
                "merchant_txn_count_1h": rng.randint(0, 50),
                "channel": rng.choice(["pos", "ecom"]),
            },
            fraud,
        )
    features = {"amount": 1500.0, "merchant_txn_count_1h": 20, "channel": "pos"}
    reasons = learner.top_reasons(features, k=2)
    assert reasons[0].feature == "amount" and reasons[0].source == "amount"
    assert reasons[0].value == 1500.0 and reasons[0].contribution > 1.0
    assert reasons[0].contribution >= reasons[1].contribution
    assert (
        learner.top_reasons({"amount": 5.0, "merchant_txn_count_1h": 20, "channel": "pos"}, k=1)[0].feature
        != "amount"
    )
    # The contributions plus the intercept are the score's logit.
    linear = learner._linear
    assert linear is not None
    every = learner.top_reasons(features, k=100)
    logit = sum(r.contribution for r in every) + linear.intercept
    assert 1 / (1 + math.exp(-logit)) == pytest.approx(learner.predict_proba(features))


def test_top_reasons_of_a_tree_model_by_occlusion() -> None:
    rng = random.Random(14)
    learner = FraudLearner(model="adaptive_tree", imbalance="none", seed=1)
    for _ in range(3_000):
        fraud = rng.random() < 0.3
        learner.learn(
            {"amount": rng.uniform(500, 900) if fraud else rng.uniform(1, 100), "noise": rng.random()}, fraud
        )
    assert learner.top_reasons({"amount": 800.0, "noise": 0.5}, k=1)[0].feature == "amount"


# --- label features -------------------------------------------------------------------------------------
def test_a_label_counts_only_from_its_label_time() -> None:
    lf = LabelFeatures()
    lf.observe_transaction("t1", merchant_id="m1", card_id="c1", event_time=0)
    lf.observe_transaction("t2", merchant_id="m1", card_id="c2", event_time=10)
    lf.observe_label("t1", is_fraud=True, label_time=3 * DAY_MS, card_id="c1")
    lf.observe_label("t2", is_fraud=False, label_time=4 * DAY_MS, card_id="c2")
    before = lf.features("m1", "c1", as_of=3 * DAY_MS - 1)
    assert before == {
        "merchant_labels_30d": 0,
        "merchant_fraud_labels_30d": 0,
        "merchant_fraud_rate_30d": None,
        "card_fraud_labels_30d": 0,
    }
    at = lf.features("m1", "c1", as_of=3 * DAY_MS)  # label_time <= T counts
    assert at["merchant_fraud_rate_30d"] == 1.0 and at["card_fraud_labels_30d"] == 1
    later = lf.features("m1", "c9", as_of=4 * DAY_MS)
    assert later["merchant_labels_30d"] == 2 and later["merchant_fraud_rate_30d"] == 0.5
    assert later["card_fraud_labels_30d"] == 0
    # 30 days after the label it no longer counts: the window is (T - 30 d, T] over label_time.
    assert lf.features("m1", "c1", as_of=33 * DAY_MS)["merchant_fraud_labels_30d"] == 0
    assert lf.features("m1", "c1", as_of=33 * DAY_MS - 1)["merchant_fraud_labels_30d"] == 1


def test_labels_delivered_out_of_order_and_relabels() -> None:
    lf = LabelFeatures(horizon_ms=10 * DAY_MS)
    lf.observe_transaction("t1", merchant_id="m1", card_id="c1", event_time=0)
    lf.observe_label("t1", is_fraud=False, label_time=5 * DAY_MS)
    lf.observe_label("t1", is_fraud=True, label_time=2 * DAY_MS)  # older, delivered late
    assert lf.features("m1", "c1", as_of=3 * DAY_MS)["merchant_fraud_labels_30d"] == 1
    at_five = lf.features("m1", "c1", as_of=5 * DAY_MS)
    assert at_five["merchant_labels_30d"] == 1 and at_five["merchant_fraud_labels_30d"] == 0
    # A third label between the two, delivered last: each counts until the next one's label_time.
    lf.observe_label("t1", is_fraud=True, label_time=4 * DAY_MS)
    assert lf.features("m1", "c1", as_of=3 * DAY_MS)["merchant_fraud_labels_30d"] == 1
    assert lf.features("m1", "c1", as_of=4 * DAY_MS + 1)["merchant_labels_30d"] == 1
    assert lf.features("m1", "c1", as_of=4 * DAY_MS + 1)["merchant_fraud_labels_30d"] == 1
    assert lf.features("m1", "c1", as_of=5 * DAY_MS)["merchant_fraud_labels_30d"] == 0
    # A label arriving before its transaction waits for it, then counts for the merchant.
    lf.observe_label("t2", is_fraud=True, label_time=6 * DAY_MS, card_id="c2")
    assert lf.labels_waiting == 1
    lf.observe_transaction("t2", merchant_id="m1", card_id="c2", event_time=DAY_MS)
    assert lf.labels_waiting == 0
    assert lf.features("m1", "c2", as_of=6 * DAY_MS)["merchant_fraud_labels_30d"] == 1
    with pytest.raises(ValueError, match="horizon"):
        lf.features("m1", "c1", as_of=-5 * DAY_MS)


def test_trainer_learns_from_the_inputs_kept_at_scoring_time() -> None:
    learner = FraudLearner()
    trainer = DelayedLabelTrainer(learner, LabelFeatures(), legit_after_ms=10 * DAY_MS)
    t1 = {"transaction_id": "t1", "card_id": "c1", "merchant_id": "m1", "event_time": 0}
    t2 = {"transaction_id": "t2", "card_id": "c2", "merchant_id": "m1", "event_time": DAY_MS}
    t3 = {"transaction_id": "t3", "card_id": "c3", "merchant_id": "m1", "event_time": 3 * DAY_MS}
    first = trainer.score(t1, {"amount": 900.0})
    trainer.score(t2, {"amount": 10.0})
    assert trainer.label(
        {"transaction_id": "t1", "card_id": "c1", "is_fraud": True, "label_time": 2 * DAY_MS}
    )
    # t2 was scored before t1's label arrived: its kept inputs do not know that label; t3's do.
    assert trainer._pending["t2"][0]["merchant_fraud_labels_30d"] == 0
    assert trainer.score(t3, {"amount": 10.0}).inputs["merchant_fraud_labels_30d"] == 1
    assert learner.stats.fraud == 1 and learner.stats.legit == 0
    # A duplicate delivery (while pending) changes nothing and gets the first score back.
    kept = trainer._pending["t3"]
    again = trainer.score(t3, {"amount": 5_000.0})
    assert again.inputs["amount"] == 10.0 and again.probability == kept[2]
    assert trainer.stats.duplicates == 1 and first.inputs["amount"] == 900.0
    # Unlabelled t2 is learned as legit strictly after event_time + 10 days.
    trainer.advance(11 * DAY_MS)
    assert learner.stats.legit == 0
    trainer.advance(11 * DAY_MS + 1)
    assert learner.stats.legit == 1 and trainer.stats.learned_implied_legit == 1
    # A fraud label later than that has nothing left to learn from, and is counted.
    assert not trainer.label(
        {"transaction_id": "t2", "card_id": "c2", "is_fraud": True, "label_time": 12 * DAY_MS}
    )
    assert trainer.stats.unmatched_fraud_labels == 1


def test_trainer_replays_identically() -> None:
    def run() -> list[float]:
        rng = random.Random(15)
        trainer = DelayedLabelTrainer(FraudLearner(), LabelFeatures(), legit_after_ms=DAY_MS)
        scores = []
        for i in range(2_000):
            fraud = rng.random() < 0.1
            txn = {
                "transaction_id": f"t{i}",
                "card_id": f"c{i % 50}",
                "merchant_id": f"m{i % 7}",
                "event_time": i * MINUTE_MS,
            }
            scores.append(trainer.score(txn, sample(rng, fraud)).probability)
            if fraud:
                trainer.label(
                    {
                        "transaction_id": f"t{i}",
                        "card_id": txn["card_id"],
                        "is_fraud": True,
                        "label_time": i * MINUTE_MS + 1,
                    }
                )
        return scores

    assert run() == run()


# --- quality helpers ------------------------------------------------------------------------------------
def test_point_in_time_features_window_edges() -> None:
    hour = 3_600_000
    events = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d", "d"],  # d delivered twice: counted once
            "card_id": ["c1", "c1", "c1", "c1", "c1"],
            "merchant_id": ["m1", "m2", "m1", "m3", "m3"],
            "amount": [1.0, 2.0, 4.0, 8.0, 8.0],
            "event_time": [0, hour, 2 * hour, 2 * hour, 2 * hour],
        }
    )
    spine = pd.DataFrame(
        {
            "card_id": ["c1", "c1", "c1", "c9"],
            "merchant_id": ["m1", "m1", "m1", "m1"],
            "event_time": [hour, 2 * hour, 2 * hour + hour, hour],
        }
    )
    out = point_in_time_features(events, spine)
    # At T = 1 h: a (at T - 1 h: excluded from the 1 h window) and b (at T).
    assert out["card_txn_count_1h"].tolist() == [1, 2, 0, 0]
    assert out["card_amount_sum_1h"].tolist() == [2.0, 12.0, 0.0, 0.0]  # c and d at T both count
    assert out["card_txn_count_24h"].tolist() == [2, 4, 4, 0]
    assert out["card_distinct_merchants_24h"].tolist() == [2, 3, 3, 0]
    assert out["card_amount_max_24h"].tolist()[:3] == [2.0, 8.0, 8.0]
    assert math.isnan(out["card_amount_max_24h"].iloc[3])  # max over no events is null
    assert out["card_seconds_since_last_txn"].tolist()[:3] == [0.0, 0.0, 3600.0]
    assert out["merchant_txn_count_1h"].tolist() == [0, 1, 0, 0]


def test_training_labels_use_only_what_was_known_at_the_split() -> None:
    transactions = pd.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t3", "t4", "t5"],
            "card_id": ["c1"] * 5,
            "merchant_id": ["m1"] * 5,
            "amount": [1.0] * 5,
            "event_time": [0, DAY_MS, 2 * DAY_MS, 15 * DAY_MS, 21 * DAY_MS],
        }
    )
    labels = pd.DataFrame(
        {
            "transaction_id": ["t1", "t3"],
            "card_id": ["c1", "c1"],
            "is_fraud": [True, True],
            "label_time": [5 * DAY_MS, 25 * DAY_MS],  # t3's label comes after the split
            "source": ["chargeback"] * 2,
        }
    )
    data = EvaluationData.from_frames(transactions, labels, 0, 30 * DAY_MS)
    known = training_labels(data, 20 * DAY_MS, legit_after_ms=10 * DAY_MS)
    # t1 fraud (known); t2 legit by implication; t3: label unknown at the split, but older than
    # 10 days: legit as far as the split knows; t4 too recent to tell; t5 after the split.
    assert [None if pd.isna(v) else bool(v) for v in known] == [True, False, False, None, None]
    assert data.is_fraud.tolist() == [True, False, True, False, False]


def test_auc_ap_undefined_for_one_class() -> None:
    assert auc_ap(np.array([False, False]), np.array([0.1, 0.2])) == (None, None)
    auc, ap = auc_ap(np.array([False, True, False, True]), np.array([0.1, 0.9, 0.2, 0.8]))
    assert auc == 1.0 and ap == 1.0
