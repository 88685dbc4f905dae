"""Model quality: progressive validation of the online learner against batch baselines, offline.

What ``bench/model_quality.py`` runs, as a library (so tests and notebooks can call the same code):

* :func:`point_in_time_features`: every feature of ``streams.features`` for rows of a spine (card,
  merchant, as-of time T), computed with numpy straight from the transactions, with the semantics of
  ``docs/features.md``: the window (T-W, T], the event at T included, count/sum 0 and max/avg/
  seconds-since-last null over no events, a ``transaction_id`` counted once. Every event counts, late
  ones included, as in a training set (``sinks.training_set``: the complete data). Sums are folded left
  to right in (event_time, transaction_id) order, as the platform does.
  Why not the stack: this evaluation needs the features of every transaction (200k spine rows) and
  nothing of the stack's serving path; computing them here takes seconds, needs no broker or ClickHouse
  on a shared 2-CPU machine, and checks the learner rather than the plumbing (the training set itself
  is checked against pandas by ``bench/training_set.py`` and the tests).
* :func:`model_inputs`: a transaction's inputs to the model: those features plus its own fields
  (amount, channel, mcc, currency and a coarse location cell).
* :func:`progressive_validation`: replays transactions (at ``event_time``) and labels (at
  ``label_time``) in time order through a :class:`streams.learner.DelayedLabelTrainer`: each
  transaction is scored before anything about it is learned, and learned only when its label is known
  (or, unlabelled, once ``legit_after_ms`` has passed).
* :func:`training_labels` and :func:`batch_baselines`: scikit-learn logistic regression and LightGBM
  trained on the earlier period with only the labels known at the split time, then scored on the later
  period with the same inputs the online model had.
* :func:`window_metrics` / :func:`auc_ap`: ROC AUC and average precision overall and per time window.

Example:
    >>> from streams.synthetic import SyntheticStream, DAY_MS
    >>> data = EvaluationData.from_stream(SyntheticStream(seed=3, count=3_000, span_ms=20 * DAY_MS))
    >>> run = progressive_validation(data, FraudLearner(seed=0))
    >>> run.probability.shape == (3_000,)
    True
    >>> auc, ap = auc_ap(data.is_fraud[data.event_time >= data.start_ms + 10 * DAY_MS],
    ...                  run.probability[data.event_time >= data.start_ms + 10 * DAY_MS])
    >>> auc > 0.8
    True
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streams.features import REGISTRY, Aggregation, Feature
from streams.fraud_model import GEO_CELL, TRANSACTION_FIELDS, geo_cell
from streams.learner import (
    DEFAULT_LEGIT_AFTER_MS,
    LABEL_FEATURES,
    DelayedLabelTrainer,
    FraudLearner,
    LabelFeatures,
    TrainerStats,
    encode,
)
from streams.synthetic import SyntheticStream


# --- point-in-time features ---------------------------------------------------------------------------
def point_in_time_features(
    events: pd.DataFrame,
    spine: pd.DataFrame,
    features: Sequence[Feature] | None = None,
    *,
    time_column: str = "event_time",
) -> pd.DataFrame:
    """Each feature as of each spine row's ``time_column`` (epoch ms), from ``events`` (transactions).

    ``events`` needs ``transaction_id``, ``event_time`` and the entity keys and fields the features read;
    ``spine`` needs the entity keys and ``time_column``. Returns one column per feature, index of
    ``spine``: counts and distinct counts as int64, the rest float64 with NaN for null.

    Example:
        >>> ev = pd.DataFrame({"transaction_id": ["a", "b", "c"], "card_id": ["c1"] * 3,
        ...                    "merchant_id": ["m1", "m2", "m1"], "amount": [1.0, 2.0, 4.0],
        ...                    "event_time": [0, 1_000, 3_600_000]})
        >>> out = point_in_time_features(ev, ev, [REGISTRY.feature("card_amount_sum_1h"),
        ...                                      REGISTRY.feature("card_distinct_merchants_24h")])
        >>> out["card_amount_sum_1h"].tolist(), out["card_distinct_merchants_24h"].tolist()
        ([1.0, 3.0, 6.0], [1, 2, 2])
    """
    wanted = list(features) if features is not None else REGISTRY.all_features()
    unique = events.drop_duplicates("transaction_id", keep="first")
    as_of = spine[time_column].to_numpy(np.int64)
    out: dict[str, np.ndarray] = {}
    if unique.empty or spine.empty:
        for f in wanted:
            empty = np.zeros if not f.aggregation.null_when_empty else _nan_array
            out[f.name] = empty(len(spine))
        return pd.DataFrame(out, index=spine.index)
    widest = max(f.window_ms for f in wanted)
    origin = min(int(unique["event_time"].min()), int(as_of.min())) - widest - 1
    stride = max(int(unique["event_time"].max()), int(as_of.max())) - origin + 1
    for entity in REGISTRY.entities():
        mine = [f for f in wanted if f.entity == entity.name]
        if not mine:
            continue
        key = entity.key_field
        ordered = unique.sort_values([key, "event_time", "transaction_id"], kind="mergesort")
        codes, keys = pd.factorize(ordered[key], sort=True)
        times = ordered["event_time"].to_numpy(np.int64)
        # One sorted array for all keys: key code * stride + time, so a window is one searchsorted.
        packed = codes.astype(np.int64) * stride + (times - origin)
        query_codes = pd.Index(keys).get_indexer(spine[key])
        known = query_codes >= 0
        query = query_codes.astype(np.int64) * stride + (as_of - origin)
        for f in mine:
            hi = np.where(known, np.searchsorted(packed, query, side="right"), 0)
            lo = np.where(known, np.searchsorted(packed, query - f.window_ms, side="right"), 0)
            out[f.name] = _aggregate(f, ordered, times, lo, hi, as_of)
    return pd.DataFrame({f.name: out[f.name] for f in wanted}, index=spine.index)


def _nan_array(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def _aggregate(
    f: Feature, ordered: pd.DataFrame, times: np.ndarray, lo: np.ndarray, hi: np.ndarray, as_of: np.ndarray
) -> np.ndarray:
    n = hi - lo
    agg = f.aggregation
    if agg is Aggregation.COUNT:
        return n.astype(np.int64)
    if agg is Aggregation.SECONDS_SINCE_LAST:
        last = times[np.maximum(hi - 1, 0)]
        return np.where(n > 0, (as_of - last) / 1000.0, np.nan)
    assert f.field is not None
    pairs = zip(lo.tolist(), hi.tolist(), strict=True)
    if agg is Aggregation.DISTINCT_COUNT:
        keys = ordered[f.field].tolist()
        return np.fromiter((len(set(keys[a:b])) for a, b in pairs), np.int64, len(n))
    values = ordered[f.field].astype(float).tolist()
    if agg is Aggregation.MAX:
        return np.fromiter((max(values[a:b]) if b > a else math.nan for a, b in pairs), np.float64, len(n))
    # Folded left to right from 0.0 in (event_time, transaction_id) order, as the online store does, so
    # the values are the platform's bit for bit (a prefix-sum difference would be off in the last bits).
    sums = np.fromiter((reduce(operator.add, values[a:b], 0.0) for a, b in pairs), np.float64, len(n))
    if agg is Aggregation.SUM:
        return sums
    return np.where(n > 0, sums / np.maximum(n, 1), np.nan)  # AVG


# --- the evaluation data ----------------------------------------------------------------------------------
@dataclass
class EvaluationData:
    """Transactions in event-time order with their point-in-time features, the labels, the truth."""

    transactions: pd.DataFrame
    features: pd.DataFrame
    labels: pd.DataFrame
    is_fraud: np.ndarray
    """Ground truth per transaction: its latest label says fraud (the generator labels every fraud)."""
    start_ms: int
    end_ms: int

    @property
    def event_time(self) -> np.ndarray:
        """Event time of each transaction (ms)."""
        return self.transactions["event_time"].to_numpy(np.int64)

    @classmethod
    def from_stream(cls, stream: SyntheticStream) -> EvaluationData:
        """The stream's transactions, their features as of their own event_time, and its labels."""
        transactions = pd.DataFrame(stream.transactions())
        labels = pd.DataFrame(
            stream.labels(), columns=["transaction_id", "card_id", "is_fraud", "label_time", "source"]
        )
        return cls.from_frames(transactions, labels, stream.start_ms, stream.end_ms)

    @classmethod
    def from_frames(
        cls, transactions: pd.DataFrame, labels: pd.DataFrame, start_ms: int, end_ms: int
    ) -> EvaluationData:
        """From a transactions frame (any order) and a labels frame; the truth is each transaction's
        latest label (unlabelled = legit)."""
        transactions = transactions.sort_values(["event_time", "transaction_id"], ignore_index=True)
        features = point_in_time_features(transactions, transactions)
        latest = labels.sort_values(["label_time"], kind="mergesort").drop_duplicates(
            "transaction_id", keep="last"
        )
        truth = transactions["transaction_id"].map(latest.set_index("transaction_id")["is_fraud"])
        is_fraud = truth.fillna(False).astype(bool).to_numpy()
        return cls(transactions, features, labels.reset_index(drop=True), is_fraud, start_ms, end_ms)


