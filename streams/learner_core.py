"""The learner job's state machine: scores and labels in, a model out, the same for every read order.

:class:`LearnerCore` is everything :mod:`streams.learner_job` does between decoding a record and
producing a dead letter or saving a checkpoint, without Kafka or a model store, so it can be tested
and its determinism proven on plain lists. For each decoded record of ``fraud-scores`` or
``fraud-labels`` (in its partition's log order, partitions interleaved in any way):

1. :meth:`LearnerCore.offer` puts it into an :class:`streams.event_time_merge.EventTimeMerge` over
   every input partition (watermark = newest time in the partition minus
   ``max_out_of_orderness_ms``); scores are timed by ``event_time``, labels by ``label_time``. A record
   older than its own partition's watermark is late: not learned, counted and dead-lettered with its
   reason, except a late score for a transaction its partition delivered in the last
   :data:`DUPLICATE_WINDOW_MS` (a re-delivery: counted as a duplicate, nothing else).
2. :meth:`LearnerCore.advance` releases the records below the merge frontier in ``(time, kind,
   transaction_id, partition, position)`` order, a label before a score of the same millisecond (a label
   at T is known at T, as in ``streams.quality.progressive_validation``), and processes them:

   * a score: its logged inputs and probability are kept by transaction_id
     (:meth:`streams.learner.DelayedLabelTrainer.keep`: the features as of its event_time, as the
     scorer saw them; the transaction is observed for the label features), and the learner predicts
     them itself (the progressive prediction: nothing about the transaction is learned yet;
     ``on_prediction`` sees it); a transaction kept before is a duplicate: ignored and counted. Labels
     held for it are learned now;
   * a label: recorded for the label features from its label_time on, then learned from the kept
     inputs; the pair (progressive prediction, label) goes into the progressive metrics (``auc``,
     ``ap``, ...: :class:`streams.learning_metrics.ProgressiveMetrics`) and the pair (logged
     probability, label) into ``served_auc``/``served_ap``: what the model versions that scored live
     achieved. A label whose transaction has not been
     kept is **held**; if no score for it is released by ``label_time + label_hold_ms`` (that is, once
     a record later than that is released: the merge guarantees no score that early can still come),
     it is dead-lettered ("no score for transaction t123 within 1h of its label") and counted.
   * implied legit: a transaction still unlabelled ``legit_after_ms`` after its event_time is learned
     as legit (:class:`streams.learner.DelayedLabelTrainer`). A label that comes after that, or a second
     label for a transaction already learned, has no inputs left: it is counted in
     ``labels_settled`` (a fraud one also in ``fraud_labels_settled``, the price of the policy: it
     still counts in the label features, the model has learned that transaction as legit).

3. :meth:`LearnerCore.drain` releases everything (the end of a bounded run). Held labels are not
   dead-lettered by a drain: a drained core is a preview of "the input ends here", and the learner job
   saves the state from before the drain, so a later run resumes as if it had not happened.

The released sequence, and so the model, after each partition has delivered a prefix of its records is
a function of those prefixes alone (see :mod:`streams.event_time_merge`): a replay of the log up to
the same offsets rebuilds the same model, bit for bit. The whole core pickles
(:meth:`LearnerCore.to_bytes`), which is the job's checkpoint state.

Example:
    >>> core = LearnerCore([("fraud-scores", 0), ("fraud-labels", 0)], LearnerOptions())
    >>> score = {"transaction_id": "t1", "card_id": "c1", "merchant_id": "m1", "event_time": 1_000,
    ...          "fraud_probability": 0.9, "model_version": "0", "score_time": 1_001,
    ...          "inputs": {"amount": 950.0, "channel": "ecom"}}
    >>> label = {"transaction_id": "t1", "card_id": "c1", "is_fraud": True, "label_time": 90_000,
    ...          "source": "chargeback"}
    >>> core.offer("fraud-scores", 0, 0, b"t1", b"", score)
    []
    >>> core.offer("fraud-labels", 0, 0, b"c1", b"", label)
    []
    >>> core.drain()
    >>> core.counters.labels_learned, core.metrics()["labels_learned"]
    (1, 1.0)
"""

