"""One typed settings object for every Highwater process.

Values come from the environment (prefix ``HIGHWATER_``) or a ``.env`` file. The defaults describe the
embedded local stack started by ``highwater up``; pointing the URLs at Redpanda, a Redis server or a
ClickHouse server (as docker-compose does) needs no code change.

Example:
    >>> from highwater.settings import Settings
    >>> s = Settings(broker_bootstrap="redpanda:9092")
    >>> s.broker_bootstrap
    'redpanda:9092'
    >>> s.stream.max_out_of_orderness_ms
    5000
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GENERATION_PATTERN = r"^[a-z0-9_-]+$"
"""What a generation name may be: it becomes part of Redis keys and ClickHouse table names."""


def validate_generation(name: str) -> str:
    """``name`` if it is a valid generation name, else ValueError naming it.

    Example:
        >>> validate_generation("r1")
        'r1'
    """
    if not re.match(GENERATION_PATTERN, name):
        raise ValueError(f"invalid generation name {name!r}: use lowercase letters, digits, _ and -")
    return name


class StreamSettings(BaseModel):
    """Event-time and pipeline knobs of the stream job (``HIGHWATER_STREAM__<NAME>``)."""

    max_out_of_orderness_ms: int = Field(
        5_000, ge=0, description="D: watermark = highest event_time seen in a partition minus D."
    )
    allowed_lateness_ms: int = Field(
        60_000,
        ge=0,
        description="L: an event older than its partition's watermark minus L is late, not applied online.",
    )
    consumer_group: str = Field("highwater-features", description="Kafka consumer group of the feature job.")
    batch_size: int = Field(2_000, ge=1, description="Most records taken from one partition per poll.")
    poll_timeout_ms: int = Field(100, ge=0, description="How long one poll may wait for records.")
    partitions: int = Field(4, ge=1, description="Partitions of topics created by the topic admin.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of topics the admin creates.")
    workers: int = Field(1, ge=1, description="Bytewax worker threads in the stream process.")
    route_side_topics: bool = Field(
        True,
        description="Whether late and malformed records are produced to late-events and dead-letter "
        "(replays turn it off: the live job routed them already; they are counted either way).",
    )
    replay_batch_size: int = Field(
        10_000, ge=1, description="Most records taken from one partition per poll during a replay."
    )
    apply_chunk_records: int = Field(
        0,
        ge=0,
        description="0: each polled batch is applied online as it comes (the live job: freshness). N: "
        "batches are gathered into chunks of at least N records (the first: N/4, so the writers start "
        "early), each written in bulk (replays set it from replay_chunk_records).",
    )
    replay_chunk_records: int = Field(
        250_000,
        ge=1,
        description="Records a replay gathers into one chunk and writes online in bulk (sinks.redis_bulk): "
        "larger chunks cost Redis less per event (a key's events of a chunk go in one command) and "
        "take more memory; a replay stopped mid-chunk re-reads that chunk.",
    )


class OnlineSettings(BaseModel):
    """Online store behaviour (``HIGHWATER_ONLINE__<NAME>``)."""

    retention_ms: int = Field(
        24 * 3_600_000,
        gt=0,
        description="How far behind the event-time clock an as_of may be; older requests fail.",
    )
    ttl_ms: int = Field(
        9 * 24 * 3_600_000,
        gt=0,
        description="Processing-time TTL of an entity's keys: idle entities expire after this long.",
    )
    generation: str = Field(
        "g1",
        pattern=GENERATION_PATTERN,
        description="Generation the stream job writes (and the server reads until another is promoted).",
    )
    materialize: bool = Field(
        True, description="Whether the job writes events online; off: only checkpoints and counters."
    )
    script_max_entries: int = Field(
        1_000,
        ge=1,
        description="Most event entries (one per event and entity id) one write script applies. Redis runs "
        "one script at a time, so a larger batch (a job catching up, a replay) is applied by several "
        "scripts, its events grouped by key, then its ids, checkpoints, counters and clock by one more: a "
        "read waits behind one of these, not behind a script of the whole batch.",
    )


class OfflineSettings(BaseModel):
    """Offline store (ClickHouse) behaviour (``HIGHWATER_OFFLINE__<NAME>``)."""

    database: str = Field(
        "highwater",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="ClickHouse database of Highwater's tables.",
    )
    history: bool = Field(True, description="Whether the stream job writes history (events, labels) to it.")


class ModelSettings(BaseModel):
    """The fraud model: its store, learner job and how serving follows it (``HIGHWATER_MODEL__<NAME>``)."""

    store: Literal["redis", "file"] = Field(
        "redis",
        description="Where model versions live: 'redis' (the online store's server, shared by every process) "
        "or 'file' (a directory, e.g. a mounted volume: ``model.directory``).",
    )
    directory: Path = Field(Path(".highwater/models"), description="Directory of the 'file' model store.")
    lineage: str = Field(
        "main",
        pattern=GENERATION_PATTERN,
        description="Lineage the learner job writes its versions to (a replay writes its own).",
    )
    consumer_group: str = Field("highwater-scoring", description="Kafka consumer group of the scoring app.")
    checkpoint_every: int = Field(
        5_000, ge=1, description="The learner job saves a version after this many records read."
    )
    auto_promote: bool = Field(
        True, description="Whether each version the learner job saves becomes live at once."
    )
    refresh_s: float = Field(
        2.0, gt=0, description="How often the server and the scoring app look for a new live version."
    )
    max_out_of_orderness_ms: int = Field(
        300_000,
        ge=0,
        description="The learner's merge waits until every input partition is this far past a time "
        "before learning from it; a record older than that in its own partition is late (dead-lettered). "
        "fraud-scores partitions follow the transactions partitions' order (co-partitioned).",
    )
    label_hold_ms: int = Field(
        3_600_000,
        ge=0,
        description="Event time a label for a transaction not scored yet is held (and retried) before "
        "it is dead-lettered.",
    )


class Settings(BaseSettings):
    """Where every part lives and how the stream behaves."""

    model_config = SettingsConfigDict(
        env_prefix="HIGHWATER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    state_dir: Path = Field(Path(".highwater"), description="Local state: logs, pid files, registry data.")
    broker_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap.servers.")
    schema_registry_url: str = Field("http://127.0.0.1:18081", description="Confluent-compatible registry.")
    redis_url: str = Field("redis://127.0.0.1:16379/0", description="Online store.")
    clickhouse_dsn: str = Field(
        "http://127.0.0.1:18123",
        description=(
            "Offline store: a ClickHouse HTTP URL (the default is the local stack's chDB server, which owns "
            "<state_dir>/clickhouse), or chdb:///abs/path for embedded chDB in a single process."
        ),
    )
    vector_store_url: str = Field(
        "embedded://", description="Weaviate URL, or embedded:// for the local one."
    )
    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="Port of the gRPC server.")
    grpc_target: str = Field("", description="Where clients dial; empty means grpc_host:grpc_port.")
    stream: StreamSettings = Field(default_factory=StreamSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    offline: OfflineSettings = Field(default_factory=OfflineSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def broker_port(self) -> int:
        """Port of the first bootstrap server (the local broker listens there)."""
        return int(self.broker_bootstrap.split(",")[0].rsplit(":", 1)[1])

    @property
    def schema_registry_port(self) -> int:
        """Port of the schema registry URL."""
        return _port_of(self.schema_registry_url, 8081)

    @property
    def redis_port(self) -> int:
        """Port of the Redis URL."""
        return _port_of(self.redis_url, 6379)

    @property
    def clickhouse_port(self) -> int:
        """Port of the ClickHouse DSN (HTTP interface)."""
        return _port_of(self.clickhouse_dsn, 8123)

    @property
    def effective_grpc_target(self) -> str:
        """The address gRPC clients dial."""
        return self.grpc_target or f"{self.grpc_host}:{self.grpc_port}"

    @property
    def effective_clickhouse_dsn(self) -> str:
        """The DSN to hand ``clickhouse_connect.get_client(dsn=...)``.

        Example:
            >>> Settings().effective_clickhouse_dsn
            'http://127.0.0.1:18123'
        """
        return self.clickhouse_dsn

    def for_generation(self, generation: str) -> Settings:
        """A copy whose online state lives in ``generation``, with a consumer group of its own.

        Example:
            >>> Settings().for_generation("crash").stream.consumer_group
            'highwater-features-crash'
        """
        copy = self.model_copy(deep=True)
        copy.online.generation = generation
        copy.stream.consumer_group = f"{self.stream.consumer_group}-{generation}"
        return copy

    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """Base librdkafka configuration for this deployment, merged with ``extra`` (librdkafka names)."""
        config: dict[str, Any] = {"bootstrap.servers": self.broker_bootstrap}
        config.update(extra)
        return config


def _port_of(url: str, default: int) -> int:
    port = urlsplit(url).port
    return port if port is not None else default


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
