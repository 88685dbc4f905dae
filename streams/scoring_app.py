"""Streaming scores: a Quix Streams application that puts a fraud score on the log for every transaction.

    transactions (Avro, Confluent wire format; Quix AvroDeserializer through the schema registry)
      -> skip what the feature job dead-letters (undecodable, unknown schema id, failing validate_event)
      -> wait (bounded) until the feature job has applied the card's earlier transactions
      -> Scorer.score (live model, card and merchant features as of event_time, the transaction included)
      -> fraud-scores (FraudScore, Quix AvroSerializer through the registry, subject fraud-scores-value),
         keyed by transaction_id, into the partition the transaction was read from
         (:class:`CoPartitionedScores`, a Quix sink: each scores partition follows one transactions
         partition in log order, so the learner's event-time merge sees them in order)

**Delivery.** At least once: Quix stores a record's offset after its score was handed to the producer
and commits offsets only after the producer flushed (``processing_guarantee="at-least-once"``), so a
crash re-scores, never loses. Scores are keyed by ``transaction_id``, so a re-delivered transaction (or
a re-scored one) yields a second record with the same key: a keyed consumer (a compacted topic, an
upsert) keeps one score per transaction, and the learner joins labels by that key.

**Malformed records** are not scored and not dead-lettered a second time (the feature job routes them to
``dead-letter``); they are counted by the job's reason. Valid records go through Quix's
``AvroDeserializer`` (:class:`WholeValueAvroDeserializer`: it also refuses what the job's decoder,
:class:`schemas.serde.AvroSerde`, refuses, such as bytes after the Avro body, which Confluent's
deserializer ignores). A record it cannot deserialize reaches :meth:`ScoringPipeline.on_consumer_error`
(Quix's ``on_consumer_error`` hook), which decodes the raw bytes once more with ``AvroSerde`` to name
the reason (``undecodable``, ``unknown_schema_id``) and suppresses the error. A failure that is not
about the record (the registry unreachable, a broker error) is not suppressed: the app stops without
committing, and a restart re-reads.

**Exact card features.** Transactions are keyed by ``card_id``, so all of a card's earlier transactions
sit before it in the same partition. Before scoring the record at offset ``o`` of partition ``p``,
:class:`FeatureGate` waits (at most ``max_wait_ms``) until the feature job's checkpoint for ``p`` in the
live generation says it applied everything before ``o``; the scorer adds the transaction itself. So a
card's features are exact whenever the job keeps up within the bound; otherwise the record is scored
anyway and counted as ``scored_ahead_of_features``. Merchant features aggregate transactions from every
partition: they are best effort (what the job had applied when the record was scored).

Example:
    >>> stats = run_scoring(get_settings(), until_end=True)   # doctest: +SKIP
    >>> stats.scored, dict(stats.skipped)                    # doctest: +SKIP
    (12000, {'undecodable': 1, 'validation_failed': 1})
    $ highwater score-stream --until-end
"""

from __future__ import annotations

import json
import logging
import numbers
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from quixstreams import Application, message_context
from quixstreams.error_callbacks import default_on_consumer_error
from quixstreams.models import RawConfluentKafkaMessageProto, Topic
from quixstreams.models.serializers import SerializationContext
from quixstreams.models.serializers.avro import AvroDeserializer, AvroSerializer
from quixstreams.models.serializers.exceptions import SerializationError
from quixstreams.models.serializers.schema_registry import (
    SchemaRegistryClientConfig,
    SchemaRegistrySerializationConfig,
)
from quixstreams.sinks import BaseSink

from highwater.progress import progress_bar
from highwater.settings import Settings, get_settings
from highwater.topics import TOPICS, ensure_topics
from schemas.catalog import CATALOG, FRAUD_SCORES, TRANSACTIONS
from schemas.serde import AvroSerde, SerdeError
from schemas.validate import validate_event
from sinks.online import AsOfTooOldError
from sinks.redis_online import RedisOnlineStore, live_generation
from streams.kafka_source import log_end_offsets
from streams.scorer import InvalidTransactionError, ModelHorizonError, Scorer, ScoreResult

log = logging.getLogger(__name__)

