"""How good is the online model on the platform's own data: progressive AUC against batch baselines.

The online model's figures are its *progressive* predictions (predict each transaction when it is
released to the learner, learn it when its label comes): every prediction is made before anything about
that transaction is learned. The batch baselines (scikit-learn logistic regression and LightGBM,
:func:`streams.quality.batch_baselines`) are trained on a **point-in-time training set of the earlier
history**, built by the platform (:func:`sinks.training_set.build_training_set` over the offline
history: card and merchant features as of each transaction's event_time, labels known at the split),
plus the transaction's own fields, its location cell and the label features as of its event_time
(labels known by then); unlabelled transactions older than ``legit_after_ms`` at the split count as
legit, as the online learner does. Both are scored on the same later period (event_time at or after
the split) against the truth (each transaction's latest label; unlabelled = legit).

Targets (issue 4): online ROC AUC at least 0.90 on the later period and no more than 0.03 below the
best batch baseline. :func:`plot_auc` draws the online AUC per window over time with the baselines.

Example:
    >>> report = evaluate(settings, online)              # doctest: +SKIP
    >>> report.online_auc, report.best_baseline_auc      # doctest: +SKIP
    (0.97, 0.98)
    >>> plot_auc(report, Path("auc.png"))                # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from highwater.settings import Settings
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.redis_online import live_generation
from sinks.training_set import build_training_set
from streams.features import REGISTRY
from streams.fraud_model import GEO_CELL, TRANSACTION_FIELDS, geo_cell
from streams.learner import DAY_MS, DEFAULT_LEGIT_AFTER_MS, LABEL_FEATURES, LabelFeatures
from streams.quality import (
    BaselineResult,
    EncodedInputs,
    WindowMetric,
    auc_ap,
    batch_baselines,
    window_metrics,
)

MIN_ONLINE_AUC = 0.90
MAX_GAP_TO_BATCH = 0.03


@dataclass
class ModelQuality:
    """The evaluation's numbers (see the module docstring)."""

    split_ms: int
    start_ms: int
    end_ms: int
    transactions: int
    evaluated: int
    evaluated_frauds: int
    online_auc: float | None
    online_ap: float | None
    baselines: list[tuple[BaselineResult, float | None, float | None]]
    online_windows: list[WindowMetric]
    window_ms: int

    @property
    def best_baseline_auc(self) -> float | None:
        """The best batch baseline's ROC AUC on the later period."""
        aucs = [auc for _, auc, _ in self.baselines if auc is not None]
        return max(aucs) if aucs else None

    @property
    def meets_targets(self) -> bool:
        """Online AUC >= 0.90 and within 0.03 of the best baseline."""
        best = self.best_baseline_auc
        return (
            self.online_auc is not None
            and best is not None
            and self.online_auc >= MIN_ONLINE_AUC
            and self.online_auc >= best - MAX_GAP_TO_BATCH
        )