def model_inputs(data: EvaluationData, *, geo: bool = True) -> list[dict[str, Any]]:
    """Per transaction: its point-in-time features, its own fields, and (``geo``) its location cell.

    Label features are added later, as of the transaction's event_time, by the trainer.
    """
    columns = {name: data.features[name].tolist() for name in data.features.columns}
    for name in TRANSACTION_FIELDS:
        columns[name] = data.transactions[name].tolist()
    if geo:
        columns[GEO_CELL] = [
            geo_cell(lat, lon)
            for lat, lon in zip(data.transactions["latitude"], data.transactions["longitude"], strict=True)
        ]
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


# --- progressive validation ---------------------------------------------------------------------------
@dataclass
class ProgressiveRun:
    """The result of :func:`progressive_validation`."""

    probability: np.ndarray
    """Each transaction's score, made before anything about it was learned."""
    label_features: pd.DataFrame
    """The label features each transaction was scored with (as of its event_time)."""
    learner: FraudLearner
    stats: TrainerStats
    seconds: float


def progressive_validation(
    data: EvaluationData,
    learner: FraudLearner,
    *,
    inputs: Sequence[dict[str, Any]] | None = None,
    legit_after_ms: int | None = DEFAULT_LEGIT_AFTER_MS,
    label_features: bool = True,
    observe_scored: bool = True,
    until_ms: int | None = None,
) -> ProgressiveRun:
    """Predict each transaction at its event_time, learn it when its label is known.

    Events are replayed in time order: labels at ``label_time`` (before a transaction at the same
    millisecond: a label at T is known at T), transactions at ``event_time`` (ties by transaction id).
    ``inputs`` defaults to :func:`model_inputs`; the trainer adds the label features (unless
    ``label_features`` is False); ``observe_scored``: see the trainer. Labels after ``until_ms``
    (default: the last event) are not replayed.
    """
    rows = list(inputs) if inputs is not None else model_inputs(data)
    txns = data.transactions
    ids = txns["transaction_id"].tolist()
    cards, merchants = txns["card_id"].tolist(), txns["merchant_id"].tolist()
    times = data.event_time.tolist()
    labels = data.labels
    label_records: list[dict[str, Any]] = [
        {"transaction_id": t, "card_id": c, "is_fraud": bool(f), "label_time": int(lt)}
        for t, c, f, lt in zip(
            labels["transaction_id"], labels["card_id"], labels["is_fraud"], labels["label_time"], strict=True
        )
    ]
    # (time, kind, order): kind 0 = label before kind 1 = transaction at the same millisecond.
    timeline = [(t, 1, i) for i, t in enumerate(times)]
    timeline += [(int(r["label_time"]), 0, j) for j, r in enumerate(label_records)]
    timeline.sort()
    last = until_ms if until_ms is not None else max(times[-1], 0)
    trainer = DelayedLabelTrainer(
        learner,
        LabelFeatures() if label_features else None,
        legit_after_ms=legit_after_ms,
        observe_scored=observe_scored,
    )
    probability = np.zeros(len(ids))
    kept = np.full((len(ids), len(LABEL_FEATURES)), np.nan)
    started = time.perf_counter()
    for when, kind, index in timeline:
        if kind == 1:
            transaction = {
                "transaction_id": ids[index],
                "card_id": cards[index],
                "merchant_id": merchants[index],
                "event_time": when,
            }
            scored = trainer.score(transaction, rows[index])
            probability[index] = scored.probability
            if label_features:
                kept[index] = [_as_float(scored.inputs[name]) for name in LABEL_FEATURES]
        elif when <= last:
            trainer.label(label_records[index])
    trainer.advance(last)
    seconds = time.perf_counter() - started
    return ProgressiveRun(
        probability=probability,
        label_features=pd.DataFrame(kept, columns=list(LABEL_FEATURES)),
        learner=learner,
        stats=trainer.stats,
        seconds=seconds,
    )