from __future__ import annotations

import heapq
import math
import pickle
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from sys import intern
from typing import Any, NamedTuple

from schemas.catalog import DEAD_LETTER, FRAUD_LABELS, FRAUD_SCORES
from streams.event_time_merge import EventTimeMerge
from streams.fraud_model import FraudModel, initial_model
from streams.learner import DEFAULT_LEGIT_AFTER_MS, DelayedLabelTrainer, LabelOutcome
from streams.learning_metrics import ProgressiveMetrics

LABEL, SCORE = 0, 1
"""Kinds of records, in their tie-break order: a label sorts before a score at the same millisecond."""
DUPLICATE_WINDOW_MS = 3_600_000
"""How far (event time) behind its partition's newest score a re-delivered score is still recognised
as a duplicate rather than dead-lettered as late (re-deliveries follow a scorer restart: minutes)."""
_FORMAT = "highwater.LearnerCore/1"

Source = tuple[str, int]


@dataclass(frozen=True)
class LearnerOptions:
    """A lineage's fixed configuration, kept in its state: the topics it reads (and dead-letters to)
    and what decides the model besides the records. A replay uses those of the version it rebuilds."""

    max_out_of_orderness_ms: int = 5_000
    label_hold_ms: int = 3_600_000
    legit_after_ms: int | None = DEFAULT_LEGIT_AFTER_MS
    metrics_window: int = 10_000
    seed: int = 0
    score_topic: str = FRAUD_SCORES
    """Topic of the score records (values in the ``fraud-scores`` schema; another name e.g. in tests)."""
    label_topic: str = FRAUD_LABELS
    """Topic of the labels (values in the ``fraud-labels`` schema)."""
    dead_letter_topic: str = DEAD_LETTER


@dataclass(frozen=True)
class DeadLetter:
    """A record the learner could not use, with why; keyed ``topic:partition:offset`` of the source
    record, so a consumer can drop the repeats a crash and restart may produce.

    Example:
        >>> letter = DeadLetter("late", "too old", "fraud-labels", 1, 42, b"c1", b"...")
        >>> letter.message_key, letter.record()["source_offset"]
        (b'fraud-labels:1:42', 42)
    """

    error_type: str
    error: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def message_key(self) -> bytes:
        """The key of its ``dead-letter`` message: the source record's position."""
        return f"{self.topic}:{self.partition}:{self.offset}".encode()

    def record(self) -> dict[str, Any]:
        """The ``dead-letter`` record (``schemas/avro/dead_letter.avsc``)."""
        return {
            "error_type": self.error_type,
            "error": self.error,
            "source_topic": self.topic,
            "source_partition": self.partition,
            "source_offset": self.offset,
            "original_key": self.key,
            "original": self.value,
        }


@dataclass
class LearnerCounters:
    """What the core did, cumulative over the lineage (checkpointed with it)."""

    records: int = 0
    """Decoded records offered (malformed ones are counted by the job, not here)."""
    scores_kept: int = 0
    duplicate_scores: int = 0
    late_scores: int = 0
    late_labels: int = 0
    malformed: int = 0
    """Records that could not be decoded or failed validation (counted by the job)."""
    invalid: int = 0
    """Decoded records the core refused (a probability outside [0, 1], an infinite input)."""
    labels: int = 0
    """Labels released from the merge."""
    labels_learned: int = 0
    """Labels learned from kept inputs, directly or after being held."""
    labels_held: int = 0
    held_labels_learned: int = 0
    labels_dead_lettered: int = 0
    labels_settled: int = 0
    fraud_labels_settled: int = 0
    implied_legit: int = 0

    def as_metrics(self) -> dict[str, float]:
        """The counters as metric values."""
        return {name: float(value) for name, value in asdict(self).items()}


