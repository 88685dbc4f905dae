"""The model-quality evaluation on the platform's history: joins, labels known at the split, baselines.

History is written straight into a generation of the offline store from a seeded synthetic stream (35
days, so labels arrive within it); the online predictions are those of an in-memory progressive run
(:func:`streams.quality.progressive_validation`) over the same transactions. The evaluation must line
its predictions up with the right transactions and truth (checked against a direct computation), train
the baselines on what was known at the split only, and draw the plot.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from highwater.settings import Settings
from schemas.catalog import FRAUD_LABELS, TRANSACTIONS
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.offline import HistoryEvent
from streams.learner import DAY_MS, FraudLearner
from streams.model_evaluation import ModelQuality, evaluate, label_features_as_of, plot_auc, truth
from streams.quality import EvaluationData, auc_ap, progressive_validation
from streams.synthetic import SyntheticStream

pytestmark = pytest.mark.stack

GEN = "me_eval"


@pytest.fixture(scope="module")
def history(offline_settings: Settings) -> Iterator[tuple[SyntheticStream, EvaluationData]]:
    stream = SyntheticStream(seed=11, count=4_000, span_ms=35 * DAY_MS)
    store = ClickHouseOfflineStore.from_settings(offline_settings)
    try:
        store.drop_generation(GEN)
        store.migrate(GEN)
        events = [
            HistoryEvent(TRANSACTIONS, 0, offset, txn, 0) for offset, txn in enumerate(stream.transactions())
        ]
        events += [
            HistoryEvent(FRAUD_LABELS, 0, offset, label, 0) for offset, label in enumerate(stream.labels())
        ]
        store.write_history(GEN, events)
        yield stream, EvaluationData.from_stream(stream)
    finally:
        store.drop_generation(GEN)
        store.close()


@pytest.fixture(scope="module")
def report(
    offline_settings: Settings, history: tuple[SyntheticStream, EvaluationData]
) -> tuple[ModelQuality, np.ndarray]:
    _, data = history
    run = progressive_validation(data, FraudLearner(seed=0))
    online = pd.DataFrame(
        {"transaction_id": data.transactions["transaction_id"], "probability": run.probability}
    )
    return evaluate(
        offline_settings, online.sample(frac=1.0, random_state=3), generation=GEN
    ), run.probability


def test_online_figures_match_a_direct_computation(
    history: tuple[SyntheticStream, EvaluationData], report: tuple[ModelQuality, np.ndarray]
) -> None:
    _, data = history
    quality, probability = report
    later = data.event_time >= quality.split_ms
    assert quality.transactions == len(data.transactions)
    assert quality.evaluated == int(later.sum())
    assert quality.evaluated_frauds == int(data.is_fraud[later].sum()) > 0
    assert (quality.online_auc, quality.online_ap) == auc_ap(data.is_fraud[later], probability[later])
    assert sum(w.transactions for w in quality.online_windows) == len(data.transactions)


def test_baselines_train_before_the_split_and_beat_chance(report: tuple[ModelQuality, np.ndarray]) -> None:
    quality, _ = report
    assert [b.name for b, _, _ in quality.baselines] == ["scikit-learn LogisticRegression", "LightGBM"]
    for baseline, auc, _ in quality.baselines:
        assert len(baseline.probability) == quality.evaluated
        assert 0 < baseline.train_fraud < baseline.train_rows < quality.transactions
        assert auc is not None and auc > 0.9
    assert quality.best_baseline_auc == max(auc for _, auc, _ in quality.baselines if auc is not None)


def test_label_features_count_only_labels_known_by_then(
    history: tuple[SyntheticStream, EvaluationData],
) -> None:
    _, data = history
    features = label_features_as_of(data.transactions, data.labels)
    labels = data.labels
    for index in range(0, len(data.transactions), 97):
        txn = data.transactions.iloc[index]
        same_card = labels[(labels["card_id"] == txn["card_id"]) & labels["is_fraud"]]
        known = same_card[
            (same_card["label_time"] <= txn["event_time"])
            & (same_card["label_time"] > txn["event_time"] - 30 * DAY_MS)
        ]
        assert features.loc[index, "card_fraud_labels_30d"] == known["transaction_id"].nunique()


def test_truth_is_the_latest_label(history: tuple[SyntheticStream, EvaluationData]) -> None:
    _, data = history
    assert (truth(data.transactions, data.labels) == data.is_fraud).all()


def test_missing_predictions_are_refused(
    offline_settings: Settings, history: tuple[SyntheticStream, EvaluationData]
) -> None:
    _, data = history
    online = pd.DataFrame({"transaction_id": data.transactions["transaction_id"][1:], "probability": 0.5})
    with pytest.raises(ValueError, match="1 transactions of the history have no online prediction"):
        evaluate(offline_settings, online, generation=GEN)


def test_plot_is_written(report: tuple[ModelQuality, np.ndarray], tmp_path: Path) -> None:
    path = plot_auc(report[0], tmp_path / "auc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
