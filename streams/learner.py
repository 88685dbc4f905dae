"""The online fraud model: a River learner fed from delayed labels, with label-derived features.

Fraud labels arrive days after the transaction (chargebacks, customer reports, analysts), so the model
scores a transaction when it happens and learns from it only when its label is known, with the features
the transaction had *when it was scored* (kept per ``transaction_id``), never values computed later.
Three pieces, each usable alone:

* :class:`FraudLearner` wraps a River model (by default a logistic regression on standardized
  features): ``predict_proba(features)``, ``learn(features, is_fraud)``,
  ``top_reasons(features, k)``. It encodes any dict of feature values (:func:`encode`: nulls,
  categories, heavy tails), handles the class imbalance (class weights or River's under-sampling),
  detects drift with ADWIN on its prequential error per class (:attr:`FraudLearner.drift_events`), is
  deterministic (seeded; the same ordered inputs give the same model, bit for bit) and pickles
  (:meth:`FraudLearner.to_bytes` / :meth:`FraudLearner.from_bytes`).
* :class:`LabelFeatures` computes features from labels as of a time T, counting only labels known by
  then (``label_time <= T``), e.g. a merchant's fraud rate over the last 30 days.
* :class:`DelayedLabelTrainer` ties both together the way the stream will: ``score(transaction,
  features)`` adds the label features as of the transaction's ``event_time``, predicts and keeps the
  inputs; ``label(label)`` learns from the kept inputs; a transaction with no label
  ``legit_after_ms`` after its ``event_time`` is learned as legit (see the class for that policy).

Example:
    >>> learner = FraudLearner(seed=7)
    >>> for i in range(200):
    ...     learner.learn({"amount": 20.0 + i % 7, "channel": "pos"}, False)
    ...     learner.learn({"amount": 900.0 + i % 5, "channel": "ecom"}, True) if i % 10 == 0 else None
    >>> learner.predict_proba({"amount": 950.0, "channel": "ecom"}) > 0.5
    True
    >>> learner.predict_proba({"amount": 21.0, "channel": "pos"}) < 0.5
    True
    >>> [r.feature for r in learner.top_reasons({"amount": 950.0, "channel": "ecom"}, k=2)]
    ['amount', 'channel=ecom']
    >>> FraudLearner.from_bytes(learner.to_bytes()).predict_proba({"amount": 950.0}) == (
    ...     learner.predict_proba({"amount": 950.0}))
    True
"""

from __future__ import annotations

import bisect
import heapq
import math
import numbers
import pickle
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from river import base, drift, forest, imblearn, linear_model, optim, preprocessing, tree

DAY_MS = 86_400_000
DEFAULT_LABEL_WINDOW_MS = 30 * DAY_MS
DEFAULT_LEGIT_AFTER_MS = 10 * DAY_MS
"""How long after its event_time an unlabelled transaction is taken as legit (see DelayedLabelTrainer)."""

ModelKind = Literal["logistic", "adaptive_tree", "forest"]
Optimizer = Literal["sgd", "adagrad", "adam"]
_OPTIMIZERS: dict[str, Callable[[float], optim.base.Optimizer]] = {
    "sgd": optim.SGD,
    "adagrad": optim.AdaGrad,
    "adam": lambda lr: optim.Adam(lr=lr),
}
Imbalance = Literal["weight", "undersample", "none"]

MISSING = "missing"
"""Prefix of the indicator an encoded null gets: ``missing=<feature>``."""
DERIVED = {
    "amount_vs_card_avg_7d": ("amount", "card_amount_avg_7d"),
    "amount_vs_card_max_24h": ("amount", "card_amount_max_24h"),
}
"""Derived inputs: log1p(amount) - log1p(card aggregate), when both are present and not null."""
_FORMAT = "highwater.FraudLearner/1"


