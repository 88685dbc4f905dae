"""What ``highwater status`` shows about the feature pipeline: clock, positions and counters.

Example:
    >>> print_pipeline_status(get_settings(), Console())  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis
from rich.console import Console
from rich.table import Table

from highwater.settings import Settings
from sinks.redis_online import RedisOnlineStore
from streams.features import TRANSACTIONS_TOPIC


def print_pipeline_status(settings: Settings, console: Console) -> None:
    """Print the event-time clock, each partition's checkpoint and the counters; a note if unreachable."""
    store = RedisOnlineStore.from_settings(settings)
    try:
        clock = store.clock_ms()
        checkpoints = store.checkpoints(TRANSACTIONS_TOPIC)
        counters = store.counters()
    except redis.RedisError as exc:
        console.print(f"pipeline: online store unreachable ({exc})")
        return
    when = "no event applied yet" if clock is None else datetime.fromtimestamp(clock / 1000, UTC).isoformat()
    table = Table(title=f"pipeline (generation {settings.online.generation}): event-time clock {when}")
    table.add_column("partition")
    table.add_column("next offset", justify="right")
    table.add_column("high-water event time")
    for partition, ckpt in sorted(checkpoints.items()):
        hw = ckpt.max_event_time_ms
        table.add_row(
            f"{TRANSACTIONS_TOPIC}:{partition}",
            f"{ckpt.next_offset:,}",
            "-" if hw is None else datetime.fromtimestamp(hw / 1000, UTC).isoformat(),
        )
    console.print(table)
    if counters:
        console.print("counters: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counters.items())))
