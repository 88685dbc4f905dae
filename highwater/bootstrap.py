"""Make the log ready for use: topics with explicit configs, value schemas registered (BACKWARD)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from highwater.settings import Settings
from highwater.stack import LocalStack
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


@contextmanager
def bootstrapped_stack(settings: Settings) -> Iterator[Settings]:
    """The local stack of ``settings`` started and bootstrapped, bound to this process, stopped on exit.

    For tests and benchmarks that need a stack of their own (``isolated_settings`` gives free ports).

    Example:
        >>> with bootstrapped_stack(isolated_settings(tmp_dir)) as settings:   # doctest: +SKIP
        ...     EventProducer(settings).produce_many(records)
    """
    stack = LocalStack(settings, outlive_caller=False)
    try:
        stack.start()
        bootstrap_log(settings)
        yield settings
    finally:
        stack.stop()