def _as_float(value: Any) -> float:
    return math.nan if value is None else float(value)


# --- batch baselines ----------------------------------------------------------------------------------
def training_labels(
    data: EvaluationData, split_ms: int, *, legit_after_ms: int | None = DEFAULT_LEGIT_AFTER_MS
) -> pd.Series:
    """What was known at ``split_ms`` about each transaction of the earlier period (event_time before it).

    ``is_fraud`` is the latest label with ``label_time <= split_ms`` (the training-set semantics of
    ``docs/features.md``); a transaction without one counts as legit when its ``event_time +
    legit_after_ms`` is before ``split_ms`` (the trainer's policy), otherwise it is left out. Returns a
    nullable boolean Series over all transactions: NA where the row is not a training row.
    """
    known = data.labels[data.labels["label_time"] <= split_ms]
    latest = known.sort_values("label_time", kind="mergesort").drop_duplicates("transaction_id", keep="last")
    label = data.transactions["transaction_id"].map(latest.set_index("transaction_id")["is_fraud"])
    result = pd.Series(pd.array(label.tolist(), dtype="boolean"), index=data.transactions.index)
    event_time = data.transactions["event_time"]
    if legit_after_ms is not None:
        result[result.isna() & (event_time + legit_after_ms < split_ms)] = False
    result[event_time >= split_ms] = pd.NA
    return result


