"""The demo's fraud-model part: streaming scores, online learning from delayed labels, quality, replay.

Run after the stream job has applied the log (online features in Redis, history in ClickHouse):

1. the scoring app (Quix Streams) scores every transaction into ``fraud-scores`` while the learner job
   learns from ``fraud-scores`` and ``fraud-labels`` alongside it, as in production: each version the
   learner saves is promoted and the scorer swaps to it, so later transactions are scored by models that
   have learned more (``served_auc``);
2. the learner job then runs to the end of the log (resuming from its last version);
3. quality: the learner's progressive ROC AUC / average precision over the later period against batch
   baselines trained on a point-in-time training set of the earlier history
   (:mod:`streams.model_evaluation`), and a PNG of AUC over time;
4. a few transactions of the synthetic fraud scenarios scored over gRPC (``ScoringService/Score``) with
   the live version, with their top reasons;
5. a replay of the log into a new lineage up to the live version's offsets, verified to predict
   identically on a probe set.

Example:
    >>> lines = fraud_model_demo(settings, stream)   # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from highwater.settings import Settings
from serving.scoring_client import ScoringClient
from serving.server import build_server
from sinks.model_store import model_store_from_settings
from sinks.redis_online import RedisOnlineStore
from streams.learner import DAY_MS
from streams.learner_job import LearnReport, replay_model, run_learner
from streams.model_evaluation import MAX_GAP_TO_BATCH, MIN_ONLINE_AUC, evaluate, plot_auc
from streams.model_verify import probes_from_log, verify_versions
from streams.scoring_app import run_scoring
from streams.synthetic import SyntheticStream

console = Console()


def fraud_model_demo(settings: Settings, stream: SyntheticStream) -> list[tuple[str, str]]:
    """Run steps 1-5 of the module docstring; returns report lines (name, text)."""
    lines: list[tuple[str, str]] = []
    predictions: dict[str, float] = {}

    def keep(transaction_id: str, _event_time: int, probability: float) -> None:
        predictions.setdefault(transaction_id, probability)

    stop = threading.Event()
    tailing: list[LearnReport] = []
    learner = threading.Thread(
        target=lambda: tailing.append(run_learner(settings, stop=stop, on_prediction=keep)),
        name="learner",
    )
    started = time.perf_counter()
    learner.start()
    try:
        scoring = run_scoring(settings, until_end=True)
    finally:
        stop.set()
        learner.join()
    scoring_s = time.perf_counter() - started
    lines.append(("streaming scores", f"{scoring.summary()} in {scoring_s:.1f} s (learner alongside)"))
    final = run_learner(settings, until_end=True, on_prediction=keep, show_progress=True)
    versions = [*(tailing[0].saved if tailing else []), *final.saved]
    live = final.last
    assert live is not None
    metrics = live.metrics
    lines.append(
        (
            "learner job",
            f"{len(versions)} versions saved; live version {live.version}: "
            f"{metrics.get('labels_learned', 0):,.0f} labels learned, "
            f"{metrics.get('implied_legit', 0):,.0f} transactions learned as legit after 10 days, "
            f"{metrics.get('labels_held', 0):,.0f} labels held for their score, "
            f"{metrics.get('drift_events', 0):,.0f} drift events; "
            f"progressive AUC {metrics.get('auc', float('nan')):.4f} on the labels, "
            f"served AUC {metrics.get('served_auc', float('nan')):.4f} (the versions that scored live)",
        )
    )
    online = pd.DataFrame({"transaction_id": list(predictions), "probability": list(predictions.values())})
    quality = evaluate(settings, online)
    plot = plot_auc(quality, auc_plot_path(settings))
    baselines = ", ".join(f"{b.name} {auc:.4f}" for b, auc, _ in quality.baselines if auc is not None)
    verdict = "met" if quality.meets_targets else "NOT met"
    lines.append(
        (
            "model quality",
            f"later period ({quality.evaluated:,} transactions, {quality.evaluated_frauds:,} frauds): online "
            f"progressive ROC AUC {quality.online_auc:.4f}, AP {quality.online_ap:.4f}; batch baselines "
            f"(point-in-time training set of the earlier history) {baselines}; targets (AUC >= "
            f"{MIN_ONLINE_AUC:.2f}, within {MAX_GAP_TO_BATCH:.2f} of the best) {verdict}; plot {plot}",
        )
    )
    console.print(_scores_table(settings, stream))
    store = model_store_from_settings(settings)
    try:
        started = time.perf_counter()
        replayed = replay_model(settings, f"demo{int(time.time())}", until=live.version, store=store)
        replay_s = time.perf_counter() - started
        assert replayed.last is not None
        comparison = verify_versions(store, live.version, replayed.last.version, probes_from_log(settings))
    finally:
        store.close()
    lines.append(
        (
            "model replay",
            f"{replayed.records:,} records into version {replayed.last.version} in {replay_s:.1f} s; "
            f"{len(comparison.differences)} differences from live version {live.version} on "
            f"{comparison.probes:,} probes",
        )
    )
    return lines


def _scores_table(settings: Settings, stream: SyntheticStream) -> Table:
    """Score the last transaction of each fraud scenario and a legit one over gRPC with the live model.

    Only the last day's transactions are candidates: a version's label features answer up to a day
    behind the newest transaction it learned from (``LabelFeatures.horizon_ms``)."""
    scenarios = stream.scenarios()
    recent = max(t["event_time"] for t in stream.transactions()) - DAY_MS
    picked: dict[str, dict[str, Any]] = {}
    for transaction in stream.transactions():
        if transaction["event_time"] >= recent:
            picked[scenarios.get(transaction["transaction_id"], "legit")] = transaction
    online = RedisOnlineStore.from_settings(settings)
    server = build_server(settings, online)
    server.start()
    table = Table(title="ScoringService/Score, live model: the last day's last transaction of each kind")
    for column in ("kind", "transaction", "fraud probability", "version", "top reasons"):
        table.add_column(column)
    try:
        with ScoringClient(server.target) as client:
            for kind, transaction in sorted(picked.items()):
                score = client.score(transaction)
                reasons = "; ".join(f"{r.feature} ({r.contribution:+.2f})" for r in score.reasons)
                table.add_row(
                    kind,
                    transaction["transaction_id"],
                    f"{score.fraud_probability:.4f}",
                    score.model_version,
                    reasons,
                )
    finally:
        server.stop(1.0)
    return table


def auc_plot_path(settings: Settings) -> Path:
    """Where the demo saves its AUC-over-time plot."""
    return settings.state_dir / "reports" / "model_auc.png"