def history_frames(settings: Settings, generation: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The transactions (one row per transaction_id, the first read) and labels of the offline history."""
    store = ClickHouseOfflineStore.from_settings(settings)
    gen = generation or live_generation(settings)
    try:
        txns = store.query_arrow(
            "SELECT transaction_id, card_id, merchant_id, amount, currency, channel, mcc, latitude, "
            "longitude, toUnixTimestamp64Milli(event_time) AS event_time FROM {transactions} FINAL "
            "ORDER BY partition, offset LIMIT 1 BY transaction_id",
            gen,
        ).to_pandas()
        labels = store.query_arrow(
            "SELECT transaction_id, card_id, is_fraud, toUnixTimestamp64Milli(label_time) AS label_time "
            "FROM {fraud_labels} FINAL ORDER BY partition, offset",
            gen,
        ).to_pandas()
    finally:
        store.close()
    txns = txns.sort_values(["event_time", "transaction_id"], ignore_index=True)
    return txns, labels


def label_features_as_of(transactions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """:data:`streams.learner.LABEL_FEATURES` of each transaction as of its event_time (labels known by
    then: a label at T counts for a transaction at T), in ``transactions``' row order."""
    features = LabelFeatures()
    timeline = [(int(t), 1, i) for i, t in enumerate(transactions["event_time"])]
    timeline += [(int(t), 0, j) for j, t in enumerate(labels["label_time"])]
    timeline.sort()
    ids, cards, merchants = (transactions[c].tolist() for c in ("transaction_id", "card_id", "merchant_id"))
    label_ids, label_cards, frauds = (labels[c].tolist() for c in ("transaction_id", "card_id", "is_fraud"))
    rows: list[dict[str, Any]] = [{} for _ in ids]
    for when, kind, index in timeline:
        if kind == 0:
            features.observe_label(
                label_ids[index], is_fraud=bool(frauds[index]), label_time=when, card_id=label_cards[index]
            )
        else:
            rows[index] = features.features(merchants[index], cards[index], as_of=when)
            features.observe_transaction(
                ids[index], merchant_id=merchants[index], card_id=cards[index], event_time=when
            )
    return pd.DataFrame(rows, columns=list(LABEL_FEATURES))


def truth(transactions: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """Each transaction's latest label (by label_time; unlabelled = legit)."""
    latest = labels.sort_values("label_time", kind="mergesort").drop_duplicates("transaction_id", keep="last")
    return (
        transactions["transaction_id"]
        .map(latest.set_index("transaction_id")["is_fraud"])
        .fillna(False)
        .astype(bool)
        .to_numpy()
    )


def evaluate(
    settings: Settings,
    online: pd.DataFrame,
    *,
    split_ms: int | None = None,
    window_ms: int = DAY_MS,
    legit_after_ms: int = DEFAULT_LEGIT_AFTER_MS,
    seed: int = 0,
    generation: str | None = None,
) -> ModelQuality:
    """Score the online model's progressive predictions (``online``: transaction_id, probability)
    and the batch baselines on the later period of ``generation``'s history (default: the live one);
    ``split_ms`` defaults to 60% into the history."""
    generation = generation or live_generation(settings)
    txns, labels = history_frames(settings, generation)
    y = truth(txns, labels)
    event_time = txns["event_time"].to_numpy(np.int64)
    start_ms, end_ms = int(event_time.min()), int(event_time.max()) + 1
    split = split_ms if split_ms is not None else start_ms + int((end_ms - start_ms) * 0.6)
    by_id = online.drop_duplicates("transaction_id").set_index("transaction_id")["probability"]
    online_p = txns["transaction_id"].map(by_id).to_numpy(np.float64)
    if np.isnan(online_p).any():
        missing = int(np.isnan(online_p).sum())
        raise ValueError(f"{missing:,} transactions of the history have no online prediction")

    names = [f.name for e in ("card", "merchant") for f in REGISTRY.features_of(e)]
    spine = pa.table(
        {
            "transaction_id": txns["transaction_id"].tolist(),
            "card_id": txns["card_id"].tolist(),
            "merchant_id": txns["merchant_id"].tolist(),
            "timestamp": pa.array(event_time, pa.int64()),
        }
    )
    training = build_training_set(
        settings, spine, names, generation=generation, labels=True, label_cutoff=split
    ).to_pandas()
    inputs = training[names].copy()
    for name in TRANSACTION_FIELDS:
        inputs[name] = txns[name].to_numpy()
    inputs[GEO_CELL] = [geo_cell(a, b) for a, b in zip(txns["latitude"], txns["longitude"], strict=True)]
    inputs = pd.concat([inputs, label_features_as_of(txns, labels)], axis=1)
    rows = [
        {k: (None if _is_missing(v) else v) for k, v in row.items()}
        for row in inputs.to_dict(orient="records")
    ]

    train_label = pd.Series(pd.array(training["is_fraud"].tolist(), dtype="boolean"))
    train_label[train_label.isna() & pd.Series(event_time + legit_after_ms < split)] = False
    train_label[pd.Series(event_time >= split)] = pd.NA
    later = event_time >= split
    baselines = batch_baselines(EncodedInputs.from_rows(rows), train_label, later, seed=seed)
    scored = [(b, *auc_ap(y[later], b.probability)) for b in baselines]
    auc, ap = auc_ap(y[later], online_p[later])
    return ModelQuality(
        split_ms=split,
        start_ms=start_ms,
        end_ms=end_ms,
        transactions=len(txns),
        evaluated=int(later.sum()),
        evaluated_frauds=int(y[later].sum()),
        online_auc=auc,
        online_ap=ap,
        baselines=scored,
        online_windows=window_metrics(event_time, y, online_p, start_ms, end_ms, window_ms),
        window_ms=window_ms,
    )


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def plot_auc(report: ModelQuality, path: Path) -> Path:
    """Save a PNG of the online ROC AUC per window over time, the split and the baselines' AUC after it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [(w.start_ms - report.start_ms) / DAY_MS for w in report.online_windows if w.auc is not None]
    aucs = [w.auc for w in report.online_windows if w.auc is not None]
    split_day = (report.split_ms - report.start_ms) / DAY_MS
    end_day = (report.end_ms - report.start_ms) / DAY_MS
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(days, aucs, marker="o", label="online (progressive), per window")
    colours = ("tab:orange", "tab:green", "tab:purple", "tab:brown")
    for (baseline, auc, _), colour in zip(report.baselines, colours, strict=False):
        if auc is not None:
            label = f"{baseline.name} (later period)"
            ax.hlines(auc, split_day, end_day, colors=colour, linestyles="dashed", label=label)
    if report.online_auc is not None:
        ax.hlines(
            report.online_auc, split_day, end_day, colors="black", label="online (later period, overall)"
        )
    ax.axvline(split_day, color="grey", linestyle=":", label="split: baselines train before it")
    ax.axhline(MIN_ONLINE_AUC, color="red", linewidth=0.8, label=f"target {MIN_ONLINE_AUC:.2f}")
    ax.set_xlabel(f"days since the first transaction (windows of {report.window_ms / DAY_MS:g} d)")
    ax.set_ylabel("ROC AUC")
    ax.set_ylim(min([0.5, *aucs]), 1.005)
    ax.set_title("Online fraud model: progressive ROC AUC over time vs batch baselines")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