@dataclass
class BaselineResult:
    """A batch model's scores on the evaluation rows, and what it was trained on."""

    name: str
    probability: np.ndarray
    train_rows: int
    train_fraud: int
    seconds: float


@dataclass
class EncodedInputs:
    """Model inputs encoded as the online learner sees them (:func:`streams.learner.encode`), as a matrix."""

    matrix: np.ndarray
    columns: list[str] = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> EncodedInputs:
        """Encode every row; columns sorted by name, absent keys 0 (an absent indicator)."""
        vectorizer = DictVectorizer(sparse=False, sort=True)
        matrix = vectorizer.fit_transform([encode(row) for row in rows])
        return cls(np.asarray(matrix, dtype=np.float64), list(vectorizer.get_feature_names_out()))


def batch_baselines(
    encoded: EncodedInputs,
    train_label: pd.Series,
    evaluate: np.ndarray,
    *,
    seed: int = 0,
) -> list[BaselineResult]:
    """Train scikit-learn logistic regression and LightGBM on the rows with a ``train_label``; score the
    ``evaluate`` rows (a boolean mask).

    Both see the same encoded inputs as the online learner (log-scaled numbers, one-hot categories,
    null indicators; a null's value is 0, its indicator 1). Class imbalance: ``class_weight="balanced"``
    for both. Deterministic: lbfgs, and LightGBM with ``deterministic=True`` and a fixed seed.
    """
    mask = train_label.notna().to_numpy()
    x_train = np.nan_to_num(encoded.matrix[mask])
    y_train = train_label[mask].astype(bool).to_numpy()
    x_eval = np.nan_to_num(encoded.matrix[evaluate])
    models: list[tuple[str, Callable[[], Any]]] = [
        (
            "scikit-learn LogisticRegression",
            lambda: make_pipeline(
                StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2_000, C=1.0)
            ),
        ),
        (
            "LightGBM",
            lambda: lgb.LGBMClassifier(
                n_estimators=300,
                learning_rate=0.05,
                num_leaves=31,
                min_child_samples=20,
                subsample=0.8,
                subsample_freq=1,
                colsample_bytree=0.8,
                class_weight="balanced",
                random_state=seed,
                deterministic=True,
                force_row_wise=True,
                n_jobs=2,
                verbose=-1,
            ),
        ),
    ]
    results = []
    for name, make in models:
        started = time.perf_counter()
        model = make()
        model.fit(x_train, y_train)
        probability = model.predict_proba(x_eval)[:, 1]
        results.append(
            BaselineResult(
                name, probability, int(mask.sum()), int(y_train.sum()), time.perf_counter() - started
            )
        )
    return results


# --- metrics --------------------------------------------------------------------------------------------
def auc_ap(y: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None]:
    """ROC AUC and average precision; None where undefined (a single class)."""
    if len(y) == 0 or y.all() or not y.any():
        return None, None
    return float(roc_auc_score(y, p)), float(average_precision_score(y, p))


@dataclass(frozen=True)
class WindowMetric:
    """AUC and AP of the transactions with event_time in [start_ms, start_ms + window)."""

    start_ms: int
    transactions: int
    frauds: int
    auc: float | None
    ap: float | None


def window_metrics(
    event_time: np.ndarray, y: np.ndarray, p: np.ndarray, start_ms: int, end_ms: int, window_ms: int
) -> list[WindowMetric]:
    """Metrics per consecutive window from ``start_ms`` to ``end_ms`` (the last may be shorter)."""
    out = []
    for begin in range(start_ms, end_ms, window_ms):
        mask = (event_time >= begin) & (event_time < min(begin + window_ms, end_ms))
        auc, ap = auc_ap(y[mask], p[mask])
        out.append(WindowMetric(begin, int(mask.sum()), int(y[mask].sum()), auc, ap))
    return out
