"""Progressive validation metrics of a live fraud model: ROC AUC and average precision of its scores.

Each ``fraud-scores`` record carries the probability the live model gave a transaction before anything
about that transaction was known; when the label comes, the pair (probability, label) is an honest
test of the model that scored it (test-then-train). :class:`ProgressiveMetrics` accumulates the pairs:

* overall, in bounded memory: each class's scores are counted in fine bins of the score's log-odds
  (0.001 wide over [-30, 30], the ends open; only bins that hold a score are stored), and AUC and AP
  are computed from the bin counts. Scores in one bin count as tied, so the figures equal
  scikit-learn's up to that resolution (a probability step of at most 0.00025);
* over the most recent ``window`` labels, exactly (:func:`streams.quality.auc_ap`).

Only explicit labels are counted. Where labels come for every fraud but only a sample of legit
transactions (as in ``streams.synthetic``), the legit class is that sample, so these are the figures on
labelled transactions, not on all traffic. The accumulator is deterministic and picklable: the learner
job checkpoints it with its state.

Example:
    >>> m = ProgressiveMetrics(window=3)
    >>> for p, y in [(0.9, True), (0.2, False), (0.7, True), (0.1, False), (0.6, False)]:
    ...     m.add(p, y)
    >>> s = m.summary()
    >>> s["labels"], s["fraud_labels"], s["auc"], s["recent_auc"]
    (5, 2, 1.0, 1.0)
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from streams.quality import auc_ap

LOGIT_RANGE = 30.0
BIN_WIDTH = 0.001
BINS = round(2 * LOGIT_RANGE / BIN_WIDTH) + 2
"""Bins of :func:`score_bin`: one per step, plus an open bin at each end."""


def score_bin(probability: float) -> int:
    """The bin of a probability: its log-odds in steps of :data:`BIN_WIDTH`, ends open.

    Example:
        >>> score_bin(0.5) == BINS // 2, score_bin(0.0), score_bin(1.0) == BINS - 1
        (True, 0, True)
    """
    if probability <= 0.0:
        return 0
    if probability >= 1.0:
        return BINS - 1
    logit = math.log(probability / (1.0 - probability))
    if logit < -LOGIT_RANGE:
        return 0
    if logit >= LOGIT_RANGE:
        return BINS - 1
    return 1 + int((logit + LOGIT_RANGE) / BIN_WIDTH)


def binned_auc_ap(fraud: np.ndarray, legit: np.ndarray) -> tuple[float | None, float | None]:
    """ROC AUC and average precision from per-bin counts of each class (bins in ascending score order).

    Tied scores (one bin) count half in the AUC and as one threshold in the AP, as scikit-learn does.
    None where undefined (a class without labels).

    Example:
        >>> binned_auc_ap(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
        (1.0, 1.0)
    """
    positives, negatives = int(fraud.sum()), int(legit.sum())
    if positives == 0 or negatives == 0:
        return None, None
    legit_below = np.cumsum(legit) - legit
    auc = float((fraud * (legit_below + 0.5 * legit)).sum()) / (positives * negatives)
    # Thresholds from the highest score down: precision at each bin that holds frauds.
    tp = np.cumsum(fraud[::-1])
    fp = np.cumsum(legit[::-1])
    recall_step = fraud[::-1] / positives
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    ap = float((recall_step * precision).sum())
    return auc, ap


class ProgressiveMetrics:
    """AUC and AP of (score, label) pairs overall (binned) and over the last ``window`` labels (exact)."""

    def __init__(self, window: int = 10_000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._fraud: dict[int, int] = {}
        self._legit: dict[int, int] = {}
        self._recent: deque[tuple[float, bool]] = deque(maxlen=window)

    @property
    def labels(self) -> int:
        """Pairs accumulated."""
        return sum(self._fraud.values()) + sum(self._legit.values())

    def add(self, probability: float, is_fraud: bool) -> None:
        """Count one label and the probability the transaction was scored with before it."""
        counts = self._fraud if is_fraud else self._legit
        at = score_bin(probability)
        counts[at] = counts.get(at, 0) + 1
        self._recent.append((float(probability), bool(is_fraud)))

    def summary(self) -> dict[str, float]:
        """``labels``, ``fraud_labels``, ``auc``, ``ap``, ``recent_labels``, ``recent_auc``, ``recent_ap``
        (a figure is left out while it is undefined: one class only)."""
        out: dict[str, float] = {"labels": self.labels, "fraud_labels": sum(self._fraud.values())}
        bins = sorted(self._fraud.keys() | self._legit.keys())
        fraud = np.array([self._fraud.get(b, 0) for b in bins], dtype=np.int64)
        legit = np.array([self._legit.get(b, 0) for b in bins], dtype=np.int64)
        auc, ap = binned_auc_ap(fraud, legit)
        if auc is not None and ap is not None:
            out["auc"], out["ap"] = auc, ap
        out["recent_labels"] = len(self._recent)
        if self._recent:
            p = np.fromiter((pair[0] for pair in self._recent), np.float64, len(self._recent))
            y = np.fromiter((pair[1] for pair in self._recent), np.bool_, len(self._recent))
            recent_auc, recent_ap = auc_ap(y, p)
            if recent_auc is not None and recent_ap is not None:
                out["recent_auc"], out["recent_ap"] = recent_auc, recent_ap
        return out
