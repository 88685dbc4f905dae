"""Which Avro schema each topic carries, loaded from the ``.avsc`` files beside this module.

Subjects follow Confluent's TopicNameStrategy: the value schema of topic ``T`` is subject ``T-value``.

Example:
    >>> from schemas.catalog import CATALOG
    >>> CATALOG.subject("transactions")
    'transactions-value'
    >>> CATALOG.schema("transactions")["name"]
    'Transaction'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

AVRO_DIR = Path(__file__).with_name("avro")

TRANSACTIONS = "transactions"
FRAUD_LABELS = "fraud-labels"
LATE_EVENTS = "late-events"
DEAD_LETTER = "dead-letter"
FRAUD_SCORES = "fraud-scores"


@dataclass(frozen=True)
class TopicSchema:
    """A topic and the ``.avsc`` file of its value schema."""

    topic: str
    avsc: str

    @cached_property
    def text(self) -> str:
        """The schema as written in its file (what gets registered)."""
        return (AVRO_DIR / self.avsc).read_text()

    @cached_property
    def parsed(self) -> dict[str, Any]:
        """The schema as a JSON object."""
        value: dict[str, Any] = json.loads(self.text)
        return value


class SchemaCatalog:
    """The topic → value schema map of the platform."""

    def __init__(self, entries: list[TopicSchema]) -> None:
        self._by_topic = {e.topic: e for e in entries}

    def topics(self) -> list[str]:
        """Topics that carry Avro values."""
        return list(self._by_topic)

    def entry(self, topic: str) -> TopicSchema:
        """The catalog entry of ``topic``; KeyError if the topic has no schema."""
        return self._by_topic[topic]

    def schema(self, topic: str) -> dict[str, Any]:
        """The parsed value schema of ``topic``."""
        return self._by_topic[topic].parsed

    @staticmethod
    def subject(topic: str) -> str:
        """The registry subject of the topic's values (TopicNameStrategy)."""
        return f"{topic}-value"


CATALOG = SchemaCatalog(
    [
        TopicSchema(TRANSACTIONS, "transaction.avsc"),
        TopicSchema(FRAUD_LABELS, "fraud_label.avsc"),
        TopicSchema(LATE_EVENTS, "late_event.avsc"),
        TopicSchema(DEAD_LETTER, "dead_letter.avsc"),
        TopicSchema(FRAUD_SCORES, "fraud_score.avsc"),
    ]
)
