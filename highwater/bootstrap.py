"""Make the log ready for use: topics with explicit configs, value schemas registered (BACKWARD)."""

from __future__ import annotations

from highwater.settings import Settings
from highwater.topics import ensure_topics
from schemas.catalog import CATALOG
from schemas.serde import AvroSerde


def bootstrap_log(settings: Settings) -> list[str]:
    """Create missing topics and register every topic's value schema; returns the topics created.

    Example:
        >>> bootstrap_log(Settings())  # doctest: +SKIP
        ['transactions', 'fraud-labels', 'late-events', 'dead-letter']
    """
    created = ensure_topics(settings)
    serde = AvroSerde(settings.schema_registry_url)
    for topic in CATALOG.topics():
        serde.register(topic)
    return created