# --- encoding -------------------------------------------------------------------------------------------
def encode(features: Mapping[str, Any]) -> dict[str, float]:
    """The model's view of a feature dict: numbers log-scaled, categories one-hot, nulls as indicators.

    * a number (int, float, bool) ``v`` becomes ``sign(v) * log1p(|v|)`` under its own name: counts,
      amounts and sums are heavy-tailed, and a linear model separates them far better in log scale;
    * a string ``s`` becomes the indicator ``name=s`` (1.0); an unseen category is simply a new weight;
    * None or NaN becomes the indicator ``missing=name`` (1.0) and no value: for a standardized linear
      model an absent value is the running mean (mean imputation), and the indicator lets the model
      learn what "no events in the window" means;
    * :data:`DERIVED` ratios (amount against the card's 7-day average and 24-hour maximum) are added.

    Keys come out sorted, so the model's floating-point sums do not depend on the caller's key order.
    Names must not contain ``=`` (reserved for indicators).

    Example:
        >>> encode({"mcc": "5411", "amount": 9.0, "card_amount_avg_7d": None})
        {'amount': 2.302585092994046, 'mcc=5411': 1.0, 'missing=card_amount_avg_7d': 1.0}
    """
    out: dict[str, float] = {}
    for name, value in features.items():
        if "=" in name:
            raise ValueError(f"feature name {name!r} contains '=' (reserved for indicators)")
        kind = type(value)
        if kind is str:
            out[f"{name}={value}"] = 1.0
        elif value is None:
            out[f"{MISSING}={name}"] = 1.0
        elif kind is float or kind is int or isinstance(value, numbers.Real):  # bool and numpy too
            v = float(value)
            if v != v:  # NaN
                out[f"{MISSING}={name}"] = 1.0
            elif v in (math.inf, -math.inf):
                raise ValueError(f"feature {name!r} is infinite")
            else:
                out[name] = math.copysign(math.log1p(abs(v)), v)
        else:
            raise TypeError(f"feature {name!r}: expected a number, a string or None, not {kind.__name__}")
    for derived, (numerator, denominator) in DERIVED.items():
        if numerator in out and denominator in out:
            out[derived] = out[numerator] - out[denominator]
    return {key: out[key] for key in sorted(out)}


def is_indicator(key: str) -> bool:
    """Whether an encoded key is a 0/1 indicator (a category or a null) rather than a number."""
    return "=" in key


def source_of(key: str) -> str:
    """The input feature an encoded key comes from (``mcc=5411`` -> ``mcc``, derived -> ``amount``)."""
    if key.startswith(f"{MISSING}="):
        return key.split("=", 1)[1]
    if "=" in key:
        return key.split("=", 1)[0]
    if key in DERIVED:
        return DERIVED[key][0]
    return key


class NumericScaler(base.Transformer):
    """River's StandardScaler on the numeric keys only; indicators pass through as 0/1.

    River's StandardScaler scales every key it is given and only updates a key when it is present, so a
    one-hot key (always 1.0 when present) has zero variance and would be scaled to 0: the model could
    never use categories. Here indicators are left as they are.
    """

    def __init__(self) -> None:
        self.scaler = preprocessing.StandardScaler()

    def learn_one(self, x: dict[Hashable, Any]) -> None:
        """Update the running means and variances of the numeric keys."""
        self.scaler.learn_one({k: v for k, v in x.items() if "=" not in str(k)})

    def transform_one(self, x: dict[Hashable, Any]) -> dict[Hashable, Any]:
        """Numeric keys standardized (0 while a key's variance is 0), indicators unchanged."""
        out = self.scaler.transform_one({k: v for k, v in x.items() if "=" not in str(k)})
        out.update({k: v for k, v in x.items() if "=" in str(k)})
        return out


# --- the learner ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftEvent:
    """ADWIN detected a change in the model's prequential error on one class of labels.

    ``position`` is the number of labels learned when it fired (this one included), ``at_ms`` the time
    the caller gave with that label (None if none), ``error_before``/``error_after`` the mean error of
    the class over ADWIN's window just before and just after the cut.
    """

    position: int
    label: Literal["fraud", "legit"]
    at_ms: int | None
    error_before: float
    error_after: float

    @property
    def rising(self) -> bool:
        """Whether the error went up (the model got worse): what an alert is about. ADWIN also cuts its
        window when the error falls, e.g. while a young model is still improving."""
        return self.error_after > self.error_before


@dataclass(frozen=True)
class Reason:
    """One input's contribution to a score, in log-odds (positive pushes towards fraud)."""

    feature: str
    """The encoded input (``amount``, ``mcc=5732``, ``missing=card_amount_avg_7d``, a derived ratio)."""
    source: str
    """The feature of the caller's dict it comes from."""
    value: Any
    """That feature's value as given."""
    contribution: float


@dataclass
class LearnerStats:
    """What a learner has been taught."""

    learned: int = 0
    fraud: int = 0
    legit: int = 0


