"""The one topic admin: every topic Highwater uses, created with explicit configs.

Topics are declared here with their configs rather than left to broker auto-creation, so a Redpanda
cluster and the local broker get the same layout, and tools that read topic configs (Quix Streams reads
``retention.ms``) find them.

Example:
    >>> from highwater.topics import TOPICS
    >>> [t.name for t in TOPICS]
    ['transactions', 'fraud-labels', 'late-events', 'dead-letter', 'fraud-scores']
    >>> ensure_topics(Settings())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from highwater.settings import Settings
from schemas.catalog import DEAD_LETTER, FRAUD_LABELS, FRAUD_SCORES, LATE_EVENTS, TRANSACTIONS

_KEEP_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


@dataclass(frozen=True)
class TopicSpec:
    """A topic's name, purpose and configs; partitions default to the stream settings."""

    name: str
    purpose: str
    config: dict[str, str] = field(default_factory=lambda: dict(_KEEP_FOREVER))
    partitions: int | None = None


TOPICS = [
    TopicSpec(
        TRANSACTIONS, "Transaction events, keyed by card_id; the source of card and merchant features."
    ),
    TopicSpec(FRAUD_LABELS, "Fraud verdicts, keyed by card_id; arrive days after the transaction."),
    TopicSpec(LATE_EVENTS, "Events beyond allowed lateness, with the reason; kept for history, not applied."),
    TopicSpec(DEAD_LETTER, "Records the pipeline could not use, with the error and the original bytes."),
    TopicSpec(
        FRAUD_SCORES,
        "A fraud score per transaction with the inputs it was scored with, keyed by transaction_id.",
    ),
]


def admin_client(settings: Settings) -> AdminClient:
    """An AdminClient for the configured broker."""
    return AdminClient(settings.kafka_config())


def ensure_topics(
    settings: Settings, specs: list[TopicSpec] | None = None, timeout: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created.

    Existing topics are left as they are (their partition count is part of their identity).
    """
    admin = admin_client(settings)
    wanted = specs if specs is not None else TOPICS
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions or settings.stream.partitions,
            replication_factor=settings.stream.replication_factor,
            config=spec.config,
        )
        for spec in wanted
        if spec.name not in existing
    ]
    if not new:
        return []
    created: list[str] = []
    for name, future in admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created


def partitions_of(settings: Settings, topic: str, timeout: float = 10.0) -> list[int]:
    """The partition ids of ``topic``; KeyError if the broker does not have it."""
    metadata = admin_client(settings).list_topics(topic, timeout=timeout)
    meta = metadata.topics.get(topic)
    if meta is None or meta.error is not None:
        raise KeyError(f"topic {topic!r} does not exist on {settings.broker_bootstrap}")
    return sorted(meta.partitions)