class _Item(NamedTuple):
    """A record in the merge: decoded, with its position (and, for labels, its bytes: a dead letter
    needs them)."""

    kind: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    event: dict[str, Any]


@dataclass
class _Held:
    item: _Item
    deadline: int


@dataclass
class _RecentScores:
    """One score partition's transaction ids of the last DUPLICATE_WINDOW_MS (event time), accepted."""

    order: deque[tuple[int, str]] = field(default_factory=deque)
    ids: dict[str, int] = field(default_factory=dict)
    newest: int = -(2**62)


class LearnerCore:
    """The deterministic learner (see the module docstring); ``sources`` are every input partition."""

    def __init__(
        self, sources: list[Source], options: LearnerOptions, model: FraudModel | None = None
    ) -> None:
        self.options = options
        self.sources = sorted(set(sources))
        start = model if model is not None else initial_model(options.seed)
        self.trainer = DelayedLabelTrainer(
            start.learner, start.label_features, legit_after_ms=options.legit_after_ms
        )
        self.counters = LearnerCounters()
        self.progressive = ProgressiveMetrics(options.metrics_window)
        self.served = ProgressiveMetrics(options.metrics_window)
        self.on_prediction: Callable[[str, int, float], None] | None = None
        """Called with (transaction_id, event_time, progressive prediction) for each score kept (not
        saved with the state)."""
        self._merge: EventTimeMerge[_Item] = EventTimeMerge(self.sources, options.max_out_of_orderness_ms)
        self._held: dict[str, list[_Held]] = {}
        self._deadlines: list[tuple[int, int, str, int, str]] = []
        self._recent: dict[Source, _RecentScores] = {}
        self._draining = False

    # --- input -------------------------------------------------------------------------------------------
    def offer(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        event: dict[str, Any],
    ) -> list[DeadLetter]:
        """Take one decoded record (in its partition's log order); returns dead letters for it, if any."""
        self.counters.records += 1
        if topic == self.options.score_topic:
            kind, time_ms = SCORE, int(event["event_time"])
            problem = _score_problem(event)
        elif topic == self.options.label_topic:
            kind, time_ms, problem = LABEL, int(event["label_time"]), None
        else:
            raise ValueError(
                f"the learner reads {self.options.score_topic} and {self.options.label_topic}, not {topic}"
            )
        if problem is not None:
            self.counters.invalid += 1
            return [DeadLetter("validation_failed", problem, topic, partition, offset, key, value)]
        transaction_id = str(event["transaction_id"])
        if kind == SCORE:
            event = _shared_strings(event)
        item = _Item(kind, topic, partition, offset, key, value if kind == LABEL else None, event)
        arrival = self._merge.add((topic, partition), time_ms, (kind, transaction_id), item)
        if kind == SCORE:
            recent = self._recent.setdefault((topic, partition), _RecentScores())
            if not arrival.accepted and transaction_id in recent.ids:
                self.counters.duplicate_scores += 1
                return []
            if arrival.accepted:
                _remember(recent, time_ms, transaction_id)
        if arrival.accepted:
            return []
        if kind == SCORE:
            self.counters.late_scores += 1
            what = "a score"
        else:
            self.counters.late_labels += 1
            what = "a label"
        time_name = "event_time" if kind == SCORE else "label_time"
        reason = (
            f"{what} for transaction {transaction_id} came late: its {time_name} {time_ms} is "
            f"{arrival.watermark_ms - time_ms if arrival.watermark_ms is not None else 0} ms older than the "
            f"watermark {arrival.watermark_ms} of {topic} partition {partition} (newest time there minus "
            f"{self.options.max_out_of_orderness_ms} ms); not learned"
        )
        return [DeadLetter("late", reason, topic, partition, offset, key, value)]

    def advance(self) -> list[DeadLetter]:
        """Process every record the merge frontier releases; returns the dead letters of expired holds."""
        dead: list[DeadLetter] = []
        for item in self._merge.release():
            dead.extend(self._process(item))
        return dead

    def drain(self) -> None:
        """Process every buffered record (the end of a bounded run); held labels stay held."""
        self._draining = True
        try:
            for item in self._merge.drain():
                self._process(item)
        finally:
            self._draining = False

    # --- processing -----------------------------------------------------------------------------------------
    def _process(self, item: _Item) -> list[DeadLetter]:
        time_ms = int(item.event["event_time"] if item.kind == SCORE else item.event["label_time"])
        dead = [] if self._draining else self._expire(before=time_ms)
        if item.kind == SCORE:
            self._score(item)
        else:
            self._label(item)
        self.counters.implied_legit = self.trainer.stats.learned_implied_legit
        return dead

    def _score(self, item: _Item) -> None:
        event = item.event
        transaction_id = str(event["transaction_id"])
        own = self.trainer.keep(event, event["inputs"], float(event["fraud_probability"]))
        if own is None:
            self.counters.duplicate_scores += 1
            return
        self.counters.scores_kept += 1
        if self.on_prediction is not None:
            self.on_prediction(transaction_id, int(event["event_time"]), own)
        for held in self._held.pop(transaction_id, []):
            label = held.item.event
            is_fraud = bool(label["is_fraud"])
            outcome = self.trainer.learn_held(
                transaction_id, is_fraud=is_fraud, label_time=int(label["label_time"])
            )
            if outcome.status == "learned":
                self.counters.held_labels_learned += 1
                self._learned(outcome, is_fraud)
            else:
                self._settled(is_fraud)

    def _label(self, item: _Item) -> None:
        label = item.event
        is_fraud = bool(label["is_fraud"])
        self.counters.labels += 1
        outcome = self.trainer.apply_label(label)
        if outcome.status == "learned":
            self._learned(outcome, is_fraud)
        elif outcome.status == "settled":
            self._settled(is_fraud)
        else:
            transaction_id = str(label["transaction_id"])
            deadline = int(label["label_time"]) + self.options.label_hold_ms
            self._held.setdefault(transaction_id, []).append(_Held(item, deadline))
            heapq.heappush(
                self._deadlines, (deadline, item.offset, item.topic, item.partition, transaction_id)
            )
            self.counters.labels_held += 1

    def _learned(self, outcome: LabelOutcome, is_fraud: bool) -> None:
        assert outcome.probability is not None and outcome.served_probability is not None
        self.counters.labels_learned += 1
        self.progressive.add(outcome.probability, is_fraud)
        self.served.add(outcome.served_probability, is_fraud)

    def _settled(self, is_fraud: bool) -> None:
        self.counters.labels_settled += 1
        self.counters.fraud_labels_settled += is_fraud

    def _expire(self, before: int) -> list[DeadLetter]:
        """Dead-letter the held labels whose deadline is strictly before ``before``."""
        dead: list[DeadLetter] = []
        while self._deadlines and self._deadlines[0][0] < before:
            _, offset, topic, partition, transaction_id = heapq.heappop(self._deadlines)
            waiting = self._held.get(transaction_id)
            if not waiting:
                continue  # learned when its score came
            found = next(
                (
                    h
                    for h in waiting
                    if (h.item.topic, h.item.partition, h.item.offset) == (topic, partition, offset)
                ),
                None,
            )
            if found is None:
                continue
            waiting.remove(found)
            if not waiting:
                del self._held[transaction_id]
            self.counters.labels_dead_lettered += 1
            item = found.item
            reason = (
                f"no score for transaction {transaction_id} within {_duration(self.options.label_hold_ms)} "
                f"of its label (label_time {item.event['label_time']}): held until event time "
                f"{found.deadline}, not learned"
            )
            dead.append(
                DeadLetter("no_score_for_label", reason, topic, partition, offset, item.key, item.value)
            )
        return dead

    # --- reading the state ---------------------------------------------------------------------------------
    @property
    def model(self) -> FraudModel:
        """The model as scoring sees it: the learner and the label features (shared, not a copy)."""
        assert self.trainer.label_features is not None
        return FraudModel(self.trainer.learner, self.trainer.label_features)

    @property
    def held(self) -> int:
        """Labels held now, waiting for their transaction's score."""
        return sum(map(len, self._held.values()))

    @property
    def buffered(self) -> int:
        """Records in the merge, not released yet."""
        return self._merge.buffered

    @property
    def frontier(self) -> int | None:
        """The merge frontier (event time below which everything was released), None before every
        partition delivered a record."""
        return self._merge.frontier

    def metrics(self) -> dict[str, float]:
        """Counters, progressive AUC/AP (see :class:`streams.learning_metrics.ProgressiveMetrics`),
        drift events (all, and those where the error rose), what is held and buffered."""
        out = self.counters.as_metrics()
        progressive = self.progressive.summary()
        for name in ("auc", "ap", "recent_labels", "recent_auc", "recent_ap"):
            if name in progressive:
                out[name] = float(progressive[name])
        served = self.served.summary()
        for name in ("auc", "ap"):
            if name in served:
                out[f"served_{name}"] = float(served[name])
        drifts = self.model.learner.drift_events
        out["drift_events"] = float(len(drifts))
        out["drift_events_rising"] = float(sum(d.rising for d in drifts))
        out["held"] = float(self.held)
        out["buffered"] = float(self.buffered)
        out["pending"] = float(self.trainer.pending)
        return out

    # --- persistence ---------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["on_prediction"] = None
        return state

    def to_bytes(self) -> bytes:
        """The whole core (model, kept inputs, held labels, merge buffer and watermarks, counters,
        metrics) as bytes: the learner job's checkpoint state. Pickle: load only what Highwater wrote."""
        return pickle.dumps((_FORMAT, self), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> LearnerCore:
        """A core saved with :meth:`to_bytes`; ValueError for anything else."""
        try:
            tag, core = pickle.loads(data)
        except Exception as exc:
            raise ValueError("not a learner job state") from exc
        if tag != _FORMAT or not isinstance(core, cls):
            raise ValueError(f"learner job state format {tag!r}, expected {_FORMAT!r}")
        return core


def _remember(recent: _RecentScores, time_ms: int, transaction_id: str) -> None:
    recent.order.append((time_ms, transaction_id))
    recent.ids[transaction_id] = time_ms
    recent.newest = max(recent.newest, time_ms)
    while recent.order and recent.order[0][0] < recent.newest - DUPLICATE_WINDOW_MS:
        old_time, old = recent.order.popleft()
        if recent.ids.get(old) == old_time:
            del recent.ids[old]


def _shared_strings(event: dict[str, Any]) -> dict[str, Any]:
    """The score with its input names, categories, card and merchant ids as one shared string object
    each: a decoder makes new strings per record, and the kept inputs of days of transactions are
    most of the checkpoint state, which pickles a shared string once (about 2.4x smaller, measured)."""
    inputs = {
        intern(name): intern(value) if type(value) is str else value
        for name, value in event["inputs"].items()
    }
    return {
        **event,
        "inputs": inputs,
        "card_id": intern(str(event["card_id"])),
        "merchant_id": intern(str(event["merchant_id"])),
    }


def _score_problem(event: dict[str, Any]) -> str | None:
    """Why a decoded score cannot be learned from (None when it can)."""
    probability = float(event["fraud_probability"])
    if not 0.0 <= probability <= 1.0:
        return f"fraud_probability: must be within [0, 1], got {probability!r}"
    for name, value in event["inputs"].items():
        if type(value) is float and math.isinf(value):
            return f"inputs.{name}: must be finite or null (NaN counts as null), got {value!r}"
        if "=" in name:
            return f"inputs: name {name!r} contains '=' (reserved for encoded indicators)"
    return None


def _duration(ms: int) -> str:
    """``3600000`` -> ``1h``, ``90000`` -> ``90s``: the hold in a reason."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
