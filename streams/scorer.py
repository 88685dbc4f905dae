"""Score transactions: the live fraud model on the card and merchant features as of each transaction.

:class:`Scorer` is what the gRPC ``ScoringService`` and the streaming scoring app share. For a transaction
(the fields of the ``transactions`` Avro schema, ``event_time`` in epoch ms) it

1. validates it (``schemas.validate``: an invalid one raises :class:`InvalidTransactionError` naming the
   fields);
2. reads every card feature (key ``card_id``) and merchant feature (key ``merchant_id``) the served
   generation holds, as of the transaction's ``event_time``, **with the transaction itself included**: it
   is passed to the online store as a pending event (:class:`sinks.online.PendingEvent`), which counts
   unless the stream job applied it already, so a transaction scored before or after its apply gets the
   same values (one pipelined Redis round trip for both entities; for a whole batch too);
3. scores those values with the live model version (:meth:`streams.fraud_model.FraudModel.score`):
   probability, the model's inputs and the top reasons.

An ``event_time`` older than the online clock minus the retention raises
:class:`EventTimeTooOldError` (the store's :class:`~sinks.online.AsOfTooOldError`): the store no longer
holds what such a score needs. A pending transaction counts even if the stream job would find it late
(beyond the allowed lateness) and never apply it: a score describes the transaction with itself.

The model comes from the model store (:mod:`sinks.model_store`). A background thread polls its live
version every ``refresh_s`` seconds; a new one is loaded off the request path and swapped in as one
reference, so a request scores wholly with the old or wholly with the new version and none fails during
a swap. A batch is scored with one version. Before any version is live, the scorer uses
:func:`~streams.fraud_model.initial_model` as version ``"0"``.

Example:
    >>> scorer = Scorer.from_settings(get_settings())                               # doctest: +SKIP
    >>> result = scorer.score({"transaction_id": "t1", "card_id": "c1", "customer_id": "u1",
    ...     "merchant_id": "m1", "amount": 42.0, "currency": "EUR", "event_time": 1772409600000,
    ...     "channel": "pos", "mcc": "5411", "latitude": 52.5, "longitude": 13.4})  # doctest: +SKIP
    >>> result.fraud_probability, result.model_version                              # doctest: +SKIP
    (0.0123, '7')
    >>> result.features["card_txn_count_1h"].value                                  # doctest: +SKIP
    3
    >>> scorer.close()                                                              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from schemas.catalog import TRANSACTIONS
from schemas.codec import decode_schema
from schemas.validate import validate_event
from sinks.online import (
    AsOfTooOldError,
    FeatureNotHeldError,
    FeatureValue,
    OnlineStore,
    PendingEvent,
    ReadRequest,
)
from streams.features import REGISTRY, FeatureRegistry
from streams.fraud_model import INITIAL_VERSION, FraudModel, initial_model
from streams.learner import Reason

if TYPE_CHECKING:
    from highwater.settings import Settings
    from sinks.model_store import ModelStore

logger = logging.getLogger(__name__)

DEFAULT_REASONS = 3
"""How many top reasons a score carries."""
SCORED_ENTITIES = ("card", "merchant")
"""The entities whose features a score reads, each keyed by its key field in the transaction."""


class InvalidTransactionError(ValueError):
    """A transaction that cannot be scored; ``problems`` are ``(field, message)`` pairs.

    ``index`` is the transaction's position in a batch (None for a single one). ``str()`` reads
    ``amount: must be >= 0, got -1.0`` (problems joined by ``; ``).

    Example:
        >>> str(InvalidTransactionError([("amount", "must be >= 0, got -1.0")], index=3))
        'amount: must be >= 0, got -1.0'
    """

    def __init__(self, problems: Sequence[tuple[str, str]], index: int | None = None) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
        self.problems = list(problems)
        self.index = index


class EventTimeTooOldError(AsOfTooOldError):
    """The transaction's ``event_time`` is older than the online clock minus the retention.

    The store's :class:`~sinks.online.AsOfTooOldError` with the transaction's position in a batch
    (``index``, None for a single one).
    """

    def __init__(self, cause: AsOfTooOldError, index: int | None = None) -> None:
        super().__init__(cause.as_of_ms, cause.clock_ms, cause.retention_ms)
        self.index = index


class ModelHorizonError(ValueError):
    """The live model cannot compute its label features that far back (``event_time`` more than its
    horizon behind a time it already answered); ``index`` as in :class:`InvalidTransactionError`."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class ScoreResult:
    """One transaction's score, with what it was computed from.

    ``features``: the card then merchant feature values served (as of ``event_time``, the transaction
    included), by name; ``inputs``: everything the model read (:meth:`FraudModel.inputs`); ``reasons``:
    the inputs that pushed the score most towards fraud, largest first.

    Example:
        >>> result = scorer.score(transaction)                                        # doctest: +SKIP
        >>> result.features["card_amount_max_24h"], result.reasons[0].feature         # doctest: +SKIP
        (FeatureValue(value=912.5, latest_event_time_ms=1772409600000), 'amount_vs_card_max_24h')
    """

    transaction_id: str
    fraud_probability: float
    model_version: str
    features: dict[str, FeatureValue]
    inputs: dict[str, Any]
    reasons: list[Reason]
    event_time_ms: int
    clock_ms: int | None
    """The online store's event-time clock when the features were read (None before any apply)."""


