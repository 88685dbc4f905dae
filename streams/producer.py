"""Write validated, Avro-encoded events to the log: the one producer every Highwater writer uses.

:class:`EventProducer` wraps one idempotent ``confluent_kafka.Producer`` (``acks=all``, so a retried
send is never duplicated or reordered within a partition) and the platform's :class:`AvroSerde`. Every
record is checked before it is encoded (:func:`streams.file_input.record_errors`: the schema, the
business rules of :mod:`schemas.validate`, unknown and missing fields); invalid records are never written.
``transactions`` and ``fraud-labels`` are keyed by ``card_id`` with the Java client's murmur2 partitioner,
so all of a card's events share a partition whichever Kafka client wrote them.

Delivery is confirmed, not assumed: broker acknowledgements and failures are counted by delivery
callbacks, batch methods flush at the end and report failed and still-queued messages, and
:meth:`EventProducer.flush` raises :class:`DeliveryError` if anything was lost.

Example:
    >>> from highwater.settings import get_settings
    >>> from streams.synthetic import SyntheticStream
    >>> with EventProducer(get_settings()) as producer:                 # doctest: +SKIP
    ...     report = producer.produce_many(SyntheticStream(seed=7, count=1_000), progress=True)
    >>> (report.written, report.rejected, report.delivery_failures)     # doctest: +SKIP
    (1016, [], 0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from highwater.settings import Settings
from schemas.catalog import FRAUD_LABELS, TRANSACTIONS
from schemas.serde import AvroSerde
from streams.file_input import Rejection, Row, count_rows, read_events_file, record_errors

KEY_FIELDS = {TRANSACTIONS: "card_id", FRAUD_LABELS: "card_id"}
"""Topic → the record field whose UTF-8 value is the message key."""

PRODUCER_CONFIG: dict[str, object] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "partitioner": "murmur2_random",
    "client.id": "highwater-producer",
}
"""librdkafka settings every EventProducer uses (callers may override through ``config``)."""

_PROGRESS_EVERY = 256
_MAX_KEPT_ERRORS = 20


class DeliveryError(RuntimeError):
    """Messages the broker did not acknowledge: failed deliveries or messages still queued at flush."""


@dataclass(kw_only=True)
class ProduceReport:
    """The outcome of a batch: acknowledged writes, rejected records and lost messages.

    ``rejected`` holds records that failed validation (never sent), each with its 1-based position in
    the batch (its line number for files). ``delivery_failures`` counts messages the broker refused or
    that were still queued when the final flush timed out; ``delivery_errors`` keeps the first reasons.
    Delivery counts cover every message sent since the previous report or :meth:`EventProducer.flush`,
    so records sent with ``produce`` just before a batch are accounted for too.
    """

    written: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    delivery_failures: int = 0
    delivery_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every record was valid and acknowledged."""
        return not self.rejected and self.delivery_failures == 0


@dataclass(kw_only=True)
class FileReport(ProduceReport):
    """A :class:`ProduceReport` for one input file; ``rejected`` carries the file's line numbers."""

    path: Path
    topic: str


