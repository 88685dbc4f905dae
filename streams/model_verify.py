"""Compare two fraud-model versions on a fixed probe set: did a replay rebuild the same model?

The learner job is deterministic (:mod:`streams.learner_job`), so a replay of the log up to a version's
offsets must give that version's model exactly. :func:`compare_models` checks it where it matters, on
what scoring computes from a model, for every probe transaction:

* the probability the learner gives the probe's inputs, compared bit for bit (``float.hex``);
* the label features the model's label history gives the probe's merchant and card as of its
  event_time (read only: comparing changes neither model);

and, once per model, what the learner has been taught (labels learned per class, drift events). Any
difference is listed. A probe set is fixed input: e.g. the first records of ``fraud-scores``
(:func:`probes_from_log`: the transactions and the inputs they were scored with), so the same probes are
used whichever versions are compared.

Example:
    >>> probes = probes_from_log(settings, 500)                  # doctest: +SKIP
    >>> result = verify_versions(store, "7", "12", probes)       # doctest: +SKIP
    >>> result.identical, len(result.differences)                # doctest: +SKIP
    (True, 0)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from highwater.settings import Settings
from schemas.catalog import FRAUD_SCORES
from schemas.serde import AvroSerde, SerdeError
from sinks.model_store import ModelStore
from streams.fraud_model import FraudModel
from streams.kafka_source import data_messages, log_end_offsets


@dataclass(frozen=True)
class Probe:
    """One probe transaction: its ids, event_time and model inputs (used as given for the learner)."""

    transaction_id: str
    card_id: str
    merchant_id: str
    event_time: int
    inputs: Mapping[str, Any]

    @classmethod
    def from_score(cls, record: Mapping[str, Any]) -> Probe:
        """The probe a ``fraud-scores`` record describes.

        Example:
            >>> Probe.from_score({"transaction_id": "t1", "card_id": "c1", "merchant_id": "m1",
            ...                   "event_time": 5, "inputs": {"amount": 1.0}}).inputs
            {'amount': 1.0}
        """
        return cls(
            str(record["transaction_id"]),
            str(record["card_id"]),
            str(record["merchant_id"]),
            int(record["event_time"]),
            dict(record["inputs"]),
        )


@dataclass(frozen=True)
class Difference:
    """Something the two models disagree on: ``probe`` is a transaction id, or ``*`` for the model."""

    probe: str
    what: str
    a: Any
    b: Any


@dataclass
class ModelComparison:
    """The result of comparing models ``a`` and ``b`` on ``probes`` probe transactions."""

    a: str
    b: str
    probes: int
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Whether nothing differed."""
        return not self.differences


def compare_models(
    a: FraudModel, b: FraudModel, probes: Sequence[Probe], *, names: tuple[str, str] = ("a", "b")
) -> ModelComparison:
    """Compare two models on ``probes`` (see the module docstring).

    Example:
        >>> from streams.fraud_model import initial_model
        >>> probe = Probe("t1", "c1", "m1", 0, {"amount": 12.5})
        >>> compare_models(initial_model(), initial_model(), [probe]).identical
        True
    """
    result = ModelComparison(names[0], names[1], len(probes))
    diff = result.differences
    for what, left, right in (
        ("labels learned (total, fraud, legit)", _taught(a), _taught(b)),
        ("drift events", a.learner.drift_events, b.learner.drift_events),
    ):
        if left != right:
            diff.append(Difference("*", what, left, right))
    for probe in sorted(probes, key=lambda p: (p.event_time, p.transaction_id)):
        pa, pb = a.learner.predict_proba(probe.inputs), b.learner.predict_proba(probe.inputs)
        if pa.hex() != pb.hex():
            diff.append(Difference(probe.transaction_id, "probability", pa, pb))
        fa, fb = _label_features(a, probe), _label_features(b, probe)
        for name in sorted(set(fa) | set(fb)):
            if fa.get(name) != fb.get(name):
                diff.append(Difference(probe.transaction_id, name, fa.get(name), fb.get(name)))
    return result


def verify_versions(store: ModelStore, a: str, b: str, probes: Sequence[Probe]) -> ModelComparison:
    """Load versions ``a`` and ``b`` from ``store`` and compare them on ``probes``; ModelStoreError if
    either is unknown."""
    left = FraudModel.from_bytes(store.load(a))
    right = FraudModel.from_bytes(store.load(b))
    return compare_models(left, right, probes, names=(a, b))


def probes_from_log(
    settings: Settings, count: int = 1_000, topic: str = FRAUD_SCORES, timeout_s: float = 30.0
) -> list[Probe]:
    """The first records of ``topic`` (values in the ``fraud-scores`` schema): up to ``count``, taken
    evenly from its partitions from their beginning (so the same set every time while the log keeps
    them). Undecodable records are skipped."""
    ends = {p: span for p, span in log_end_offsets(settings, topic).items() if span[1] > span[0]}
    if not ends or count <= 0:
        return []
    share = -(-count // len(ends))
    wanted = {p: min(low + share, high) for p, (low, high) in ends.items()}
    serde = AvroSerde(settings.schema_registry_url)
    consumer = Consumer(
        settings.kafka_config(**{"group.id": "highwater-model-verify", "enable.auto.commit": False})
    )
    found: dict[tuple[int, int], Probe] = {}
    try:
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
        remaining = set(wanted)
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: probes not read within {timeout_s} s (partitions {remaining})")
            for message in data_messages(consumer.consume(1_000, 0.5)):
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                if partition not in remaining or offset >= wanted[partition]:
                    continue
                # A malformed record is no probe (the learner dead-letters it).
                with contextlib.suppress(SerdeError, KeyError, TypeError, ValueError):
                    found[(partition, offset)] = Probe.from_score(serde.decode(FRAUD_SCORES, message.value()))
                if offset + 1 >= wanted[partition]:
                    remaining.discard(partition)
    finally:
        consumer.close()
    return [found[key] for key in sorted(found)][:count]


def _taught(model: FraudModel) -> tuple[int, int, int]:
    stats = model.learner.stats
    return stats.learned, stats.fraud, stats.legit


def _label_features(model: FraudModel, probe: Probe) -> dict[str, Any]:
    try:
        return model.label_features.features(
            probe.merchant_id, probe.card_id, as_of=probe.event_time, advance=False
        )
    except ValueError as exc:  # too far behind the model's clock: compare the refusal itself
        return {"error": str(exc)}
