"""Online fraud model quality: progressive validation against batch baselines on the same later period.

One run, no stack needed (the evaluation is about the learner, see ``streams/quality.py`` for why the
features are computed there with numpy rather than by the stream job and ``build_training_set``):

1. a seeded synthetic stream (``streams.synthetic``: card testing, account takeover, compromised
   merchants; every fraud labelled 1-10 days later, 1% of legit transactions labelled by analysts), over
   ``--span-days`` so that labels arrive within the run;
2. every transaction's features as of its own event_time (``streams.features``, all events counted),
   its own fields, a coarse location cell, and label features (labels known by then);
3. online: :class:`streams.learner.FraudLearner` (defaults) through a
   :class:`streams.learner.DelayedLabelTrainer`: predict each transaction at its event_time, learn it
   when its label arrives, or as legit 10 days after it when no label came (the generator's convention:
   every fraud is labelled within 10 days);
4. batch baselines: scikit-learn LogisticRegression and LightGBM trained on the transactions before the
   split (``--split-days``) with what was known at the split (labels with label_time <= split;
   unlabelled and older than 10 days: legit), scored on the same later period with the same inputs;
5. ROC AUC and average precision over the later period and per day; drift events; a replay check (a
   second learner fed the same ordered inputs, and a pickled copy, must predict identically on a probe
   set); online variants (what was tried) and an ablation without the location cell.

Targets (from the issue): online ROC AUC >= 0.90 on the later period, and no more than 0.03 below the
best batch baseline.

Example:
    $ uv run python -m bench.model_quality                       # 200,000 transactions, 35 days
    $ uv run python -m bench.model_quality --count 50000 --quick # a quick look, no variants
"""

from __future__ import annotations

import argparse
import importlib.metadata
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.common import RESULTS_DIR, Check, Table, say, write_results
from streams.learner import DAY_MS, DEFAULT_LEGIT_AFTER_MS, LABEL_FEATURES, FraudLearner
from streams.quality import (
    BaselineResult,
    EncodedInputs,
    EvaluationData,
    ProgressiveRun,
    WindowMetric,
    auc_ap,
    batch_baselines,
    model_inputs,
    progressive_validation,
    training_labels,
    window_metrics,
)
from streams.synthetic import SyntheticStream

NAME = "model_quality"
TARGET_AUC = 0.90
TARGET_GAP = 0.03
PROBE_SIZE = 1_000


@dataclass
class Variant:
    """An online configuration measured next to the default one."""

    name: str
    learner: dict[str, Any]
    run: dict[str, Any]


VARIANTS = [
    Variant("SGD 0.05, frauds weighted 5x", {"optimizer": "sgd", "learning_rate": 0.05}, {}),
    Variant("AdaGrad 0.1, no imbalance handling", {"imbalance": "none"}, {}),
    Variant("AdaGrad 0.1, balanced weight (legit/fraud, <= 50)", {"fraud_weight": None}, {}),
    Variant("AdaGrad 0.1, River RandomUnderSampler (30% fraud)", {"imbalance": "undersample"}, {}),
    Variant("default, scaler fitted on labelled examples only", {}, {"observe_scored": False}),
    Variant("default, without label features", {}, {"label_features": False}),
    Variant("default, explicit labels only (no implied legit)", {}, {"legit_after_ms": None}),
    Variant("River HoeffdingAdaptiveTreeClassifier, frauds weighted 5x", {"model": "adaptive_tree"}, {}),
    Variant(
        "River ARFClassifier (10 trees), RandomUnderSampler (30% fraud)",
        {"model": "forest", "imbalance": "undersample"},
        {},
    ),
]