class FraudLearner:
    """An online fraud classifier over dicts of feature values; see the module docstring.

    The numeric inputs are standardized with running means and variances (:class:`NumericScaler`,
    for the logistic model). The scaler learns each example once: when it is scored, if the caller
    passes it to :meth:`observe` (as :class:`DelayedLabelTrainer` does: then the statistics describe
    all traffic, known at once, not just the labelled part, whose mix changes as labels arrive),
    otherwise when it is learned.

    The defaults are the configuration ``bench/model_quality.py`` chose (AdaGrad at 0.1, frauds weighted
    5x); ``bench/results/model_quality.md`` lists the others it measured. A "balanced" fraud weight
    (about 50 on this data) made the steps on each fraud so large that the model oscillated.

    Args:
        model: ``logistic`` (default: River ``LogisticRegression`` on standardized inputs),
            ``adaptive_tree`` (``HoeffdingAdaptiveTreeClassifier``) or ``forest`` (``ARFClassifier``,
            10 trees; slow: 1-2 ms per example).
        learning_rate: step of the logistic regression's optimizer (weights and intercept).
        optimizer: ``adagrad`` (default), ``sgd`` or ``adam`` (River's ``optim``).
        l2: L2 penalty of the logistic regression.
        imbalance: ``weight``: each fraud label is learned with weight ``fraud_weight``, or, when that
            is None, the running ratio legit/fraud of the labels learned so far (scikit-learn's
            "balanced", clipped to [1, ``max_fraud_weight``]); ``undersample``: River's
            ``imblearn.RandomUnderSampler`` (seeded) trains on a stream with ``fraud_share`` frauds;
            ``none``: every label counts once.
        fraud_weight: fixed weight of a fraud label (``imbalance="weight"``, default 5); None = balanced.
        max_fraud_weight: upper bound of the balanced weight.
        fraud_share: the class distribution the under-sampler aims for.
        drift_delta: ADWIN's significance (smaller: fewer, surer detections).
        seed: seeds everything random (the under-sampler, the trees' bootstrap).
    """

    def __init__(
        self,
        *,
        model: ModelKind = "logistic",
        learning_rate: float = 0.1,
        optimizer: Optimizer = "adagrad",
        l2: float = 0.0,
        imbalance: Imbalance = "weight",
        fraud_weight: float | None = 5.0,
        max_fraud_weight: float = 50.0,
        fraud_share: float = 0.3,
        drift_delta: float = 0.002,
        seed: int = 0,
    ) -> None:
        if model not in ("logistic", "adaptive_tree", "forest"):
            raise ValueError(f"unknown model {model!r}")
        if imbalance not in ("weight", "undersample", "none"):
            raise ValueError(f"unknown imbalance handling {imbalance!r}")
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        if learning_rate <= 0 or l2 < 0 or max_fraud_weight < 1 or not 0 < fraud_share < 1:
            raise ValueError("learning_rate > 0, l2 >= 0, max_fraud_weight >= 1 and 0 < fraud_share < 1")
        if fraud_weight is not None and fraud_weight <= 0:
            raise ValueError(f"fraud_weight must be positive, got {fraud_weight}")
        self.model_kind: ModelKind = model
        self.imbalance: Imbalance = imbalance
        self.fraud_weight = fraud_weight
        self.max_fraud_weight = max_fraud_weight
        self.seed = seed
        self.stats = LearnerStats()
        self._scaler: NumericScaler | None = None
        self._linear: linear_model.LogisticRegression | None = None
        # River's stubs type learn_one without the sample weight ``w`` its classifiers take: Any here.
        estimator: Any
        if model == "logistic":
            self._scaler = NumericScaler()
            self._linear = linear_model.LogisticRegression(
                optimizer=_OPTIMIZERS[optimizer](learning_rate), intercept_lr=learning_rate, l2=l2
            )
            estimator = self._linear
        elif model == "adaptive_tree":
            estimator = tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
        else:
            estimator = forest.ARFClassifier(n_models=10, seed=seed)
        self._trained: Any = (
            imblearn.RandomUnderSampler(estimator, {False: 1 - fraud_share, True: fraud_share}, seed=seed)
            if imbalance == "undersample"
            else estimator
        )
        self._adwin = {"fraud": drift.ADWIN(delta=drift_delta), "legit": drift.ADWIN(delta=drift_delta)}
        self._drift_events: list[DriftEvent] = []

    # --- scoring ---------------------------------------------------------------------------------------
    def predict_proba(self, features: Mapping[str, Any], *, observe: bool = False) -> float:
        """The probability that a transaction with these features is fraud (0.5 before any learning for
        the logistic model). Changes nothing, unless ``observe``: then, after predicting, the same as
        :meth:`observe`."""
        x = encode(features)
        probability = self._proba(x)
        if observe and self._scaler is not None:
            self._scaler.learn_one({key: value for key, value in x.items()})
        return probability

    def _scaled(self, x: dict[str, float]) -> dict[Hashable, Any]:
        given: dict[Hashable, Any] = {key: value for key, value in x.items()}
        return self._scaler.transform_one(given) if self._scaler is not None else given

    def _proba(self, x: dict[str, float]) -> float:
        return float(self._trained.predict_proba_one(self._scaled(x)).get(True, 0.0))

    def observe(self, features: Mapping[str, Any]) -> None:
        """Update the input statistics (the scaler) with a scored, not yet labelled, transaction.

        Pass ``observed=True`` when this transaction is learned later, so it counts once."""
        if self._scaler is not None:
            self._scaler.learn_one({key: value for key, value in encode(features).items()})

    def top_reasons(self, features: Mapping[str, Any], k: int = 3) -> list[Reason]:
        """The ``k`` inputs that push this score most towards fraud, largest first.

        For the logistic model a contribution is ``weight x standardized value`` in log-odds: how much the
        input moves this transaction's log-odds away from a transaction whose numeric inputs sit at
        their running means and which has none of this one's indicators (a category, a null). With the
        intercept they add up to the logit of :meth:`predict_proba`. Numeric inputs are log-scaled
        before standardizing (see :func:`encode`), so a large amount contributes through its log.
        For the tree models it is ``logit(p) - logit(p without that input)`` (the input replaced by
        null), an occlusion estimate.
        """
        if k <= 0:
            return []
        x = encode(features)
        contributions: dict[str, float] = {}
        if self._linear is not None:
            weights = self._linear.weights
            contributions = {
                str(key): weights.get(key, 0.0) * value for key, value in self._scaled(x).items()
            }
        else:
            full = _logit(self._proba(x))
            for name in features:
                without = {**features, name: None}
                contributions[name] = full - _logit(self.predict_proba(without))
        ranked = sorted(contributions.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [Reason(key, source_of(key), features.get(source_of(key)), c) for key, c in ranked]

    # --- learning --------------------------------------------------------------------------------------
    def learn(
        self, features: Mapping[str, Any], is_fraud: bool, *, at_ms: int | None = None, observed: bool = False
    ) -> None:
        """Learn one label.

        The error of the prediction made just before (test-then-train) feeds the drift detector of the
        label's class; ``at_ms`` (e.g. the label time) is recorded with a drift. ``observed``: the
        features were given to :meth:`observe` when scored (the scaler has counted them already).
        """
        x = encode(features)
        if self._scaler is not None and not observed:
            self._scaler.learn_one({key: value for key, value in x.items()})
        label: Literal["fraud", "legit"] = "fraud" if is_fraud else "legit"
        z = self._scaled(x)
        p = float(self._trained.predict_proba_one(z).get(True, 0.0))
        self.stats.learned += 1
        if is_fraud:
            self.stats.fraud += 1
        else:
            self.stats.legit += 1
        detector = self._adwin[label]
        before = detector.estimation
        detector.update(1.0 - p if is_fraud else p)
        if detector.drift_detected:
            self._drift_events.append(
                DriftEvent(self.stats.learned, label, at_ms, float(before), float(detector.estimation))
            )
        weight = self._weight(is_fraud)
        if weight == 1.0:
            self._trained.learn_one(z, bool(is_fraud))
        else:
            self._trained.learn_one(z, bool(is_fraud), w=weight)

    def _weight(self, is_fraud: bool) -> float:
        if self.imbalance != "weight" or not is_fraud:
            return 1.0
        if self.fraud_weight is not None:
            return self.fraud_weight
        balanced = (self.stats.legit + 1) / (self.stats.fraud + 1)
        return min(self.max_fraud_weight, max(1.0, balanced))

    @property
    def drift_events(self) -> list[DriftEvent]:
        """Every drift ADWIN detected so far, in order (a copy)."""
        return list(self._drift_events)

    def weights(self) -> dict[str, float]:
        """The logistic model's weights by encoded input (empty for the tree models)."""
        return dict(self._linear.weights) if self._linear is not None else {}

    # --- persistence -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The whole learner (model, scaler, detectors, counters) as bytes, for a model store.

        Pickle: load only bytes this platform wrote (unpickling runs code).
        """
        return pickle.dumps((_FORMAT, self), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> FraudLearner:
        """A learner saved with :meth:`to_bytes`."""
        loaded = pickle.loads(data)
        if not (isinstance(loaded, tuple) and len(loaded) == 2 and loaded[0] == _FORMAT):
            raise ValueError("not a FraudLearner saved by to_bytes")
        learner = loaded[1]
        if not isinstance(learner, cls):
            raise ValueError(f"expected a FraudLearner, got {type(learner).__name__}")
        return learner


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


# --- label-derived features -----------------------------------------------------------------------------
@dataclass
class _LabelEntry:
    label_time: int
    is_fraud: bool
    superseded_at: float = math.inf
    """label_time of the transaction's next label (a relabel); this one stops counting from then."""


@dataclass
class _Timeline:
    """One merchant's (or card's) labels in label_time order, with a parallel list of the times."""

    times: list[int] = field(default_factory=list)
    entries: list[_LabelEntry] = field(default_factory=list)

    def add(self, entry: _LabelEntry) -> None:
        at = bisect.bisect_right(self.times, entry.label_time)
        self.times.insert(at, entry.label_time)
        self.entries.insert(at, entry)

    def counts(self, after: int, until: int) -> tuple[int, int]:
        """(labelled, fraud) over labels with label_time in (after, until] still current at ``until``."""
        lo = bisect.bisect_right(self.times, after)
        hi = bisect.bisect_right(self.times, until)
        labelled = fraud = 0
        for entry in self.entries[lo:hi]:
            if entry.superseded_at > until:
                labelled += 1
                fraud += entry.is_fraud
        return labelled, fraud

    def evict(self, at_or_before: int) -> None:
        cut = bisect.bisect_right(self.times, at_or_before)
        if cut:
            del self.times[:cut]
            del self.entries[:cut]


LABEL_FEATURES = (
    "merchant_labels_30d",
    "merchant_fraud_labels_30d",
    "merchant_fraud_rate_30d",
    "card_fraud_labels_30d",
)
"""The features :meth:`LabelFeatures.features` returns (names assume the default 30-day window)."""


class LabelFeatures:
    """Features from fraud labels as of a time T, counting only the labels known at T.

    Semantics, for a transaction of merchant m and card c as of T (its ``event_time``):

    * a label counts when it is *known* at T: ``label_time <= T``, and *recent*: ``label_time > T - W``
      (W = ``window_ms``, 30 days by default). A label arriving after T never counts, whatever the
      transaction it is about; a window over label_time (not over the labelled transactions'
      event_time) keeps each value a function of what had arrived by T;
    * a transaction relabelled counts once, by its latest label known at T;
    * ``merchant_labels_30d``: m's labelled transactions so counted; ``merchant_fraud_labels_30d``: those
      whose label says fraud; ``merchant_fraud_rate_30d``: their ratio, null (None) when m has no such
      label; ``card_fraud_labels_30d``: c's transactions labelled fraud so counted.

    Labels carry ``transaction_id`` and ``card_id`` only: the merchant is found from the transactions
    seen (:meth:`observe_transaction`); a label that arrives before its transaction waits for it.
    Note the rate's denominator is *labelled* transactions: where only frauds and a sample of legit
    transactions get labels (as in ``streams.synthetic``) it is not the share of fraud among all of m's
    transactions.

    Times queried may go back at most ``horizon_ms`` behind the latest one (out-of-order scoring); older
    labels and transactions are forgotten (transactions after ``retention_ms``).

    Example:
        >>> lf = LabelFeatures()
        >>> lf.observe_transaction("t1", merchant_id="m1", card_id="c1", event_time=0)
        >>> lf.observe_label("t1", is_fraud=True, label_time=5 * DAY_MS, card_id="c1")
        >>> lf.features("m1", "c1", as_of=5 * DAY_MS - 1)["merchant_fraud_labels_30d"]
        0
        >>> lf.features("m1", "c1", as_of=5 * DAY_MS)["merchant_fraud_rate_30d"]
        1.0
    """

    def __init__(
        self,
        window_ms: int = DEFAULT_LABEL_WINDOW_MS,
        *,
        horizon_ms: int = DAY_MS,
        retention_ms: int = 60 * DAY_MS,
    ) -> None:
        if window_ms <= 0 or horizon_ms < 0 or retention_ms <= 0:
            raise ValueError("window_ms and retention_ms must be positive, horizon_ms >= 0")
        self.window_ms = window_ms
        self.horizon_ms = horizon_ms
        self.retention_ms = retention_ms
        self._merchant_of: dict[str, str] = {}
        self._seen: deque[tuple[int, str]] = deque()
        self._newest_event = -(2**62)
        self._labels_of: dict[str, list[_LabelEntry]] = {}
        self._waiting: dict[str, list[_LabelEntry]] = {}
        self._merchants: dict[str, _Timeline] = {}
        self._cards: dict[str, _Timeline] = {}
        self._high_water = -(2**62)

    def knows(self, transaction_id: str) -> bool:
        """Whether ``transaction_id`` was observed (and not forgotten after ``retention_ms``)."""
        return transaction_id in self._merchant_of

    @property
    def clock_ms(self) -> int | None:
        """The latest ``as_of`` asked of :meth:`features` (None before any): a query may go back at most
        ``horizon_ms`` from it."""
        return None if self._high_water == -(2**62) else self._high_water

    @property
    def labels_waiting(self) -> int:
        """Labels whose transaction has not been seen (yet): they count for their card, not a merchant."""
        return sum(map(len, self._waiting.values()))

    def observe_transaction(
        self, transaction_id: str, *, merchant_id: str, card_id: str, event_time: int
    ) -> None:
        """Remember which merchant a transaction belongs to (labels only name the transaction)."""
        if transaction_id in self._merchant_of:
            return
        self._merchant_of[transaction_id] = merchant_id
        self._seen.append((event_time, transaction_id))
        self._newest_event = max(self._newest_event, event_time)
        for entry in self._waiting.pop(transaction_id, []):
            self._timeline(self._merchants, merchant_id).add(entry)
        while self._seen and self._seen[0][0] < self._newest_event - self.retention_ms:
            _, old = self._seen.popleft()
            self._merchant_of.pop(old, None)
            self._labels_of.pop(old, None)

    def observe_label(
        self, transaction_id: str, *, is_fraud: bool, label_time: int, card_id: str | None = None
    ) -> None:
        """Record a label; it counts from ``label_time`` on (never for times before it)."""
        entry = _LabelEntry(label_time, bool(is_fraud))
        # The transaction's labels in label_time order (ties: the later delivered last); each counts
        # until the next one's label_time.
        history = self._labels_of.setdefault(transaction_id, [])
        at = bisect.bisect_right([e.label_time for e in history], label_time)
        history.insert(at, entry)
        if at > 0:
            history[at - 1].superseded_at = label_time
        if at + 1 < len(history):
            entry.superseded_at = history[at + 1].label_time
        merchant = self._merchant_of.get(transaction_id)
        if merchant is not None:
            self._timeline(self._merchants, merchant).add(entry)
        else:
            self._waiting.setdefault(transaction_id, []).append(entry)
        if card_id is not None:
            self._timeline(self._cards, card_id).add(entry)

    def features(
        self, merchant_id: str, card_id: str, *, as_of: int, advance: bool = True
    ) -> dict[str, float | int | None]:
        """The :data:`LABEL_FEATURES` as of ``as_of`` (ms), from the labels with label_time <= as_of.

        ``advance=False`` only reads: the latest time asked for does not move and nothing is forgotten,
        so a frozen copy (a served model version) answers any time without changing later answers.
        """
        if as_of < self._high_water - self.horizon_ms:
            raise ValueError(
                f"as_of {as_of} is more than horizon_ms ({self.horizon_ms}) behind a time already queried "
                f"({self._high_water}); labels that old may have been forgotten"
            )
        after = as_of - self.window_ms
        if advance:
            self._high_water = max(self._high_water, as_of)
            merchant, card = self._current(self._merchants, merchant_id), self._current(self._cards, card_id)
        else:
            merchant, card = self._merchants.get(merchant_id), self._cards.get(card_id)
        labelled, fraud = merchant.counts(after, as_of) if merchant else (0, 0)
        card_fraud = card.counts(after, as_of)[1] if card else 0
        return {
            "merchant_labels_30d": labelled,
            "merchant_fraud_labels_30d": fraud,
            "merchant_fraud_rate_30d": fraud / labelled if labelled else None,
            "card_fraud_labels_30d": card_fraud,
        }

    def _current(self, timelines: dict[str, _Timeline], key: str) -> _Timeline | None:
        """The key's timeline without the labels no allowed query can count any more (or None)."""
        timeline = timelines.get(key)
        if timeline is not None:
            timeline.evict(self._high_water - self.horizon_ms - self.window_ms)
            if not timeline.times:
                del timelines[key]
                return None
        return timeline

    @staticmethod
    def _timeline(timelines: dict[str, _Timeline], key: str) -> _Timeline:
        timeline = timelines.get(key)
        if timeline is None:
            timeline = timelines[key] = _Timeline()
        return timeline


# --- delayed labels -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    """A transaction's score and the inputs it was scored with (what the learner learns from later)."""

    transaction_id: str
    probability: float
    inputs: dict[str, Any]


@dataclass(frozen=True)
class LabelOutcome:
    """What :meth:`DelayedLabelTrainer.apply_label` did with a label.

    ``status``: ``learned`` (from the kept inputs; ``probability`` is the score they were given),
    ``not_scored`` (no transaction with that id was kept yet: nothing learned or counted, the caller
    may hold the label and call :meth:`DelayedLabelTrainer.learn_held` once the transaction is kept) or
    ``settled`` (the transaction was kept but its inputs are gone: learned from an earlier label, or as
    legit by implication; counted in :attr:`TrainerStats.unmatched_labels`).
    """

    status: Literal["learned", "not_scored", "settled"]
    probability: float | None = None
    served_probability: float | None = None
    """For inputs kept with :meth:`DelayedLabelTrainer.keep`: the probability the scorer logged with them
    (``probability`` is the learner's own prediction when it kept them: the progressive one)."""


@dataclass
class TrainerStats:
    """What a :class:`DelayedLabelTrainer` did."""

    scored: int = 0
    duplicates: int = 0
    learned_labels: int = 0
    learned_implied_legit: int = 0
    unmatched_labels: int = 0
    """Labels for a transaction not pending: never scored, already learned (a relabel), or already
    learned as legit by implication (a fraud label later than ``legit_after_ms``)."""
    unmatched_fraud_labels: int = 0


class DelayedLabelTrainer:
    """Score now, learn when the label comes: features kept per transaction_id from scoring time.

    * :meth:`score` computes the label features as of the transaction's ``event_time`` (labels known by
      then), merges them into the caller's features, predicts, and keeps those inputs by
      ``transaction_id``. A transaction scored again (a duplicate delivery) gets its first inputs'
      score back and changes nothing.
    * :meth:`label` learns the kept inputs with the label's ``is_fraud`` and drops them.
    * Unlabelled transactions: when labels come for every fraud but only a sample of legit
      transactions (chargebacks and reports, plus some analyst reviews, as in ``streams.synthetic``),
      learning from explicit labels alone would see mostly frauds. With ``legit_after_ms`` set (default
      :data:`DEFAULT_LEGIT_AFTER_MS`, 10 days: the synthetic stream's longest label delay), a transaction
      still unlabelled ``legit_after_ms`` after its ``event_time`` is learned as legit at that moment.
      A fraud label arriving later than that cannot be learned any more (its inputs are gone): it is
      counted in :attr:`TrainerStats.unmatched_fraud_labels`, so the choice of delay can be checked.
      ``legit_after_ms=None`` learns from explicit labels only.

    With ``observe_scored`` (default) every scored transaction updates the learner's input statistics
    at once (:meth:`FraudLearner.observe`), and is not counted again when learned.

    Time is event time: each call first learns the implied legit labels due strictly before its own
    time (the transaction's ``event_time``, the label's ``label_time``), so what is learned never
    depends on wall-clock time and a replay of the same ordered events rebuilds the same model.

    Example:
        >>> trainer = DelayedLabelTrainer(FraudLearner(seed=1), LabelFeatures())
        >>> txn = {"transaction_id": "t1", "card_id": "c1", "merchant_id": "m1", "event_time": 0}
        >>> trainer.score(txn, {"amount": 12.5}).inputs["merchant_labels_30d"]
        0
        >>> trainer.label({"transaction_id": "t1", "card_id": "c1", "is_fraud": True, "label_time": DAY_MS})
        True
        >>> trainer.learner.stats.fraud
        1
    """

    def __init__(
        self,
        learner: FraudLearner,
        label_features: LabelFeatures | None = None,
        *,
        legit_after_ms: int | None = DEFAULT_LEGIT_AFTER_MS,
        observe_scored: bool = True,
    ) -> None:
        if legit_after_ms is not None and legit_after_ms <= 0:
            raise ValueError(f"legit_after_ms must be positive or None, got {legit_after_ms}")
        self.learner = learner
        self.label_features = label_features
        self.legit_after_ms = legit_after_ms
        self.observe_scored = observe_scored
        self.stats = TrainerStats()
        # transaction_id -> (inputs, event_time, own prediction, the scorer's logged probability)
        self._pending: dict[str, tuple[dict[str, Any], int, float, float]] = {}
        self._due: list[tuple[int, int, str]] = []
        self._seq = 0

    def score(self, transaction: Mapping[str, Any], features: Mapping[str, Any]) -> Scored:
        """Score ``transaction`` (needs transaction_id, card_id, merchant_id, event_time) with
        ``features`` plus the label features as of its event_time; keep the inputs until its label."""
        transaction_id = str(transaction["transaction_id"])
        event_time = int(transaction["event_time"])
        kept = self._pending.get(transaction_id)
        if kept is not None:
            self.stats.duplicates += 1
            return Scored(transaction_id, kept[2], kept[0])
        self.advance(event_time)
        inputs = dict(features)
        if self.label_features is not None:
            card_id, merchant_id = str(transaction["card_id"]), str(transaction["merchant_id"])
            inputs.update(self.label_features.features(merchant_id, card_id, as_of=event_time))
            self.label_features.observe_transaction(
                transaction_id, merchant_id=merchant_id, card_id=card_id, event_time=event_time
            )
        probability = self.learner.predict_proba(inputs, observe=self.observe_scored)
        self._pending[transaction_id] = (inputs, event_time, probability, probability)
        if self.legit_after_ms is not None:
            heapq.heappush(self._due, (event_time + self.legit_after_ms, self._seq, transaction_id))
            self._seq += 1
        self.stats.scored += 1
        return Scored(transaction_id, probability, inputs)

    def keep(
        self, transaction: Mapping[str, Any], inputs: Mapping[str, Any], probability: float
    ) -> float | None:
        """Keep inputs a scorer already computed, e.g. a ``fraud-scores`` record's, instead of scoring.

        ``transaction`` needs transaction_id, card_id, merchant_id and event_time; ``inputs`` are used
        as given (label features included) and ``probability`` is the score the scorer logged with them
        (whichever model version it had). The learner predicts the inputs itself before keeping them and
        returns that prediction: made before anything about the transaction is learned, it is the
        progressive-validation score. Returns None, counting a duplicate and changing nothing else, when
        the transaction was kept before (still pending, or already learned while :class:`LabelFeatures`
        remembers it).

        Example:
            >>> trainer = DelayedLabelTrainer(FraudLearner(), LabelFeatures())
            >>> txn = {"transaction_id": "t1", "card_id": "c1", "merchant_id": "m1", "event_time": 0}
            >>> trainer.keep(txn, {"amount": 12.5}, 0.02), trainer.keep(txn, {"amount": 99.0}, 0.9)
            (0.5, None)
            >>> trainer.apply_label({"transaction_id": "t1", "is_fraud": False, "label_time": DAY_MS})
            LabelOutcome(status='learned', probability=0.5, served_probability=0.02)
        """
        transaction_id = str(transaction["transaction_id"])
        if transaction_id in self._pending or (
            self.label_features is not None and self.label_features.knows(transaction_id)
        ):
            self.stats.duplicates += 1
            return None
        event_time = int(transaction["event_time"])
        self.advance(event_time)
        if self.label_features is not None:
            merchant_id, card_id = str(transaction["merchant_id"]), str(transaction["card_id"])
            # Moves the label features' clock to event_time, so labels no query can count any more are
            # forgotten (the inputs' own label features are the scorer's, used as given).
            self.label_features.features(merchant_id, card_id, as_of=event_time)
            self.label_features.observe_transaction(
                transaction_id, merchant_id=merchant_id, card_id=card_id, event_time=event_time
            )
        kept_inputs = dict(inputs)
        # Progressive validation: the learner predicts the transaction before anything about it is learned.
        own = self.learner.predict_proba(kept_inputs, observe=self.observe_scored)
        self._pending[transaction_id] = (kept_inputs, event_time, own, float(probability))
        if self.legit_after_ms is not None:
            heapq.heappush(self._due, (event_time + self.legit_after_ms, self._seq, transaction_id))
            self._seq += 1
        self.stats.scored += 1
        return own

    def label(self, label: Mapping[str, Any]) -> bool:
        """Learn a label (transaction_id, is_fraud, label_time, card_id); False if it had no kept inputs."""
        outcome = self.apply_label(label)
        if outcome.status == "not_scored":
            self.stats.unmatched_labels += 1
            self.stats.unmatched_fraud_labels += bool(label["is_fraud"])
        return outcome.status == "learned"

    def apply_label(self, label: Mapping[str, Any]) -> LabelOutcome:
        """Record a label for the label features (from its label_time on) and learn it if the
        transaction's inputs are kept; see :class:`LabelOutcome` for what else can happen."""
        transaction_id = str(label["transaction_id"])
        label_time = int(label["label_time"])
        is_fraud = bool(label["is_fraud"])
        self.advance(label_time)
        if self.label_features is not None:
            card_id = label.get("card_id")
            self.label_features.observe_label(
                transaction_id,
                is_fraud=is_fraud,
                label_time=label_time,
                card_id=None if card_id is None else str(card_id),
            )
        kept = self._pending.pop(transaction_id, None)
        if kept is None:
            if self.label_features is not None and self.label_features.knows(transaction_id):
                self.stats.unmatched_labels += 1
                self.stats.unmatched_fraud_labels += is_fraud
                return LabelOutcome("settled")
            return LabelOutcome("not_scored")
        self.learner.learn(kept[0], is_fraud, at_ms=label_time, observed=self.observe_scored)
        self.stats.learned_labels += 1
        return LabelOutcome("learned", kept[2], kept[3])

    def learn_held(self, transaction_id: str, *, is_fraud: bool, label_time: int) -> LabelOutcome:
        """Learn a label :meth:`apply_label` answered ``not_scored`` to, now that its transaction is
        kept (the label is not recorded for the label features again: it was, at its label_time)."""
        kept = self._pending.pop(transaction_id, None)
        if kept is None:
            self.stats.unmatched_labels += 1
            self.stats.unmatched_fraud_labels += is_fraud
            return LabelOutcome("settled")
        self.learner.learn(kept[0], is_fraud, at_ms=label_time, observed=self.observe_scored)
        self.stats.learned_labels += 1
        return LabelOutcome("learned", kept[2], kept[3])

    def advance(self, now_ms: int) -> int:
        """Learn as legit every kept transaction whose ``event_time + legit_after_ms`` is before
        ``now_ms``; returns how many. Called by :meth:`score` and :meth:`label`; call it on a clock too."""
        learned = 0
        while self._due and self._due[0][0] < now_ms:
            due, _, transaction_id = heapq.heappop(self._due)
            kept = self._pending.pop(transaction_id, None)
            if kept is None:  # labelled explicitly before
                continue
            self.learner.learn(kept[0], False, at_ms=due, observed=self.observe_scored)
            self.stats.learned_implied_legit += 1
            learned += 1
        return learned

    @property
    def pending(self) -> int:
        """Transactions scored and not learned yet."""
        return len(self._pending)
