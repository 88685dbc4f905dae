"""The learner job: the fraud model learns online from ``fraud-labels``, with the inputs it scored with.

    fraud-scores (event_time), fraud-labels (label_time)   confluent-kafka, assign(), explicit offsets
      -> decode (malformed -> dead-letter)
      -> LearnerCore: event-time merge (late -> dead-letter), keep inputs, learn labels, hold labels
         whose score has not come (-> dead-letter after model.label_hold_ms), implied legit
      -> every model.checkpoint_every records (tailing: also every minute) and at the end: a version
         in the model store (model, state, offsets, metrics), promoted when model.auto_promote and the
         lineage is live

**Deterministic.** What the model has learned after consuming offsets O is a function of the records
before O alone, however the client interleaved partitions and topics (:mod:`streams.learner_core`,
:mod:`streams.event_time_merge`). So a replay of the log up to a version's offsets
(:func:`replay_model`) rebuilds that version bit for bit, and :mod:`streams.model_verify` can prove it.

**Checkpoints.** A version's state is the whole :class:`streams.learner_core.LearnerCore` (model, kept
inputs, held labels, merge buffer and watermarks, counters, metric accumulators) and its offsets are the
next offset of every input partition. A run starts from ``store.latest(lineage)``: it loads the state
and seeks to the offsets, so a crash and restart neither loses nor double counts a record (the records
after the last checkpoint are read again and give the same result). A bounded run (``until_end`` or
``until``) releases everything buffered at its end (:meth:`LearnerCore.drain`) before saving its last
version, whose model therefore includes every record read (metric ``drained`` = 1); that version's
state is the one from *before* the drain, so a later run resumes as if the run had not stopped.

**Side effects.** Dead letters (malformed, late, labels whose score never came) are produced as they
are decided and flushed before each checkpoint; after a crash, those decided since the last checkpoint
are produced again. Each is keyed ``topic:partition:offset`` of its source record, so a consumer drops
the repeats by key. Replays (:func:`replay_model`) produce none (the live job did; they are counted).

Example:
    >>> report = run_learner(settings, until_end=True)     # doctest: +SKIP
    >>> report.counters.labels_learned, report.last.version  # doctest: +SKIP
    (2913, '7')
    $ highwater learn --until-end
    $ highwater models replay --lineage r1 --until 7 && highwater models verify 7 <the replay's version>
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from highwater.progress import progress_bar
from highwater.settings import Settings, get_settings
from highwater.topics import partitions_of
from schemas.catalog import DEAD_LETTER, FRAUD_LABELS, FRAUD_SCORES
from schemas.serde import AvroSerde, SerdeError
from schemas.validate import business_rule_errors
from sinks.model_store import ModelStore, ModelStoreError, ModelVersion, Offsets, model_store_from_settings
from streams.kafka_source import data_messages, log_end_offsets
from streams.learner_core import DeadLetter, LearnerCore, LearnerCounters, LearnerOptions, Source
from streams.producer import EventProducer

log = logging.getLogger(__name__)

LIVE_LINEAGE = "main"
"""The lineage the live learner writes; its versions are promoted (``model.auto_promote``) while no
version of another lineage has been made live."""
TAIL_CHECKPOINT_S = 60.0
"""While tailing, a version is also saved when this many seconds passed since the last one and records
were read since, so a quiet stream's learning still reaches scoring (when a version is saved never
changes what it holds: that is a function of its offsets)."""
DRAINED = "drained"
"""Metric of a version: 1.0 when its model includes everything read (the end of a bounded run)."""


class LearnerJobError(ValueError):
    """A learner run that cannot start as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class LearnReport:
    """What one run of the learner job did (``counters``: cumulative over the lineage)."""

    lineage: str
    resumed_from: str | None
    saved: list[ModelVersion]
    records: int
    """Records read by this run (decoded or malformed)."""
    labels_learned: int
    """Labels learned by this run."""
    seconds: float
    counters: LearnerCounters
    metrics: dict[str, float]
    offsets: Offsets
    checkpoint_seconds: float = 0.0
    """Time this run spent saving versions (release, flush, pickling, the store, and the final drain),
    included in ``seconds``."""
    drain_seconds: float = 0.0
    """Of ``checkpoint_seconds``, the final drain: learning what was still buffered at the end."""

    @property
    def last(self) -> ModelVersion | None:
        """The last version this run saved (None if it saved none)."""
        return self.saved[-1] if self.saved else None

    @property
    def records_per_s(self) -> float:
        """Records read per second of this run (start-up and checkpoints included)."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def labels_per_s(self) -> float:
        """Labels learned per second of this run (start-up and checkpoints included)."""
        return self.labels_learned / self.seconds if self.seconds > 0 else 0.0


def options_from_settings(settings: Settings) -> LearnerOptions:
    """The core options the settings give a new lineage (an existing one keeps those of its state).

    Example:
        >>> options_from_settings(Settings()).label_hold_ms
        3600000
    """
    return LearnerOptions(
        max_out_of_orderness_ms=settings.model.max_out_of_orderness_ms,
        label_hold_ms=settings.model.label_hold_ms,
    )


def live_lineage(store: ModelStore) -> str:
    """The lineage of the live version, or :data:`LIVE_LINEAGE` before any promotion.

    Example:
        >>> live_lineage(store)   # doctest: +SKIP
        'main'
    """
    live = store.live()
    return live.lineage if live is not None else LIVE_LINEAGE


@dataclass
class _Run:
    """One run's moving parts and tallies (internal to :func:`run_learner`)."""

    settings: Settings
    store: ModelStore
    lineage: str
    core: LearnerCore
    positions: dict[Source, int]
    ends: dict[Source, int] | None
    serde: AvroSerde
    producer: EventProducer | None
    promote: bool
    saved: list[ModelVersion] = field(default_factory=list)
    records: int = 0
    since_checkpoint: int = 0
    started: float = field(default_factory=time.perf_counter)
    labels_at_start: int = 0
    checkpoint_seconds: float = 0.0
    drain_seconds: float = 0.0
    last_saved: float = field(default_factory=time.perf_counter)
    schema_topics: dict[str, str] = field(init=False)
    """Input topic -> the catalog topic whose schema its values have."""

    def __post_init__(self) -> None:
        options = self.core.options
        self.schema_topics = {options.score_topic: FRAUD_SCORES, options.label_topic: FRAUD_LABELS}

    def handle(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Decode one record and hand it to the core; route what it refuses."""
        schema_topic = self.schema_topics[topic]
        try:
            event = self.serde.decode(schema_topic, value)
        except SerdeError as exc:
            self.core.counters.malformed += 1
            self.route([DeadLetter(exc.kind, str(exc), topic, partition, offset, key, value)])
            return
        errors = business_rule_errors(schema_topic, event)
        if errors:
            self.core.counters.malformed += 1
            self.route(
                [DeadLetter("validation_failed", "; ".join(errors), topic, partition, offset, key, value)]
            )
            return
        self.route(self.core.offer(topic, partition, offset, key, value, event))

    def route(self, dead: list[DeadLetter]) -> None:
        if self.producer is None:
            return
        for letter in dead:
            self.producer.produce(DEAD_LETTER, letter.record(), key=letter.message_key)

    def offsets(self) -> Offsets:
        out: Offsets = {}
        for (topic, partition), offset in sorted(self.positions.items()):
            out.setdefault(topic, {})[partition] = offset
        return out

    def checkpoint(self, *, drain: bool) -> ModelVersion:
        """Release what the frontier allows, make the dead letters durable, save (and maybe promote) a
        version. With ``drain`` the model includes every buffered record; the state saved is the one
        from before the drain either way."""
        began = time.perf_counter()
        self.route(self.core.advance())
        if self.producer is not None:
            self.producer.flush()
        state = self.core.to_bytes()
        if drain:
            drain_began = time.perf_counter()
            self.core.drain()
            self.drain_seconds += time.perf_counter() - drain_began
        seconds = time.perf_counter() - self.started
        metrics = self.core.metrics()
        metrics[DRAINED] = 1.0 if drain else 0.0
        metrics["state_bytes"] = float(len(state))
        metrics["records_per_s"] = self.records / seconds if seconds > 0 else 0.0
        metrics["labels_per_s"] = (
            (self.core.counters.labels_learned - self.labels_at_start) / seconds if seconds > 0 else 0.0
        )
        version = self.store.save(
            self.core.model.to_bytes(), state, self.offsets(), metrics, lineage=self.lineage
        )
        if self.promote and self.lineage == live_lineage(self.store):
            self.store.promote(version.version)
        self.saved.append(version)
        self.since_checkpoint = 0
        self.last_saved = time.perf_counter()
        self.checkpoint_seconds += time.perf_counter() - began
        log.info("learner %s: saved version %s at %s", self.lineage, version.version, version.offsets)
        return version


def run_learner(
    settings: Settings | None = None,
    *,
    lineage: str | None = None,
    until_end: bool = False,
    until: Mapping[str, Mapping[int, int]] | None = None,
    drain: bool = True,
    store: ModelStore | None = None,
    route_dead_letters: bool = True,
    promote: bool = True,
    options: LearnerOptions | None = None,
    stop: threading.Event | None = None,
    show_progress: bool = False,
    on_prediction: Callable[[str, int, float], None] | None = None,
) -> LearnReport:
    """Run the learner job for ``lineage`` (default ``model.lineage``), resuming from its latest version.

    Bounded runs: ``until_end`` stops at the log end as of the start; ``until`` (topic -> partition ->
    offset, exclusive; partitions not named stop at the log end) stops there. A bounded run saves a
    last version at its end, drained unless ``drain`` is False. Without either it tails the log until
    ``stop`` is set, then saves a version (not drained) and returns.

    ``options`` apply to a new lineage only (default: :func:`options_from_settings`); an existing one
    keeps the options of its state. ``promote``: whether versions may be promoted at all (also needs
    ``model.auto_promote`` and the lineage to be the live one). Raises :class:`LearnerJobError` when
    the lineage cannot go where asked (its latest version is past ``until``; the topics' partitions
    changed). ``on_prediction(transaction_id, event_time, probability)`` sees each transaction's
    progressive prediction as it is kept (e.g. for a quality report over the whole run).

    Example:
        >>> stop = threading.Event()            # set it (e.g. on SIGTERM) to checkpoint and return
        >>> report = run_learner(settings, stop=stop)                              # doctest: +SKIP
        >>> run_learner(settings, lineage="r1", until={"fraud-scores": {0: 500}})  # doctest: +SKIP
    """
    settings = settings or get_settings()
    lineage = lineage or settings.model.lineage
    owned = store is None
    store = store if store is not None else model_store_from_settings(settings)
    try:
        return _run(
            settings,
            store,
            lineage,
            until_end=until_end,
            until=until,
            drain=drain,
            route_dead_letters=route_dead_letters,
            promote=promote and settings.model.auto_promote,
            options=options,
            stop=stop,
            show_progress=show_progress,
            on_prediction=on_prediction,
        )
    finally:
        if owned:
            store.close()


def _run(
    settings: Settings,
    store: ModelStore,
    lineage: str,
    *,
    until_end: bool,
    until: Mapping[str, Mapping[int, int]] | None,
    drain: bool,
    route_dead_letters: bool,
    promote: bool,
    options: LearnerOptions | None,
    stop: threading.Event | None,
    show_progress: bool,
    on_prediction: Callable[[str, int, float], None] | None = None,
) -> LearnReport:
    started = time.perf_counter()
    latest = store.latest(lineage)
    resumed: LearnerCore | None = None
    if latest is not None:
        state = store.load_state(latest.version)
        if state is None:
            raise LearnerJobError(
                f"version {latest.version} of lineage {lineage!r} has no job state to resume from; "
                "learn into a new lineage"
            )
        resumed = LearnerCore.from_bytes(state)
    core_options = resumed.options if resumed is not None else options or options_from_settings(settings)
    topics = (core_options.score_topic, core_options.label_topic)
    logs = {topic: log_end_offsets(settings, topic) for topic in topics}
    sources = sorted((topic, p) for topic in topics for p in partitions_of(settings, topic))
    if resumed is not None and latest is not None:
        if resumed.sources != sources:
            raise LearnerJobError(
                f"lineage {lineage!r} was learned from partitions {resumed.sources}, the log now has "
                f"{sources}; replay into a new lineage (highwater models replay)"
            )
        core = resumed
        start = {(t, p): latest.offsets.get(t, {}).get(p, logs[t][p][0]) for t, p in sources}
    else:
        core = LearnerCore(sources, core_options)
        start = {(t, p): logs[t][p][0] for t, p in sources}
    core.on_prediction = on_prediction
    ends: dict[Source, int] | None = None
    if until_end or until is not None:
        ends = {(t, p): (until or {}).get(t, {}).get(p, logs[t][p][1]) for t, p in sources}
        behind = {src: (start[src], end) for src, end in ends.items() if start[src] > end}
        if behind:
            raise LearnerJobError(
                f"lineage {lineage!r} is past the requested end (start, end per partition: {behind}); "
                "replay into a new lineage to stop earlier"
            )
    for (topic, partition), offset in start.items():
        if offset > logs[topic][partition][1]:
            raise LearnerJobError(
                f"{topic}:{partition}: lineage {lineage!r} resumes at offset {offset} but the log ends at "
                f"{logs[topic][partition][1]}; the log was recreated: learn into a new lineage"
            )
    run = _Run(
        settings=settings,
        store=store,
        lineage=lineage,
        core=core,
        positions=dict(start),
        ends=ends,
        serde=AvroSerde(settings.schema_registry_url),
        producer=(
            EventProducer(settings, topic_names={DEAD_LETTER: core.options.dead_letter_topic})
            if route_dead_letters
            else None
        ),
        promote=promote,
        started=started,
        labels_at_start=core.counters.labels_learned,
    )
    _consume(run, stop, show_progress)
    if ends is not None:
        # A bounded re-run with nothing new to read would save a copy of the latest version: skip it.
        unchanged = run.records == 0 and latest is not None and latest.metrics.get(DRAINED) == float(drain)
        if not unchanged:
            run.checkpoint(drain=drain)
    elif run.since_checkpoint or latest is None:
        run.checkpoint(drain=False)
    if run.producer is not None:
        run.producer.flush()
    seconds = time.perf_counter() - started
    return LearnReport(
        lineage=lineage,
        resumed_from=latest.version if latest is not None else None,
        saved=run.saved,
        records=run.records,
        labels_learned=core.counters.labels_learned - run.labels_at_start,
        seconds=seconds,
        counters=replace(core.counters),
        metrics=run.saved[-1].metrics if run.saved else core.metrics(),
        offsets=run.offsets(),
        checkpoint_seconds=run.checkpoint_seconds,
        drain_seconds=run.drain_seconds,
    )


def _consume(run: _Run, stop: threading.Event | None, show_progress: bool) -> None:
    """Read every assigned partition from its position until its end (or ``stop``), feeding the core."""
    settings = run.settings
    ends = run.ends
    active = {src for src, pos in run.positions.items() if ends is None or pos < ends[src]}
    total = sum(ends[src] - run.positions[src] for src in active) if ends is not None else None
    every = settings.model.checkpoint_every
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"highwater-learner-{run.lineage}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": settings.stream.poll_timeout_ms,
            }
        )
    )
    try:
        consumer.assign([TopicPartition(t, p, run.positions[(t, p)]) for t, p in sorted(active)])
        with progress_bar(f"learn {run.lineage}", total, enabled=show_progress) as advance:
            while active and not (stop is not None and stop.is_set()):
                messages = consumer.consume(
                    settings.stream.batch_size, settings.stream.poll_timeout_ms / 1000
                )
                handled = 0
                for message in data_messages(messages):
                    topic, partition, offset = message.topic(), message.partition(), message.offset()
                    assert topic is not None and partition is not None and offset is not None
                    source = (topic, partition)
                    if source not in active or (ends is not None and offset >= ends[source]):
                        continue
                    run.handle(topic, partition, offset, message.key(), message.value())
                    run.positions[source] = offset + 1
                    run.records += 1
                    run.since_checkpoint += 1
                    handled += 1
                    if ends is not None and offset + 1 >= ends[source]:
                        active.discard(source)
                        consumer.pause([TopicPartition(topic, partition)])
                    if run.since_checkpoint >= every:
                        run.checkpoint(drain=False)
                        _commit(consumer, run)
                run.route(run.core.advance())
                advance(handled)
                if (
                    ends is None
                    and run.since_checkpoint
                    and time.perf_counter() - run.last_saved >= TAIL_CHECKPOINT_S
                ):
                    run.checkpoint(drain=False)
                    _commit(consumer, run)
    finally:
        consumer.close()


def _commit(consumer: Consumer, run: _Run) -> None:
    """Commit the checkpoint's offsets to the consumer group: for lag monitoring only (resumption reads
    the model store)."""
    offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(run.positions.items())]
    try:
        consumer.commit(offsets=offsets, asynchronous=True)
    except KafkaException as exc:  # monitoring only: never fail the job for it
        log.warning("could not commit learner offsets for monitoring: %s", exc)


def replay_model(
    settings: Settings,
    lineage: str,
    *,
    until: str | Mapping[str, Mapping[int, int]] | None = None,
    store: ModelStore | None = None,
    show_progress: bool = False,
) -> LearnReport:
    """Rebuild a model from the log into ``lineage``: the learner job from the earliest offsets up to
    ``until``, with nothing produced to ``dead-letter`` and nothing promoted.

    ``until``: a version (its offsets, whether it was drained, and the core options of its state are
    used, so the replay ends with the same model: check with :func:`streams.model_verify.verify_versions`),
    explicit offsets (drained at the end), or None: the log end. Re-running with the same arguments
    resumes an interrupted replay. Raises :class:`LearnerJobError` for the live lineage.

    Example:
        >>> report = replay_model(settings, "r1", until="7")   # doctest: +SKIP
        >>> verify_versions(store, "7", report.last.version).identical   # doctest: +SKIP
        True
    """
    owned = store is None
    store = store if store is not None else model_store_from_settings(settings)
    try:
        if lineage == live_lineage(store) or lineage == settings.model.lineage:
            raise LearnerJobError(
                f"lineage {lineage!r} is the live learner's; replay into a new lineage (e.g. r1)"
            )
        offsets: Mapping[str, Mapping[int, int]] | None = None
        drain = True
        options: LearnerOptions | None = None
        if isinstance(until, str):
            try:
                source = store.get(until)
            except ModelStoreError as exc:
                raise LearnerJobError(str(exc)) from None
            offsets = source.offsets
            drain = source.metrics.get(DRAINED) == 1.0
            state = store.load_state(until)
            if state is not None:
                options = LearnerCore.from_bytes(state).options
        elif until is not None:
            offsets = until
        return run_learner(
            settings,
            lineage=lineage,
            until_end=until is None,
            until=offsets,
            drain=drain,
            store=store,
            route_dead_letters=False,
            promote=False,
            options=options,
            show_progress=show_progress,
        )
    finally:
        if owned:
            store.close()


def describe(report: LearnReport) -> dict[str, Any]:
    """A short, printable summary of a run (what ``highwater learn`` prints).

    Example:
        >>> describe(run_learner(settings, until_end=True))["labels_learned_total"]   # doctest: +SKIP
        2913
    """
    c = report.counters
    return {
        "lineage": report.lineage,
        "resumed_from": report.resumed_from,
        "versions_saved": [v.version for v in report.saved],
        "records": report.records,
        "seconds": round(report.seconds, 2),
        "records_per_s": round(report.records_per_s),
        "labels_per_s": round(report.labels_per_s),
        "labels_learned_total": c.labels_learned,
        "implied_legit_total": c.implied_legit,
        "held_now": int(report.metrics.get("held", 0)),
        "dead_lettered": {"late": c.late_scores + c.late_labels, "no_score": c.labels_dead_lettered},
        "auc": report.metrics.get("auc"),
        "ap": report.metrics.get("ap"),
    }
