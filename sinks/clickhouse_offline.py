"""ClickHouse implementation of the offline store, through clickhouse-connect.

The DSN decides where ClickHouse is: ``http://host:8123`` for a server (docker-compose), the local
stack's chDB endpoint (``sinks.chdb_server``, which speaks the same HTTP interface), or ``chdb:///path``
for an engine inside this process. The code is the same for all three.

Tables (``{gen}`` is the generation, in database ``settings.offline.database``):

==============================  ===================================================================
``transactions_{gen}``          every valid transaction read: log position, fields, ``late`` flag and
                                reason, ``apply_seq`` (processing order), ``ingested_at``
``fraud_labels_{gen}``          every valid fraud label read, with its log position
``schema_migrations``           which migration of ``sinks/migrations`` each generation has
==============================  ===================================================================

History tables are ReplacingMergeTree ordered by (topic, partition, offset): delivering the same offsets
again (a crash before the commit) leaves one row once merged, and readers use ``FINAL``.

Example:
    >>> store = ClickHouseOfflineStore.from_settings(Settings())   # doctest: +SKIP
    >>> store.migrate("g1")                                        # doctest: +SKIP
    ['0001_history']
    >>> store.query_arrow("SELECT count() AS n FROM {transactions} FINAL", "g1").to_pylist()  # doctest: +SKIP
    [{'n': 0}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import clickhouse_connect
import polars as pl
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from highwater.settings import Settings, validate_generation
from schemas.catalog import FRAUD_LABELS, TRANSACTIONS
from sinks.offline import HistoryEvent, UnknownGenerationError

_TS = pa.timestamp("ms", tz="UTC")

# Arrow layout of each history table: the event's own fields, then what history adds.
_EVENT_FIELDS: dict[str, list[tuple[str, pa.DataType]]] = {
    TRANSACTIONS: [
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("customer_id", pa.string()),
        ("merchant_id", pa.string()),
        ("amount", pa.float64()),
        ("currency", pa.string()),
        ("event_time", _TS),
        ("channel", pa.string()),
        ("mcc", pa.string()),
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
    ],
    FRAUD_LABELS: [
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("is_fraud", pa.bool_()),
        ("label_time", _TS),
        ("source", pa.string()),
    ],
}
_TABLE_OF_TOPIC = {TRANSACTIONS: "transactions", FRAUD_LABELS: "fraud_labels"}
_POLARS_TS = pl.Datetime("ms", "UTC")
_POLARS_TYPES: dict[pa.DataType, pl.DataType] = {
    pa.string(): pl.String(),
    pa.float64(): pl.Float64(),
    pa.bool_(): pl.Boolean(),
    _TS: _POLARS_TS,
}


def table_name(database: str, kind: str, generation: str) -> str:
    """The quoted name of one history table, e.g. ``highwater.`transactions_g1```."""
    return f"{database}.`{kind}_{validate_generation(generation)}`"


def migrations() -> list[tuple[str, str]]:
    """``(name, sql)`` of every migration, in version order."""
    folder = resources.files("sinks") / "migrations"
    found = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text()) for name in found]


def _statements(sql: str) -> list[str]:
    """The statements of a migration file (``;`` at a line end separates them; comments dropped)."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";").strip()]