DEFAULT_MAX_WAIT_MS = 2_000
"""How long a record may wait for the feature job to apply its partition's earlier records."""
GATE_POLL_MS = 20
"""How often a waiting record re-reads the feature job's checkpoints."""
DEFAULT_IDLE_TIMEOUT_S = 30.0
"""Bounded mode gives up when no record arrived for this long before the log end was reached."""
FETCH_BYTES_PER_PARTITION = 16_384
"""librdkafka ``max.partition.fetch.bytes`` of the scoring app: about 150 transactions per fetch."""
SESSION_TIMEOUT_MS = 10_000
"""Consumer session timeout: a dead instance's partitions move on after this long. librdkafka's 45 s
default also made the first group join on the local broker take about 23 s (10 s: about 3 s)."""
LOG_EVERY = 1_000
"""A repeated skip reason is logged on its first occurrence and then once per this many."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


# --- what the app counts ------------------------------------------------------------------------
class SkipReason(StrEnum):
    """Why a record got no score. The first three are the feature job's dead-letter kinds."""

    UNDECODABLE = "undecodable"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
    VALIDATION_FAILED = "validation_failed"
    DESERIALIZER_ERROR = "deserializer_error"
    """Quix's deserializer failed on bytes the feature job's decoder reads (logged with the error)."""
    AS_OF_TOO_OLD = "as_of_too_old"
    """event_time older than the online clock minus the retention: the features are gone."""
    MODEL_HORIZON = "model_horizon"
    """event_time more than the label features' horizon behind the live model version's latest time."""


@dataclass
class ScoringStats:
    """What one run did: records scored, skipped (by reason), and how scoring met the feature job.

    ``waited``: records that found the job behind and got its checkpoint within the bound;
    ``waited_ms``: all time spent waiting, timed-out waits included; ``scored_ahead_of_features``:
    records scored before the job had applied their partition's earlier records. ``reached_end``:
    bounded mode stopped at the log end (False: it gave up after the idle timeout).

    Example:
        >>> stats = ScoringStats(scored=9)
        >>> stats.skipped["undecodable"] += 1
        >>> stats.processed, stats.summary()
        (10, 'scored 9, skipped 1 (undecodable 1), waited 0 (0 ms), scored ahead of features 0')
    """

    scored: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    waited: int = 0
    waited_ms: float = 0.0
    scored_ahead_of_features: int = 0
    reached_end: bool | None = None

    @property
    def processed(self) -> int:
        """Records read: scored or skipped."""
        return self.scored + sum(self.skipped.values())

    def summary(self) -> str:
        """One line for logs and the CLI."""
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
        skipped = f"skipped {sum(self.skipped.values())}" + (f" ({reasons})" if reasons else "")
        return (
            f"scored {self.scored}, {skipped}, waited {self.waited} ({self.waited_ms:.0f} ms), "
            f"scored ahead of features {self.scored_ahead_of_features}"
        )


# --- waiting for the feature job ---------------------------------------------------------------------
class Admission(StrEnum):
    """How a record met the feature job: already applied, applied after a wait, or not in time."""

    READY = "ready"
    WAITED = "waited"
    AHEAD = "ahead"