def fmt(value: float | None, digits: int = 4) -> str:
    """A metric, or n/a."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def day_of(data: EvaluationData, ms: int) -> float:
    """Days since the start of the stream."""
    return (ms - data.start_ms) / DAY_MS


def with_label_features(inputs: list[dict[str, Any]], run: ProgressiveRun) -> list[dict[str, Any]]:
    """The inputs each transaction was scored with: its features plus the label features of the run."""
    values = run.label_features.to_numpy()
    out = []
    for row, kept in zip(inputs, values, strict=True):
        extra = {
            name: (None if np.isnan(v) else float(v)) for name, v in zip(LABEL_FEATURES, kept, strict=True)
        }
        out.append({**row, **extra})
    return out


def main() -> None:
    """Run the evaluation and write bench/results/model_quality.{md,json,png}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="synthetic transactions")
    parser.add_argument("--seed", type=int, default=7, help="stream and learner seed (tuning used 11)")
    parser.add_argument("--span-days", type=int, default=35, help="event-time span of the stream")
    parser.add_argument("--split-days", type=int, default=21, help="batch training period; evaluated after")
    parser.add_argument("--window-days", type=float, default=1.0, help="width of the over-time windows")
    parser.add_argument("--quick", action="store_true", help="skip the variants and the ablation")
    args = parser.parse_args()
    started = time.perf_counter()

    stream = SyntheticStream(seed=args.seed, count=args.count, span_ms=args.span_days * DAY_MS)
    data = EvaluationData.from_stream(stream)
    summary = stream.summary()
    split_ms = data.start_ms + args.split_days * DAY_MS
    window_ms = int(args.window_days * DAY_MS)
    later = data.event_time >= split_ms
    y_later = data.is_fraud[later]
    say(
        f"{len(data.transactions):,} transactions ({summary.fraud:,} fraud), {len(data.labels):,} labels, "
        f"features as of each event_time in {time.perf_counter() - started:.1f} s"
    )
    inputs = model_inputs(data)

    # --- online ------------------------------------------------------------------------------------------
    online = progressive_validation(data, FraudLearner(seed=args.seed), inputs=inputs)
    online_auc, online_ap = auc_ap(y_later, online.probability[later])
    say(
        f"online (progressive validation): AUC {fmt(online_auc)}, AP {fmt(online_ap)} "
        f"in {online.seconds:.1f} s"
    )

    # --- replay: the same ordered inputs rebuild the same model --------------------------------------------
    replayed = progressive_validation(data, FraudLearner(seed=args.seed), inputs=inputs)
    rows = with_label_features(inputs, online)
    probe_rng = random.Random(args.seed)
    probe = [rows[i] for i in probe_rng.sample(range(len(rows)), min(PROBE_SIZE, len(rows)))]
    first = [online.learner.predict_proba(x) for x in probe]
    second = [replayed.learner.predict_proba(x) for x in probe]
    restored = FraudLearner.from_bytes(online.learner.to_bytes())
    third = [restored.predict_proba(x) for x in probe]
    replay_same = first == second and bool(np.array_equal(online.probability, replayed.probability))
    pickle_same = first == third
    say(f"replay: identical probe predictions {replay_same}, after pickling {pickle_same}")

    # --- batch baselines ---------------------------------------------------------------------------------
    encoded = EncodedInputs.from_rows(rows)
    train_label = training_labels(data, split_ms)
    baselines = batch_baselines(encoded, train_label, later, seed=args.seed)
    baseline_scores = {b.name: auc_ap(y_later, b.probability) for b in baselines}
    for b in baselines:
        auc, ap = baseline_scores[b.name]
        say(f"{b.name}: AUC {fmt(auc)}, AP {fmt(ap)} ({b.train_rows:,} rows, {b.train_fraud:,} fraud)")
    best_name = max(baseline_scores, key=lambda n: baseline_scores[n][0] or 0.0)
    best_auc = baseline_scores[best_name][0] or 0.0

    # --- over time ---------------------------------------------------------------------------------------
    online_windows = window_metrics(
        data.event_time, data.is_fraud, online.probability, data.start_ms, data.end_ms, window_ms
    )
    later_times = data.event_time[later]
    baseline_windows = {
        b.name: window_metrics(later_times, y_later, b.probability, split_ms, data.end_ms, window_ms)
        for b in baselines
    }

    # --- variants and ablation ---------------------------------------------------------------------------
    variant_rows: list[Sequence[str]] = []
    variant_data: list[dict[str, Any]] = []
    ablation_rows: list[Sequence[str]] = []
    ablation_data: dict[str, Any] = {}
    if not args.quick:
        for variant in VARIANTS:
            run = progressive_validation(
                data, FraudLearner(seed=args.seed, **variant.learner), inputs=inputs, **variant.run
            )
            auc, ap = auc_ap(y_later, run.probability[later])
            say(f"variant {variant.name}: AUC {fmt(auc)}, AP {fmt(ap)} in {run.seconds:.1f} s")
            variant_rows.append([variant.name, fmt(auc), fmt(ap), _drifts(run), f"{run.seconds:.0f}"])
            variant_data.append(
                {"name": variant.name, "auc": auc, "ap": ap, "drift_events": len(run.learner.drift_events)}
            )
        plain = model_inputs(data, geo=False)
        no_geo = progressive_validation(data, FraudLearner(seed=args.seed), inputs=plain)
        auc, ap = auc_ap(y_later, no_geo.probability[later])
        ablation_rows.append(["online (FraudLearner defaults)", fmt(auc), fmt(ap)])
        ablation_data["online"] = {"auc": auc, "ap": ap}
        plain_encoded = EncodedInputs.from_rows(with_label_features(plain, no_geo))
        for b in batch_baselines(plain_encoded, train_label, later, seed=args.seed):
            auc, ap = auc_ap(y_later, b.probability)
            ablation_rows.append([b.name, fmt(auc), fmt(ap)])
            ablation_data[b.name] = {"auc": auc, "ap": ap}
        say("ablation without the location cell: " + "; ".join(f"{r[0]} AUC {r[1]}" for r in ablation_rows))

    # --- plot --------------------------------------------------------------------------------------------
    plot_name = f"{NAME}.png"
    _plot(data, split_ms, online_windows, baseline_windows, online_auc, baseline_scores, plot_name)

    # --- report ------------------------------------------------------------------------------------------
    online_auc_value = online_auc or 0.0
    checks = [
        Check(
            f"online ROC AUC >= {TARGET_AUC:.2f} (later period)",
            f"{fmt(online_auc)} (AP {fmt(online_ap)})",
            online_auc_value >= TARGET_AUC,
        ),
        Check(
            f"online AUC >= best batch AUC - {TARGET_GAP:.2f}",
            f"{fmt(online_auc)} vs {best_name} {fmt(best_auc)} "
            f"(difference {online_auc_value - best_auc:+.4f})",
            online_auc_value >= best_auc - TARGET_GAP,
        ),
        Check(
            "replay of the same ordered inputs rebuilds the same model",
            f"{PROBE_SIZE:,} probe predictions identical: replay {replay_same}, "
            f"pickle round trip {pickle_same}",
            replay_same and pickle_same,
        ),
    ]
    overall = Table(
        f"Later period (day {args.split_days} to {args.span_days}: {int(later.sum()):,} transactions, "
        f"{int(y_later.sum()):,} fraud)",
        ["Model", "ROC AUC", "Average precision", "Trained on"],
        [
            [
                "online: FraudLearner (River), progressive validation",
                fmt(online_auc),
                fmt(online_ap),
                f"{online.stats.learned_labels:,} labels + {online.stats.learned_implied_legit:,} implied "
                "legit, as they became known",
            ],
            *(
                [
                    f"batch: {b.name}",
                    fmt(baseline_scores[b.name][0]),
                    fmt(baseline_scores[b.name][1]),
                    f"{b.train_rows:,} rows before day {args.split_days} ({b.train_fraud:,} fraud), "
                    "labels known at the split",
                ]
                for b in baselines
            ),
        ],
    )
    over_time = Table(
        f"Over time ({args.window_days:g}-day windows; batch models exist from day {args.split_days})",
        ["Day", "Transactions", "Fraud", "Online AUC", "Online AP", *(f"{b.name} AUC" for b in baselines)],
    )
    for w in online_windows:
        cells = [
            f"{day_of(data, w.start_ms):g}",
            f"{w.transactions:,}",
            f"{w.frauds:,}",
            fmt(w.auc),
            fmt(w.ap),
        ]
        for b in baselines:
            match = [bw for bw in baseline_windows[b.name] if bw.start_ms == w.start_ms]
            cells.append(fmt(match[0].auc) if match else "")
        over_time.rows.append(cells)
    drift_table = Table(
        "Drift events (ADWIN on the online learner's prequential error, per label class)",
        ["#", "Labels learned", "Class", "Day", "Mean error before", "Mean error after", "Error rose"],
        [
            [
                str(n),
                f"{e.position:,}",
                e.label,
                f"{day_of(data, e.at_ms):.2f}" if e.at_ms is not None else "",
                f"{e.error_before:.4f}",
                f"{e.error_after:.4f}",
                "yes" if e.rising else "no",
            ]
            for n, e in enumerate(online.learner.drift_events, start=1)
        ],
    )
    tables = [overall, over_time, drift_table]
    if variant_rows:
        tables.append(
            Table(
                "Online variants tried (same stream, same later period)",
                ["Variant", "ROC AUC", "Average precision", "Drift events (rising)", "Seconds"],
                [
                    [
                        "**default**: logistic regression, AdaGrad 0.1, frauds weighted 5x",
                        fmt(online_auc),
                        fmt(online_ap),
                        _drifts(online),
                        f"{online.seconds:.0f}",
                    ],
                    *variant_rows,
                ],
            )
        )
    if ablation_rows:
        tables.append(
            Table(
                "Ablation: the same models without the location cell (geo_cell)",
                ["Model", "ROC AUC", "Average precision"],
                ablation_rows,
            )
        )
    tables.append(_scenario_table(stream, data, later, online, baselines))
    tables.append(_reasons_table(online.learner, rows, data, later))
    versions = {p: importlib.metadata.version(p) for p in ("river", "scikit-learn", "lightgbm")}
    notes = [
        f"Stream: SyntheticStream(seed={args.seed}, count={args.count:,}, span {args.span_days} days), "
        f"{summary.fraud:,} fraud ({summary.by_scenario}), {len(data.labels):,} labels. The learner's "
        "configuration was chosen on seed 11; this run uses another seed.",
        "Features: every feature of streams/features.py as of the transaction's own event_time, the "
        "transaction included, computed in numpy from all events with the semantics of docs/features.md "
        "(the training-set view: late events count; the online store would have skipped the ~0.2% late "
        "ones). card_seconds_since_last_txn is always 0 under that convention (the transaction itself is "
        "the latest event), so it carries no information. Plus amount, channel, mcc, currency, a 10-degree "
        f"location cell, and the label features {', '.join(LABEL_FEATURES)} (labels with label_time <= "
        "event_time, 30-day window over label_time).",
        f"Labels: learned at label_time; an unlabelled transaction is learned as legit "
        f"{DEFAULT_LEGIT_AFTER_MS // DAY_MS} days after its event_time (the generator labels every fraud "
        f"1-10 days later, so no fraud was learned as legit: {online.stats.unmatched_fraud_labels} fraud "
        "labels came too late). The batch training set applies the same rule at the split. Ground truth "
        "for the metrics: the generator's fraud flag (every fraud is labelled eventually).",
        "Order: transactions at event_time, labels at label_time, in time order; the real stream delivers "
        "transactions up to 3 s out of order (and 0.2% late), which this evaluation does not reproduce.",
        f"Imbalance: frauds weighted 5x in learn_one; batch models use class_weight='balanced'. Drift: two "
        f"ADWIN detectors (delta 0.002) on the error of the prediction made just before each label is "
        f"learned, one per class (1-p for frauds, p for legit), so the change in the label mix as implied "
        f"legit labels start arriving is not itself reported as drift; {len(online.learner.drift_events)} "
        f"events in this run, {sum(e.rising for e in online.learner.drift_events)} of them a rise of the "
        "error (ADWIN also cuts its window when the error falls, e.g. while the model is still improving; "
        "an alert would be about the rises).",
        "Replay: a second FraudLearner fed the same ordered inputs, and a pickled copy (to_bytes/from_bytes) "
        f"of the first, predict {PROBE_SIZE:,} probe transactions (seeded sample) bit-identically; the "
        "whole score series of both runs is compared too.",
        "Caveat: the synthetic scenarios are easy to separate. Fraudulent e-commerce payments come from "
        "devices far outside Europe, so the location cell alone nearly gives them away and the linear and "
        "batch models reach AUC 0.999 with it; the ablation without it is the harder comparison. Day 0 "
        "scores 0.5 everywhere (AUC 0.5): no label arrives before day 1.",
        "Tried while building, before this benchmark existed (seed 11): River's StandardScaler in front "
        "of the one-hot categories scaled them to 0 (a key that is always 1.0 when present has zero "
        "variance), so channel/mcc were invisible (online AUC 0.975); scaling only the numeric inputs "
        "(streams.learner.NumericScaler) fixed it. Raw latitude/longitude in a linear model did worse than "
        "no location at all (batch LogisticRegression AUC 0.908 vs 0.958), hence the 10-degree cell.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}. Total time "
        f"{time.perf_counter() - started:.0f} s.",
    ]
    result_data = {
        "stream": {
            "seed": args.seed,
            "count": args.count,
            "span_days": args.span_days,
            "fraud": summary.fraud,
            "labels": len(data.labels),
        },
        "split_days": args.split_days,
        "online": {
            "auc": online_auc,
            "ap": online_ap,
            "seconds": online.seconds,
            "trainer": vars(online.stats),
            "drift_events": [{**vars(e), "rising": e.rising} for e in online.learner.drift_events],
            "windows": [_window(data, w) for w in online_windows],
        },
        "baselines": {
            b.name: {
                "auc": baseline_scores[b.name][0],
                "ap": baseline_scores[b.name][1],
                "train_rows": b.train_rows,
                "train_fraud": b.train_fraud,
                "windows": [_window(data, w) for w in baseline_windows[b.name]],
            }
            for b in baselines
        },
        "replay_identical": replay_same,
        "pickle_identical": pickle_same,
        "variants": variant_data,
        "ablation_without_geo_cell": ablation_data,
        "versions": versions,
    }
    write_results(
        NAME,
        "Online fraud model quality",
        tables=tables,
        checks=checks,
        notes=notes,
        data=result_data,
        plot=plot_name,
    )


