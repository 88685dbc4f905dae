"""``fraud-scores`` records for a synthetic stream, as a scoring app would have logged them.

Until the streaming scoring app runs, tests, benchmarks and demos of the learner job need score records
on the log. These are simulated honestly, with the same functions the platform uses: each transaction
of a :class:`streams.synthetic.SyntheticStream` gets its card and merchant features as of its
event_time (:func:`streams.quality.point_in_time_features`, numpy, the semantics of
``docs/features.md``), its own fields and location cell (:func:`streams.quality.model_inputs`), and the
label features and probability a :class:`streams.learner.DelayedLabelTrainer` gave it when it scored it
at its event_time, knowing only the labels known by then (:func:`streams.quality.progressive_validation`,
i.e. an online model scoring as it learns). Nulls are ``None``, as the online store serves them.

:func:`score_log` lays the records out in the order they reach the log: a transaction's score where the
transaction was delivered (so the stream's late transactions give late scores), labels at their
label_time, keyed as the platform keys them (scores by transaction_id, labels by card_id).

Example:
    >>> from streams.synthetic import SyntheticStream
    >>> stream = SyntheticStream(seed=4, count=300)
    >>> scores = simulated_scores(stream)
    >>> record = scores[stream.transactions()[0]["transaction_id"]]
    >>> sorted(record)[:4], "card_txn_count_1h" in record["inputs"]
    (['card_id', 'event_time', 'fraud_probability', 'inputs'], True)
    >>> topic, _, key = score_log(stream, scores)[0]
    >>> topic, key == record["transaction_id"].encode()
    ('fraud-scores', True)
"""

from __future__ import annotations

import math
from typing import Any

from schemas.catalog import FRAUD_LABELS, FRAUD_SCORES, TRANSACTIONS
from streams.learner import LABEL_FEATURES, FraudLearner
from streams.quality import EvaluationData, model_inputs, progressive_validation
from streams.synthetic import SyntheticStream

MODEL_VERSION = "simulated"
"""The ``model_version`` simulated records carry."""
SCORE_DELAY_MS = 40
"""``score_time`` - ``event_time`` of a simulated record."""

LogRecord = tuple[str, dict[str, Any], bytes]
"""(catalog topic, record, message key)."""


def simulated_scores(stream: SyntheticStream, *, seed: int = 3) -> dict[str, dict[str, Any]]:
    """transaction_id -> the ``fraud-scores`` record of every transaction of ``stream``."""
    data = EvaluationData.from_stream(stream)
    scorer = progressive_validation(data, FraudLearner(seed=seed))
    rows = model_inputs(data)
    label_rows = scorer.label_features.to_numpy()
    txns = data.transactions
    scores: dict[str, dict[str, Any]] = {}
    for i, (tid, card, merchant, event_time) in enumerate(
        zip(txns["transaction_id"], txns["card_id"], txns["merchant_id"], txns["event_time"], strict=True)
    ):
        inputs = {name: _null(value) for name, value in rows[i].items()}
        for j, name in enumerate(LABEL_FEATURES):
            value = float(label_rows[i, j])
            inputs[name] = (
                None if math.isnan(value) else (value if name.endswith("_rate_30d") else int(value))
            )
        scores[tid] = {
            "transaction_id": tid,
            "fraud_probability": float(scorer.probability[i]),
            "model_version": MODEL_VERSION,
            "score_time": int(event_time) + SCORE_DELAY_MS,
            "event_time": int(event_time),
            "card_id": card,
            "merchant_id": merchant,
            "inputs": inputs,
        }
    return scores


def score_log(stream: SyntheticStream, scores: dict[str, dict[str, Any]]) -> list[LogRecord]:
    """Scores and labels in log order: each score where its transaction was delivered, labels at
    label_time; keys: transaction_id for scores, card_id for labels."""
    out: list[LogRecord] = []
    for delivery in stream.deliveries():
        record = delivery.record
        if delivery.topic == TRANSACTIONS:
            tid = record["transaction_id"]
            out.append((FRAUD_SCORES, scores[tid], tid.encode()))
        else:
            out.append((FRAUD_LABELS, record, str(record["card_id"]).encode()))
    return out


def _null(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