class _LiveModel(NamedTuple):
    version: str
    model: FraudModel


class Scorer:
    """Scores transactions with the live model on online features; see the module docstring.

    ``store``: the online store (read-only here); ``models``: the model store to follow (None: always
    :func:`initial_model`). ``owned`` stores are closed by :meth:`close`. ``refresh_s`` <= 0 starts no
    refresher thread (call :meth:`refresh` yourself). Thread-safe: one scorer serves every thread.

    Example:
        >>> scorer = Scorer(RedisOnlineStore.from_settings(s, follow_live=True),          # doctest: +SKIP
        ...                 model_store_from_settings(s), refresh_s=s.model.refresh_s)
        >>> [r.model_version for r in scorer.score_batch([txn1, txn2])]                   # doctest: +SKIP
        ['4', '4']
    """

    def __init__(
        self,
        store: OnlineStore,
        models: ModelStore | None,
        *,
        registry: FeatureRegistry = REGISTRY,
        refresh_s: float = 2.0,
        reasons: int = DEFAULT_REASONS,
        owned: Sequence[OnlineStore | ModelStore] = (),
    ) -> None:
        self._store = store
        self._models = models
        self._registry = registry
        self._reasons = reasons
        self._owned = list(owned)
        self._keys = {name: registry.entity(name).key_field for name in SCORED_ENTITIES}
        self._live = _LiveModel(INITIAL_VERSION, initial_model())
        self._features = self._all_features()
        self._refresh_lock = threading.Lock()
        self._failing = False
        self._stop = threading.Event()
        self.refresh()
        self._thread: threading.Thread | None = None
        if refresh_s > 0:
            self._thread = threading.Thread(
                target=self._refresh_loop, args=(refresh_s,), name="highwater-model-refresh", daemon=True
            )
            self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings, *, registry: FeatureRegistry = REGISTRY) -> Scorer:
        """A scorer on the Redis online store (following the live generation) and the configured model
        store (``model.store``), refreshing every ``model.refresh_s``; :meth:`close` closes both."""
        from sinks.model_store import model_store_from_settings
        from sinks.redis_online import RedisOnlineStore

        store = RedisOnlineStore.from_settings(settings, registry, follow_live=True)
        models = model_store_from_settings(settings)
        return cls(
            store, models, registry=registry, refresh_s=settings.model.refresh_s, owned=(store, models)
        )

    # --- scoring ------------------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        """The version scores are computed with now."""
        return self._live.version

    def score(self, transaction: Mapping[str, Any]) -> ScoreResult:
        """Score one transaction (see the module docstring for what is read and raised)."""
        return self._score([transaction], single=True)[0]

    def score_batch(self, transactions: Sequence[Mapping[str, Any]]) -> list[ScoreResult]:
        """Score each transaction as :meth:`score` would alone (none sees another one of the batch as
        pending), with one model version and one Redis round trip for the whole batch.

        Errors carry the failing transaction's ``index``; the first invalid one is raised before any read.
        """
        return self._score(transactions, single=False)

    def _score(self, transactions: Sequence[Mapping[str, Any]], *, single: bool) -> list[ScoreResult]:
        records = [self._checked(t, None if single else i) for i, t in enumerate(transactions)]
        if not records:
            return []
        live = self._live  # one version for the whole call, whatever a refresh swaps in meanwhile
        values = self._read(records, single)
        results = []
        for index, (record, (features, clock)) in enumerate(zip(records, values, strict=True)):
            try:
                scored = live.model.score(record, {n: v.value for n, v in features.items()}, self._reasons)
            except ValueError as error:  # the label features' bounded history (see LabelFeatures)
                raise ModelHorizonError(str(error), None if single else index) from None
            results.append(
                ScoreResult(
                    str(record["transaction_id"]),
                    scored.probability,
                    live.version,
                    features,
                    scored.inputs,
                    scored.reasons,
                    int(record["event_time"]),
                    clock,
                )
            )
        return results

    def _checked(self, transaction: Mapping[str, Any], index: int | None) -> dict[str, Any]:
        record = dict(transaction)
        missing = [(name, "required, missing") for name in _REQUIRED if record.get(name) is None]
        if missing:
            raise InvalidTransactionError(missing, index)
        errors = validate_event(TRANSACTIONS, record)
        if errors:
            raise InvalidTransactionError([_problem(e) for e in errors], index)
        return record

    def _read(
        self, records: list[dict[str, Any]], single: bool
    ) -> list[tuple[dict[str, FeatureValue], int | None]]:
        """Per record, its card and merchant features (in that order) and the clock; retries once when
        the served generation changed and lacks a feature it held."""
        for attempt in range(2):
            features = self._features
            requests = []
            for record in records:
                pending = PendingEvent.from_record(record, self._registry)
                as_of = int(record["event_time"])
                for entity in SCORED_ENTITIES:
                    ids = [str(record[self._keys[entity]])]
                    requests.append(ReadRequest(entity, ids, features[entity], as_of, pending))
            answers = self._store.read_many(requests)
            not_held = next((a for a in answers if isinstance(a, FeatureNotHeldError)), None)
            if not_held is not None and attempt == 0:
                logger.info("served generation changed (%s); re-reading what it holds", not_held)
                self._features = self._held_features()
                continue
            break
        out = []
        per = len(SCORED_ENTITIES)
        for index in range(len(records)):
            row: dict[str, FeatureValue] = {}
            clock = None
            for answer in answers[index * per : (index + 1) * per]:
                if isinstance(answer, AsOfTooOldError):
                    raise EventTimeTooOldError(answer, None if single else index) from None
                if isinstance(answer, Exception):
                    raise answer
                row.update(answer.rows[0])
                clock = answer.clock_ms
            out.append((row, clock))
        return out

    # --- the live model and what the generation holds ----------------------------------------------
    def refresh(self) -> bool:
        """Look once for a new live model version and for the features the served generation holds;
        swap a new version in. Returns whether the version changed. Failures are logged, not raised:
        the scorer keeps what it has."""
        with self._refresh_lock:
            changed = False
            try:
                changed = self._refresh_model()
                self._features = self._held_features()
                if self._failing:
                    logger.info("model and feature refresh works again (version %s)", self._live.version)
                self._failing = False
            except Exception as error:
                # Logged once per failure streak: a refresher polling a dead server every 2 s must not
                # flood the log.
                if not self._failing:
                    logger.warning(
                        "cannot refresh the model version or the served features (keeping version %s): "
                        "%s: %s",
                        self._live.version,
                        type(error).__name__,
                        error,
                    )
                self._failing = True
            return changed

    def _refresh_model(self) -> bool:
        if self._models is None:
            return False
        live = self._models.live()
        version = live.version if live is not None else INITIAL_VERSION
        if version == self._live.version:
            return False
        model = initial_model() if live is None else FraudModel.from_bytes(self._models.load(version))
        previous, self._live = self._live.version, _LiveModel(version, model)
        logger.info("scoring with model version %s (was %s)", version, previous)
        return True

    def _held_features(self) -> dict[str, list[str]]:
        unheld = self._registry.unheld(self._store.served_layouts())
        return {
            entity: [f.name for f in self._registry.features_of(entity) if f.name not in unheld]
            for entity in SCORED_ENTITIES
        }

    def _all_features(self) -> dict[str, list[str]]:
        return {entity: [f.name for f in self._registry.features_of(entity)] for entity in SCORED_ENTITIES}

    def _refresh_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.refresh()

    def close(self) -> None:
        """Stop the refresher and close the stores this scorer owns."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for owned in self._owned:
            close = getattr(owned, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _required_fields() -> tuple[str, ...]:
    """The transaction fields the Avro schema requires (those whose type is not a union with null)."""
    fields = decode_schema(TRANSACTIONS)["fields"]
    return tuple(f["name"] for f in fields if not (isinstance(f["type"], list) and "null" in f["type"]))


_REQUIRED = _required_fields()


def _problem(error: str) -> tuple[str, str]:
    """``"amount: must be >= 0"`` as ``("amount", "must be >= 0")`` (validation messages name the field)."""
    field, _, message = error.partition(": ")
    return field, message