def _drifts(run: ProgressiveRun) -> str:
    events = run.learner.drift_events
    return f"{len(events)} ({sum(e.rising for e in events)})"


def _window(data: EvaluationData, w: WindowMetric) -> dict[str, Any]:
    return {
        "day": day_of(data, w.start_ms),
        "transactions": w.transactions,
        "fraud": w.frauds,
        "auc": w.auc,
        "ap": w.ap,
    }


def _scenario_table(
    stream: SyntheticStream,
    data: EvaluationData,
    later: np.ndarray,
    online: ProgressiveRun,
    baselines: list[BaselineResult],
) -> Table:
    """Per fraud scenario: AUC of its frauds against all legit transactions of the later period."""
    scenario_of = stream.scenarios()
    scenarios = data.transactions["transaction_id"].map(scenario_of).to_numpy()[later]
    legit = ~data.is_fraud[later]
    scores = {"online": online.probability[later], **{b.name: b.probability for b in baselines}}
    table = Table(
        "By fraud scenario (later period): ROC AUC of the scenario's frauds against all legit transactions",
        ["Scenario", "Frauds", *scores],
    )
    for scenario in sorted({s for s in scenario_of.values()}):
        mine = scenarios == scenario
        keep = mine | legit
        cells = [scenario, f"{int(mine.sum()):,}"]
        for p in scores.values():
            cells.append(fmt(auc_ap(mine[keep], p[keep])[0]))
        table.rows.append(cells)
    return table


