"""A fraud model version as scoring sees it: the learner and the label features it had seen.

This is the artifact a model-store version holds (:meth:`FraudModel.to_bytes`). The gRPC
``ScoringService``, the scoring app that puts a score on the log for every transaction, and the learner
job all build a transaction's inputs with :meth:`FraudModel.inputs`, so what is served, what is logged
and what is learned are the same function of the same values:

* the card and merchant features as of the transaction's ``event_time`` (the transaction itself
  included), as the online store computes them (passed in by the caller);
* the transaction's own fields (``amount``, ``channel``, ``mcc``, ``currency``) and its location cell;
* the label features (a merchant's fraud rate over 30 days, ...) as of ``event_time``, counting only the
  labels this version had seen (label_time <= event_time).

Scoring never changes the model: it predicts without updating the learner's input statistics (the
learner job does that when it keeps the inputs).

Example:
    >>> model = initial_model()
    >>> txn = {"transaction_id": "t1", "card_id": "c1", "merchant_id": "m1", "event_time": 0,
    ...        "amount": 12.5, "channel": "pos", "mcc": "5411", "currency": "EUR",
    ...        "latitude": 52.5, "longitude": 13.4}
    >>> scored = model.score(txn, {"card_txn_count_1h": 1})
    >>> 0.0 <= scored.probability <= 1.0, scored.inputs["geo_cell"], scored.inputs["merchant_labels_30d"]
    (True, '50:10', 0)
    >>> FraudModel.from_bytes(model.to_bytes()).score(txn, {"card_txn_count_1h": 1}) == scored
    True
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.learner import FraudLearner, LabelFeatures, Reason

TRANSACTION_FIELDS = ("amount", "channel", "mcc", "currency")
"""Fields of the transaction itself that the model reads (plus the location cell)."""
GEO_CELL = "geo_cell"
GEO_CELL_DEGREES = 10
INITIAL_VERSION = "0"
"""The model version of :func:`initial_model`: what scores before the learner job saved anything."""
_FORMAT = "highwater.FraudModel/1"


def geo_cell(latitude: float | None, longitude: float | None) -> str | None:
    """A coarse location cell (10 x 10 degrees, like a region or country) for a transaction's position.

    Example:
        >>> geo_cell(52.52, 13.40), geo_cell(-6.2, 106.8), geo_cell(None, None)
        ('50:10', '-10:100', None)
    """
    if latitude is None or longitude is None or math.isnan(latitude) or math.isnan(longitude):
        return None
    step = GEO_CELL_DEGREES
    return f"{math.floor(latitude / step) * step}:{math.floor(longitude / step) * step}"


@dataclass(frozen=True)
class ModelScore:
    """One transaction's score, the inputs it was computed from and the inputs that pushed it most."""

    probability: float
    inputs: dict[str, Any]
    reasons: list[Reason]


@dataclass
class FraudModel:
    """The learner and the label features of one version (see the module docstring)."""

    learner: FraudLearner
    label_features: LabelFeatures

    def inputs(self, transaction: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
        """The model's inputs for ``transaction`` given its card and merchant ``features``.

        Raises ValueError when ``event_time`` is more than the label features' horizon behind the newest
        transaction this version learned from (:class:`LabelFeatures` forgets labels no later query
        can count, so older answers would not be exact).
        """
        inputs = dict(features)
        for name in TRANSACTION_FIELDS:
            inputs[name] = transaction.get(name)
        inputs[GEO_CELL] = geo_cell(transaction.get("latitude"), transaction.get("longitude"))
        inputs.update(
            self.label_features.features(
                str(transaction["merchant_id"]),
                str(transaction["card_id"]),
                as_of=int(transaction["event_time"]),
                advance=False,  # scoring reads a version; it never changes what the version answers
            )
        )
        return inputs

    def score(self, transaction: Mapping[str, Any], features: Mapping[str, Any], k: int = 3) -> ModelScore:
        """Score ``transaction``: probability, inputs and the top ``k`` reasons (nothing is learned)."""
        inputs = self.inputs(transaction, features)
        probability = self.learner.predict_proba(inputs)
        return ModelScore(probability, inputs, self.learner.top_reasons(inputs, k))

    def to_bytes(self) -> bytes:
        """The artifact a model-store version holds."""
        return pickle.dumps((_FORMAT, self.learner.to_bytes(), self.label_features))

    @classmethod
    def from_bytes(cls, data: bytes) -> FraudModel:
        """The model :meth:`to_bytes` saved; ValueError if ``data`` is not one."""
        try:
            tag, learner, label_features = pickle.loads(data)
        except Exception as exc:
            raise ValueError("not a Highwater fraud model artifact") from exc
        if tag != _FORMAT:
            raise ValueError(f"model artifact format {tag!r}, expected {_FORMAT!r}")
        return cls(FraudLearner.from_bytes(learner), label_features)


def initial_model(seed: int = 0) -> FraudModel:
    """The untrained model every lineage starts from (deterministic: the same for every process)."""
    return FraudModel(FraudLearner(seed=seed), LabelFeatures())