class EventProducer:
    """Validate, encode and write events; count every delivery outcome.

    ``rate`` (events per second, 0 = unlimited) paces writes evenly from the first one. ``topic_names``
    sends a catalog topic's records to another Kafka topic (e.g. an isolated test topic); they are still
    validated and encoded as the catalog topic (registry subject ``<catalog topic>-value``). ``config``
    overrides librdkafka settings. Not thread-safe: use one per thread.

    Example:
        >>> producer = EventProducer(settings, rate=500)               # doctest: +SKIP
        >>> producer.produce("transactions", {"transaction_id": "t1", "card_id": "c1",
        ...     "customer_id": "u1", "merchant_id": "m1", "amount": 12.5, "currency": "EUR",
        ...     "event_time": 1772409600000})                         # doctest: +SKIP
        >>> producer.flush()                                           # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings,
        *,
        rate: float = 0.0,
        serde: AvroSerde | None = None,
        config: Mapping[str, object] | None = None,
        topic_names: Mapping[str, str] | None = None,
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 events/s, got {rate}")
        self._producer = Producer(settings.kafka_config(**{**PRODUCER_CONFIG, **(config or {})}))
        self._serde = serde if serde is not None else AvroSerde(settings.schema_registry_url)
        self._rate = rate
        self._topic_names = dict(topic_names or {})
        self._pace_start: float | None = None
        self._paced = 0
        # Delivery outcomes since the last report or flush; each batch report and flush takes them over.
        self._delivered = 0
        self._failed = 0
        self._errors: list[str] = []

    # --- single records -------------------------------------------------------------------------------
    def produce(self, topic: str, record: dict[str, Any], *, key: bytes | None = None) -> None:
        """Validate and enqueue one record; ValueError naming the field(s) if it is invalid.

        The message key is the topic's key field (``KEY_FIELDS``) unless ``key`` is given. Delivery is
        asynchronous: call :meth:`flush` to wait for the broker's acknowledgement.
        """
        errors = record_errors(topic, record)
        if errors:
            raise ValueError(f"invalid {topic} record: {'; '.join(errors)}")
        self._send(topic, record, key)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued message is acknowledged.

        Raises :class:`DeliveryError` if messages are still queued after ``timeout`` seconds or if any
        delivery failed since the last flush or batch report.
        """
        remaining = self._producer.flush(timeout)
        _, failed, errors = self._take_outcomes()
        if remaining or failed:
            reasons = "; ".join(errors[:5])
            raise DeliveryError(
                f"{failed} message(s) failed and {remaining} still queued after {timeout}s"
                + (f" (first errors: {reasons})" if reasons else "")
            )

    # --- batches --------------------------------------------------------------------------------------
    def produce_many(
        self,
        topic_records: Iterable[tuple[str, dict[str, Any]]],
        progress: bool = False,
        *,
        total: int | None = None,
        timeout: float = 60.0,
    ) -> ProduceReport:
        """Validate and write ``(topic, record)`` pairs in order, flush, and report.

        Invalid records are skipped and reported with their 1-based position. ``total`` sizes the
        progress bar (taken from ``len(topic_records)`` when it has one).
        """
        if total is None and isinstance(topic_records, Sized):
            total = len(topic_records)

        def checked() -> Iterator[tuple[str, dict[str, Any]] | Rejection]:
            for position, (topic, record) in enumerate(topic_records, start=1):
                errors = record_errors(topic, record)
                yield Rejection(position, "; ".join(errors)) if errors else (topic, record)

        report = ProduceReport()
        self._run(checked(), report, progress, total, timeout)
        return report

    def produce_file(
        self, path: str | Path, topic: str, progress: bool = False, *, timeout: float = 60.0
    ) -> FileReport:
        """Write the good rows of a ``.jsonl``/``.csv`` file to ``topic``; report bad rows by line.

        See :mod:`streams.file_input` for the formats. ValueError for an unsupported file type or a
        topic without a schema.
        """
        path = Path(path)

        def rows() -> Iterator[tuple[str, dict[str, Any]] | Rejection]:
            for row in read_events_file(path, topic):
                yield (topic, row.record) if isinstance(row, Row) else row

        report = FileReport(path=path, topic=topic)
        self._run(rows(), report, progress, count_rows(path) if progress else None, timeout)
        return report

    def _run(
        self,
        items: Iterable[tuple[str, dict[str, Any]] | Rejection],
        report: ProduceReport,
        progress: bool,
        total: int | None,
        timeout: float,
    ) -> None:
        with _progress_bar(progress, total) as advance:
            for item in items:
                if isinstance(item, Rejection):
                    report.rejected.append(item)
                else:
                    self._send(*item)
                advance()
        remaining = self._producer.flush(timeout)
        report.written, failed, report.delivery_errors = self._take_outcomes()
        report.delivery_failures = failed + remaining
        if remaining:
            report.delivery_errors.append(f"{remaining} message(s) still queued after {timeout}s")

    def _take_outcomes(self) -> tuple[int, int, list[str]]:
        """Delivered count, failed count and kept errors since the last call; resets them."""
        outcomes = (self._delivered, self._failed, self._errors)
        self._delivered, self._failed, self._errors = 0, 0, []
        return outcomes

    # --- internals ------------------------------------------------------------------------------------
    def _send(self, topic: str, record: dict[str, Any], key: bytes | None = None) -> None:
        value = self._serde.encode(topic, record)
        if key is None:
            key_field = KEY_FIELDS.get(topic)
            key = str(record[key_field]).encode("utf-8") if key_field else None
        self._pace()
        while True:
            try:
                self._producer.produce(
                    self._topic_names.get(topic, topic), value=value, key=key, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports until the broker has taken some.
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _pace(self) -> None:
        if self._rate <= 0:
            return
        now = time.monotonic()
        if self._pace_start is None:
            self._pace_start = now
        due = self._pace_start + self._paced / self._rate
        while (wait := due - time.monotonic()) > 0:
            self._producer.poll(min(wait, 0.1))
        self._paced += 1

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._delivered += 1
            return
        self._failed += 1
        if len(self._errors) < _MAX_KEPT_ERRORS:
            partition = msg.partition()
            where = f"{msg.topic()}[{partition}]" if partition is not None and partition >= 0 else msg.topic()
            self._errors.append(f"{where}: {err.str()}")

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.flush()
        else:
            self._producer.flush(5.0)


class _RateColumn(ProgressColumn):
    """Events per second, as rich estimates it."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed:,.0f} ev/s" if speed is not None else "- ev/s", style="progress.data.speed")


@contextmanager
def _progress_bar(enabled: bool, total: int | None) -> Iterator[Callable[[], None]]:
    """A callable counting one event; draws a rich bar with rate and ETA on stderr when ``enabled``."""
    if not enabled:
        yield lambda: None
        return
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("producing", total=total)
        pending = 0

        def advance() -> None:
            nonlocal pending
            pending += 1
            if pending >= _PROGRESS_EVERY:
                bar.advance(task, pending)
                pending = 0

        try:
            yield advance
        finally:
            bar.advance(task, pending)