def _reasons_table(
    learner: FraudLearner, rows: list[dict[str, Any]], data: EvaluationData, later: np.ndarray
) -> Table:
    """top_reasons of the final model for the highest-scored fraud of each scenario in the later period."""
    table = Table(
        "Example explanations: top_reasons(k=3) of the final model (log-odds contributions)",
        ["Transaction", "Score", "Top reasons"],
    )
    scored = [(learner.predict_proba(rows[i]), i) for i in np.flatnonzero(later & data.is_fraud)[:2_000]]
    for _, i in sorted(scored, reverse=True)[:3]:
        reasons = learner.top_reasons(rows[i], k=3)
        table.rows.append(
            [
                str(data.transactions["transaction_id"].iloc[i]),
                f"{learner.predict_proba(rows[i]):.3f}",
                "; ".join(f"{r.feature} ({r.value!r}): {r.contribution:+.2f}" for r in reasons),
            ]
        )
    return table


def _plot(
    data: EvaluationData,
    split_ms: int,
    online_windows: list[WindowMetric],
    baseline_windows: dict[str, list[WindowMetric]],
    online_auc: float | None,
    baseline_scores: dict[str, tuple[float | None, float | None]],
    file_name: str,
) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True)
    for ax, metric in zip(axes, ("auc", "ap"), strict=True):
        days = [day_of(data, w.start_ms) for w in online_windows]
        values = [getattr(w, metric) for w in online_windows]
        ax.plot(days, [np.nan if v is None else v for v in values], "o-", label="online (FraudLearner)")
        for (name, windows), style in zip(baseline_windows.items(), ("s--", "^--"), strict=False):
            ax.plot(
                [day_of(data, w.start_ms) for w in windows],
                [np.nan if getattr(w, metric) is None else getattr(w, metric) for w in windows],
                style,
                label=f"batch: {name}",
                alpha=0.8,
            )
        ax.axvline(day_of(data, split_ms), color="grey", linestyle=":", label="split (batch trained before)")
        ax.set_ylabel("ROC AUC per day" if metric == "auc" else "average precision per day")
        ax.grid(alpha=0.3)
    later_days = day_of(data, split_ms), day_of(data, data.end_ms)
    if online_auc is not None:
        axes[0].hlines(online_auc, *later_days, colors="C0", linewidth=1, alpha=0.5)
    for n, (auc, _) in enumerate(baseline_scores.values(), start=1):
        if auc is not None:
            axes[0].hlines(auc, *later_days, colors=f"C{n}", linewidth=1, alpha=0.5)
    axes[0].axhline(TARGET_AUC, color="red", linewidth=0.8, linestyle="-.", label=f"target {TARGET_AUC}")
    axes[0].set_title("Fraud model quality over time (thin lines: whole later period)")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].set_xlabel("day of the stream (event time)")
    fig.tight_layout()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS_DIR / file_name, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