class ClickHouseOfflineStore:
    """The offline store on ClickHouse (see the module docstring)."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self.database = database
        self._client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        self._client.command(
            f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations (generation String, version String, "
            "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree "
            "ORDER BY (generation, version)"
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ClickHouseOfflineStore:
        """A store on ``settings.clickhouse_dsn``, in database ``settings.offline.database``."""
        dsn = settings.effective_clickhouse_dsn
        client = clickhouse_connect.get_client(dsn=dsn, compress=False, autogenerate_session_id=False)
        return cls(client, settings.offline.database)

    @property
    def client(self) -> Client:
        """The clickhouse-connect client (for queries this interface does not name)."""
        return self._client

    # --- generations --------------------------------------------------------------------------------
    def migrate(self, generation: str) -> list[str]:
        """Apply the migrations ``generation`` lacks, in order; returns their names."""
        validate_generation(generation)
        done = set(self._applied(generation))
        applied = []
        for name, sql in migrations():
            if name in done:
                continue
            for statement in _statements(sql):
                self._client.command(statement.format(database=self.database, generation=generation))
            # Through polars: Client.insert and pyarrow tables would import pandas (seconds) first.
            self._client.insert_arrow(
                f"{self.database}.schema_migrations",
                pl.DataFrame({"generation": [generation], "version": [name]}).to_arrow(),
            )
            applied.append(name)
        return applied

    def _applied(self, generation: str) -> list[str]:
        result = self._client.query(
            f"SELECT version FROM {self.database}.schema_migrations FINAL WHERE generation = {{g:String}} "
            "ORDER BY version",
            parameters={"g": generation},
        )
        return [row[0] for row in result.result_rows]

    def generations(self) -> list[str]:
        """Generations with at least one migration applied."""
        result = self._client.query(
            f"SELECT DISTINCT generation FROM {self.database}.schema_migrations FINAL ORDER BY generation"
        )
        return [row[0] for row in result.result_rows]

    def require(self, generation: str) -> None:
        """UnknownGenerationError unless ``generation`` has offline tables."""
        known = self.generations()
        if generation not in known:
            raise UnknownGenerationError(generation, known)

    def drop_generation(self, generation: str) -> None:
        """Drop ``generation``'s tables and forget its migrations."""
        for kind in _TABLE_OF_TOPIC.values():
            self._client.command(f"DROP TABLE IF EXISTS {table_name(self.database, kind, generation)}")
        self._client.command(
            f"DELETE FROM {self.database}.schema_migrations WHERE generation = {{g:String}}",
            parameters={"g": generation},
        )

    # --- writing ------------------------------------------------------------------------------------
    def write_history(self, generation: str, events: Sequence[HistoryEvent]) -> None:
        """Insert ``events`` into their topics' history tables, one insert per table."""
        by_topic: dict[str, list[HistoryEvent]] = {}
        for event in events:
            by_topic.setdefault(event.topic, []).append(event)
        for topic, rows in by_topic.items():
            self._insert_history(generation, topic, _rows_frame(topic, rows))

    def write_history_frame(
        self, generation: str, topic: str, frame: pl.DataFrame, apply_seq: int, ingested_at_ms: int
    ) -> None:
        """Insert ``topic``'s events in ``frame`` (see :meth:`OfflineStore.write_history_frame`)."""
        if frame.height:
            stamped = frame.with_columns(
                pl.lit(apply_seq, pl.UInt64()).alias("apply_seq"),
                pl.lit(ingested_at_ms, pl.Int64()).alias("ingested_at"),
            )
            self._insert_history(generation, topic, stamped)

    def _insert_history(self, generation: str, topic: str, frame: pl.DataFrame) -> None:
        kind = _TABLE_OF_TOPIC.get(topic)
        if kind is None:
            raise ValueError(f"no history table for topic {topic!r}")
        self._client.insert_arrow(table_name(self.database, kind, generation), _history_table(topic, frame))

    # --- reading ------------------------------------------------------------------------------------
    def tables(self, generation: str) -> dict[str, str]:
        """Placeholder name -> quoted table name, for ``str.format`` of queries."""
        return {kind: table_name(self.database, kind, generation) for kind in _TABLE_OF_TOPIC.values()}

    def query_arrow(self, sql: str, generation: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        """Run ``sql`` (``{transactions}``/``{fraud_labels}`` name the generation's tables) into Arrow."""
        return self._client.query_arrow(
            sql.format(**self.tables(generation)), parameters=dict(parameters or {}), use_strings=True
        )

    def command(self, sql: str, generation: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Run a statement with the same table placeholders as :meth:`query_arrow`."""
        return self._client.command(sql.format(**self.tables(generation)), parameters=dict(parameters or {}))

    def close(self) -> None:
        """Close the client."""
        self._client.close()


def _rows_frame(topic: str, rows: Sequence[HistoryEvent]) -> pl.DataFrame:
    """``rows`` as the frame :func:`_history_table` takes (timestamps as epoch milliseconds)."""
    columns: dict[str, list[Any]] = {
        "partition": [r.partition for r in rows],
        "offset": [r.offset for r in rows],
        "late": [r.late for r in rows],
        "late_reason": [r.late_reason for r in rows],
        "apply_seq": [r.apply_seq for r in rows],
        "ingested_at": [r.ingested_at_ms for r in rows],
    }
    schema: dict[str, pl.DataType] = {
        "partition": pl.Int64(),
        "offset": pl.Int64(),
        "late": pl.Boolean(),
        "late_reason": pl.String(),
        "apply_seq": pl.UInt64(),
        "ingested_at": pl.Int64(),
    }
    for name, kind in _EVENT_FIELDS[topic]:
        columns[name] = [r.event.get(name) for r in rows]
        schema[name] = pl.Int64() if kind == _TS else _POLARS_TYPES[kind]
    return pl.DataFrame(columns, schema=schema)


def _history_table(topic: str, frame: pl.DataFrame) -> pa.Table:
    """The history rows of ``frame``'s events in their table's Arrow layout.

    ``frame``: the topic's event fields, ``partition``, ``offset``, ``late``, ``late_reason``,
    ``apply_seq`` and ``ingested_at`` (epoch milliseconds). Built in polars: creating a table in pyarrow
    imports pandas on first use (seconds at start-up).
    """
    columns = [
        pl.lit(topic, pl.String()).alias("topic"),
        pl.col("partition").cast(pl.UInt32()),
        pl.col("offset").cast(pl.UInt64()),
    ]
    for name, kind in _EVENT_FIELDS[topic]:
        columns.append(pl.col(name).cast(_POLARS_TYPES[kind]))
    if topic == TRANSACTIONS:
        columns += [
            pl.col("late").cast(pl.Boolean()),
            pl.col("late_reason").cast(pl.String()),
            pl.col("apply_seq").cast(pl.UInt64()),
        ]
    columns.append(pl.col("ingested_at").cast(pl.Int64()).cast(_POLARS_TS))
    return frame.select(columns).to_arrow()