class FeatureGate:
    """Holds a record back until the feature job applied its partition's earlier records, for a bound.

    ``next_offsets()`` returns the job's next offset per partition (its checkpoints); it is called only
    when the cached answer does not cover a record already. After a wait on partition ``p`` times out,
    records of ``p`` are let through without waiting until the job has caught up with the offset that
    timed out: a stopped or far-behind job costs one wait, not one per record.

    Example:
        >>> offsets = {0: 10}
        >>> gate = FeatureGate(lambda: offsets, max_wait_ms=0)
        >>> gate.admit(0, 10), gate.admit(0, 11), gate.admit(1, 0)
        (<Admission.READY: 'ready'>, <Admission.AHEAD: 'ahead'>, <Admission.READY: 'ready'>)
    """

    def __init__(
        self,
        next_offsets: Callable[[], Mapping[int, int]],
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        poll_ms: float = GATE_POLL_MS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._next_offsets = next_offsets
        self._max_wait_s = max_wait_ms / 1000
        self._poll_s = max(poll_ms, 1) / 1000
        self._clock = clock
        self._sleep = sleep
        self._applied: dict[int, int] = {}
        self._behind_until: dict[int, int] = {}
        self._refreshed_at = float("-inf")
        self.last_wait_s = 0.0
        """How long the last :meth:`admit` waited."""

    def _refresh(self) -> None:
        self._applied = dict(self._next_offsets())
        self._refreshed_at = self._clock()

    def _covers(self, partition: int, offset: int) -> bool:
        return self._applied.get(partition, 0) >= offset

    def admit(self, partition: int, offset: int) -> Admission:
        """Wait until the job applied ``partition`` up to ``offset`` (exclusive) or the bound passed."""
        self.last_wait_s = 0.0
        if self._covers(partition, offset):
            return Admission.READY
        behind_until = self._behind_until.get(partition)
        if behind_until is not None:
            # The job missed the bound here before: look again at most once per poll, never wait.
            if self._clock() - self._refreshed_at >= self._poll_s:
                self._refresh()
            if self._applied.get(partition, 0) < behind_until:
                return Admission.READY if self._covers(partition, offset) else Admission.AHEAD
            del self._behind_until[partition]
        self._refresh()
        if self._covers(partition, offset):
            return Admission.READY
        start = self._clock()
        deadline = start + self._max_wait_s
        while (now := self._clock()) < deadline:
            self._sleep(min(self._poll_s, deadline - now))
            self._refresh()
            if self._covers(partition, offset):
                self.last_wait_s = self._clock() - start
                return Admission.WAITED
        self.last_wait_s = self._clock() - start
        self._behind_until[partition] = offset
        return Admission.AHEAD

    def close(self) -> None:
        """Close the checkpoint source when it holds a connection."""
        close = getattr(self._next_offsets, "close", None)
        if callable(close):
            close()


class LiveCheckpoints:
    """The feature job's next offset per ``transactions`` partition in the live generation.

    The live generation is what the scorer reads (it follows the live pointer), so it is looked up at
    every call: after a promotion the gate waits on the new generation's job.

    Example:
        >>> LiveCheckpoints(get_settings())()   # doctest: +SKIP
        {0: 3012, 1: 2987, 2: 3050, 3: 2951}
    """

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self._settings = settings
        self._client = client or redis.Redis.from_url(
            settings.redis_url, socket_timeout=30.0, socket_connect_timeout=5.0
        )
        self._stores: dict[str, RedisOnlineStore] = {}

    def __call__(self) -> dict[int, int]:
        generation = live_generation(self._settings, self._client)
        store = self._stores.get(generation)
        if store is None:
            store = RedisOnlineStore(self._client, self._settings.for_generation(generation))
            self._stores[generation] = store
        return {p: c.next_offset for p, c in store.checkpoints(TRANSACTIONS).items()}

    def close(self) -> None:
        """Close the Redis connection."""
        self._client.close()


# --- one record --------------------------------------------------------------------------------------
def epoch_ms(value: int | datetime) -> int:
    """A ``timestamp-millis`` value as epoch ms (Quix's Avro deserializer gives a UTC ``datetime``).

    Example:
        >>> epoch_ms(datetime(2026, 3, 2, 0, 0, 0, 123000, tzinfo=UTC)), epoch_ms(5)
        (1772409600123, 5)
    """
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MILLISECOND
    return int(value)


def avro_inputs(inputs: Mapping[str, Any]) -> dict[str, bool | int | float | str | None]:
    """``inputs`` with every value one of the FraudScore map's union types (null, boolean, long, double,
    string); numpy scalars become Python ones. Anything else is a TypeError naming the input.

    Example:
        >>> avro_inputs({"n": 3, "amount": 12.5, "channel": None, "fresh": True})
        {'n': 3, 'amount': 12.5, 'channel': None, 'fresh': True}
    """
    return {str(name): _avro_scalar(str(name), value) for name, value in inputs.items()}


def _avro_scalar(name: str, value: Any) -> bool | int | float | str | None:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # numpy.bool_ and other numpy scalars
    if callable(item):
        native = item()
        if native is None or isinstance(native, bool | int | float | str):
            return _avro_scalar(name, native)
    raise TypeError(
        f"inputs[{name!r}]: {type(value).__name__} {value!r} is not null, boolean, long, double or string"
    )


def fraud_score(transaction: Mapping[str, Any], result: ScoreResult, score_time_ms: int) -> dict[str, Any]:
    """The FraudScore value (``schemas/avro/fraud_score.avsc``) of a scored transaction.

    Example:
        >>> from types import SimpleNamespace
        >>> txn = {"transaction_id": "t1", "card_id": "c1", "merchant_id": "m1", "event_time": 1_000}
        >>> res = SimpleNamespace(transaction_id="t1", fraud_probability=0.25, model_version="3",
        ...                       inputs={"amount": 9.5})
        >>> fraud_score(txn, res, 2_000)["inputs"], fraud_score(txn, res, 2_000)["score_time"]
        ({'amount': 9.5}, 2000)
    """
    return {
        "transaction_id": str(transaction["transaction_id"]),
        "fraud_probability": float(result.fraud_probability),
        "model_version": str(result.model_version),
        "score_time": score_time_ms,
        "event_time": int(transaction["event_time"]),
        "card_id": str(transaction["card_id"]),
        "merchant_id": str(transaction["merchant_id"]),
        "inputs": avro_inputs(result.inputs),
    }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ScoringPipeline:
    """The per-record logic of the app, apart from Quix: skip, wait, score, count.

    ``on_position(partition, offset)`` is told every record read, scored or not (bounded mode stops
    and the progress bar moves with it).

    Example:
        >>> gate = FeatureGate(LiveCheckpoints(settings))                          # doctest: +SKIP
        >>> pipeline = ScoringPipeline(scorer, gate, AvroSerde(url))               # doctest: +SKIP
        >>> pipeline.score_record(transaction, partition=0, offset=41)["fraud_probability"]  # doctest: +SKIP
        0.0123
    """

    def __init__(
        self,
        scorer: Scorer,
        gate: FeatureGate,
        serde: AvroSerde,
        stats: ScoringStats | None = None,
        *,
        owns_scorer: bool = False,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.scorer = scorer
        self._owns_scorer = owns_scorer
        self.gate = gate
        self.stats = stats if stats is not None else ScoringStats()
        self.on_position: Callable[[int, int], None] | None = None
        self._serde = serde
        self._clock_ms = clock_ms

    def score_record(
        self, value: Mapping[str, Any] | None, partition: int, offset: int
    ) -> dict[str, Any] | None:
        """The FraudScore of the transaction ``value`` read at (``partition``, ``offset``), or None when
        it is not scored (counted in ``stats.skipped``)."""
        if value is None:  # a tombstone: the feature job's decoder calls it undecodable too
            self._skip(SkipReason.UNDECODABLE, partition, offset, "value is empty")
            return None
        transaction = dict(value)
        if "event_time" in transaction:
            transaction["event_time"] = epoch_ms(transaction["event_time"])
        errors = validate_event(TRANSACTIONS, transaction)
        if errors:
            self._skip(SkipReason.VALIDATION_FAILED, partition, offset, "; ".join(errors))
            return None
        admission = self.gate.admit(partition, offset)
        self.stats.waited_ms += self.gate.last_wait_s * 1000
        if admission is Admission.WAITED:
            self.stats.waited += 1
        try:
            result = self.scorer.score(transaction)
        except AsOfTooOldError as exc:
            self._skip(SkipReason.AS_OF_TOO_OLD, partition, offset, str(exc))
            return None
        except InvalidTransactionError as exc:  # validated above; the scorer checks the same rules
            self._skip(SkipReason.VALIDATION_FAILED, partition, offset, str(exc))
            return None
        except ModelHorizonError as exc:
            self._skip(SkipReason.MODEL_HORIZON, partition, offset, str(exc))
            return None
        if admission is Admission.AHEAD:
            self.stats.scored_ahead_of_features += 1
        self.stats.scored += 1
        return fraud_score(transaction, result, self._clock_ms())

    def _skip(self, reason: str, partition: int, offset: int, detail: str) -> None:
        self.stats.skipped[reason] += 1
        n = self.stats.skipped[reason]
        if n == 1 or n % LOG_EVERY == 0:
            log.warning(
                "not scored (%s, %d so far): %s[%d]@%d: %s",
                reason,
                n,
                TRANSACTIONS,
                partition,
                offset,
                detail,
            )

    def close(self) -> None:
        """Close the gate's connection, and the scorer when the pipeline created it."""
        self.gate.close()
        if self._owns_scorer:
            self.scorer.close()

    def on_message_processed(self, topic: str, partition: int, offset: int) -> None:
        """Quix's ``on_message_processed`` hook: a record was handled (scored or skipped)."""
        if self.on_position is not None:
            self.on_position(partition, offset)

    def on_consumer_error(
        self, exc: Exception, message: RawConfluentKafkaMessageProto | None, logger: logging.Logger
    ) -> bool:
        """Quix's ``on_consumer_error`` hook: count and suppress records that cannot be deserialized.

        Returns False (Quix raises, the app stops uncommitted) for errors that are not about one
        record's bytes, and when the feature job's decoder fails for another reason (e.g. the registry
        is unreachable): a restart will read the record again.
        """
        if message is None or message.error() is not None or message.topic() != TRANSACTIONS:
            return bool(default_on_consumer_error(exc, message, logger))
        partition, offset, value = message.partition(), message.offset(), message.value()
        if partition is None or offset is None:
            return bool(default_on_consumer_error(exc, message, logger))
        try:
            self._serde.decode(TRANSACTIONS, value.encode() if isinstance(value, str) else value)
        except SerdeError as error:  # the feature job dead-letters it with this kind
            reason, detail = error.kind, str(error)
        except Exception:
            return bool(default_on_consumer_error(exc, message, logger))
        else:
            reason, detail = SkipReason.DESERIALIZER_ERROR.value, f"{type(exc).__name__}: {exc}"
        self._skip(reason, partition, offset, detail)
        self.on_message_processed(TRANSACTIONS, partition, offset)
        return True


# --- the application ---------------------------------------------------------------------------------
class WholeValueAvroDeserializer(AvroDeserializer):
    """Quix's ``AvroDeserializer`` through the registry that also refuses what the feature job's decoder
    refuses, so that exactly the records the job dead-letters go unscored.

    Confluent's deserializer, which Quix calls, ignores bytes after the Avro body; the feature job's
    :class:`~schemas.serde.AvroSerde` calls such a record undecodable. The value is therefore also read
    by ``AvroSerde`` (a few microseconds; scoring takes milliseconds), and a refusal raises Quix's
    ``SerializationError``, which reaches ``on_consumer_error``. The record handed on is Quix's.

    Example:
        >>> deserializer = WholeValueAvroDeserializer(                         # doctest: +SKIP
        ...     AvroSerde(url), TRANSACTIONS, schema=schema, schema_registry_client_config=config)
    """

    def __init__(self, serde: AvroSerde, topic: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._serde = serde
        self._topic = topic

    def __call__(self, value: bytes, ctx: SerializationContext) -> Any:
        record = super().__call__(value, ctx)
        try:
            self._serde.decode(self._topic, value)
        except SerdeError as exc:
            raise SerializationError(str(exc)) from exc
        return record


def _avro_schema(topic: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(CATALOG.entry(topic).text)
    return schema


def build_app(
    settings: Settings,
    scorer: Scorer | None = None,
    *,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    gate: FeatureGate | None = None,
) -> tuple[Application, ScoringPipeline]:
    """The Quix Streams application scoring ``transactions`` into ``fraud-scores``, and its pipeline.

    Consumer group ``settings.model.consumer_group``, at-least-once, from the earliest offset when the
    group has none. Topics are the platform's own (``highwater.topics``, created here when missing, never
    by Quix). ``scorer`` defaults to ``Scorer.from_settings(settings)``; ``gate`` to a
    :class:`FeatureGate` on :class:`LiveCheckpoints` with ``max_wait_ms``.

    Example:
        >>> app, pipeline = build_app(get_settings())   # doctest: +SKIP
        >>> app.run()                                    # doctest: +SKIP
    """
    owns_scorer = scorer is None
    scorer = scorer or Scorer.from_settings(settings)
    gate = gate or FeatureGate(LiveCheckpoints(settings), max_wait_ms)
    serde = AvroSerde(settings.schema_registry_url)
    pipeline = ScoringPipeline(scorer, gate, serde, owns_scorer=owns_scorer)
    ensure_topics(settings, [spec for spec in TOPICS if spec.name in (TRANSACTIONS, FRAUD_SCORES)])
    registry = SchemaRegistryClientConfig(url=settings.schema_registry_url)
    app = Application(
        broker_address=settings.broker_bootstrap,
        consumer_group=settings.model.consumer_group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        auto_create_topics=False,
        use_changelog_topics=False,
        state_dir=settings.state_dir / "quix",
        consumer_extra_config={
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            # Small fetches per partition interleave a backlog's partitions finely. The learner's merge
            # waits for the slowest scores partition, so with partitions read a megabyte at a time the
            # live model scoring the fast ones falls days behind them (stale label features, worse
            # scores: the demo's online AUC dropped from 0.997 to 0.969 without this).
            "max.partition.fetch.bytes": FETCH_BYTES_PER_PARTITION,
        },
        producer_extra_config={"enable.idempotence": True, "acks": "all"},
        on_consumer_error=pipeline.on_consumer_error,
        on_message_processed=pipeline.on_message_processed,
        loglevel=None,  # the process's logging configuration applies to the "quixstreams" logger
    )
    transactions = app.topic(
        TRANSACTIONS,
        value_deserializer=WholeValueAvroDeserializer(
            serde, TRANSACTIONS, schema=_avro_schema(TRANSACTIONS), schema_registry_client_config=registry
        ),
    )
    scores = app.topic(
        FRAUD_SCORES,
        key_serializer="str",
        value_serializer=AvroSerializer(
            _avro_schema(FRAUD_SCORES),
            schema_registry_client_config=registry,
            schema_registry_serialization_config=SchemaRegistrySerializationConfig(
                auto_register_schemas=True
            ),
        ),
    )

    def score(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
        context = message_context()
        return pipeline.score_record(value, context.partition, context.offset)

    sdf = app.dataframe(transactions).apply(score).filter(lambda value: value is not None)
    sdf.sink(CoPartitionedScores(settings, scores))
    return app, pipeline


class CoPartitionedScores(BaseSink):
    """The Quix sink that produces each score to the ``fraud-scores`` partition its transaction was read
    from, keyed by ``transaction_id``, serialized by the topic's Quix ``AvroSerializer``.

    Why not ``to_topic``: the partitioner would place a score by its key, so every scores partition
    would be fed by every transactions partition, and how unevenly the app reads a backlog would put
    scores days apart in event time within a partition (the learner's merge would take them as late).
    Co-partitioned, each scores partition is one transactions partition's scores in log order (both
    topics have ``stream.partitions`` partitions, from the topic admin). Quix calls :meth:`flush` before
    it commits the input offsets: at least once.

    Example:
        >>> sdf.sink(CoPartitionedScores(settings, app.topic(FRAUD_SCORES, ...)))  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, topic: Topic) -> None:
        super().__init__()
        self._settings = settings
        self._topic = topic
        self._producer: Producer | None = None
        self._failed: list[str] = []

    def setup(self) -> None:
        self._producer = Producer(
            self._settings.kafka_config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 5})
        )

    def add(
        self,
        value: Any,
        key: Any,
        timestamp: int,
        headers: Any,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        assert self._producer is not None, "the sink is used before Quix started it"
        message = self._topic.serialize(key=value["transaction_id"], value=value, timestamp_ms=timestamp)
        self._producer.produce(
            self._topic.name, message.value, message.key, partition=partition, on_delivery=self._delivered
        )
        self._producer.poll(0)

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failed.append(str(error))

    def flush(self) -> None:
        """Wait for every score to be acknowledged; raising aborts Quix's checkpoint (nothing committed)."""
        if self._producer is None:
            return
        remaining = self._producer.flush(30.0)
        failed, self._failed = self._failed, []
        if remaining or failed:
            raise RuntimeError(f"{remaining} scores not acknowledged, {len(failed)} failed: {failed[:3]}")


# --- running it ----------------------------------------------------------------------------------------
@dataclass
class LogEnd:
    """Bounded mode: which records each partition still has before the log end seen at start.

    Example:
        >>> end = LogEnd(starts={0: 5, 1: 2}, ends={0: 7, 1: 2})
        >>> end.remaining, end.observe(0, 5), end.observe(0, 6), end.reached
        (2, False, True, True)
    """

    starts: dict[int, int]
    ends: dict[int, int]
    positions: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.positions = dict(self.starts)

    @property
    def remaining(self) -> int:
        """Records not read yet."""
        return sum(max(0, end - self.positions.get(p, 0)) for p, end in self.ends.items())

    @property
    def reached(self) -> bool:
        """Whether every partition was read to its end."""
        return all(self.positions.get(p, 0) >= end for p, end in self.ends.items())

    def observe(self, partition: int, offset: int) -> bool:
        """Record that ``offset`` of ``partition`` was read; returns :attr:`reached`."""
        self.positions[partition] = max(self.positions.get(partition, 0), offset + 1)
        return self.reached


def group_positions(settings: Settings, topic: str, lows: Mapping[int, int]) -> dict[int, int]:
    """Where the scoring app's consumer group resumes each partition of ``topic`` (its committed offset,
    or the partition's first offset when it has none)."""
    consumer = Consumer(
        settings.kafka_config(**{"group.id": settings.model.consumer_group, "enable.auto.commit": False})
    )
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in lows], timeout=10.0)
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, lows[tp.partition]) for tp in committed}


def run_scoring(
    settings: Settings | None = None,
    until_end: bool = False,
    *,
    scorer: Scorer | None = None,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    show_progress: bool = True,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    gate: FeatureGate | None = None,
) -> ScoringStats:
    """Run the scoring app in this process; returns its counters (also logged as a summary).

    With ``until_end`` it stops once every partition's end offset (as of start) was read, with a progress
    bar, or after ``idle_timeout_s`` without records (``stats.reached_end`` False); otherwise it tails
    the log until SIGINT/SIGTERM. A scorer it creates is closed at the end; ``gate`` replaces the
    default :class:`FeatureGate` (and ``max_wait_ms``).

    Example:
        >>> run_scoring(get_settings(), until_end=True).summary()   # doctest: +SKIP
        'scored 12000, skipped 2 (undecodable 1, validation_failed 1), waited 0 (0 ms), ...'
    """
    settings = settings or get_settings()
    app, pipeline = build_app(settings, scorer, max_wait_ms=max_wait_ms, gate=gate)
    stats = pipeline.stats
    try:
        if not until_end:
            log.info(
                "scoring %s into %s (group %s)", TRANSACTIONS, FRAUD_SCORES, settings.model.consumer_group
            )
            app.run(collect=False)
            return stats
        bounds = log_end_offsets(settings, TRANSACTIONS)
        end = LogEnd(
            group_positions(settings, TRANSACTIONS, {p: low for p, (low, _) in bounds.items()}),
            {p: high for p, (_, high) in bounds.items()},
        )
        if end.reached:
            stats.reached_end = True
            log.info("nothing to score: group %s is at the log end", settings.model.consumer_group)
            return stats
        with progress_bar("scores", end.remaining, enabled=show_progress) as advance:

            def on_position(partition: int, offset: int) -> None:
                before = end.remaining
                if end.observe(partition, offset):
                    app.stop()
                advance(before - end.remaining)

            pipeline.on_position = on_position
            app.run(timeout=idle_timeout_s, collect=False)
        stats.reached_end = end.reached
        if not end.reached:
            log.warning(
                "stopped after %.0f s without records, %d before the log end", idle_timeout_s, end.remaining
            )
        return stats
    finally:
        log.info("scoring: %s", stats.summary())
        pipeline.close()


def score_stream_command(until_end: bool, max_wait_ms: float) -> None:
    """``highwater score-stream``: run the app with the environment's settings and print the summary."""
    import typer

    stats = run_scoring(get_settings(), until_end=until_end, max_wait_ms=max_wait_ms)
    typer.echo(f"scoring: {stats.summary()}")
    if stats.reached_end is False:
        raise typer.Exit(1)
