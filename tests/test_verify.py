"""``replay.verify``: two generations built from the same events are identical; each kind of drift is found.

Both generations are written directly through the store APIs (no broker): the same synthetic
transactions, in the same batches, to the online store and to history. Then ``vb`` is perturbed one way
per test, and the report must name that difference, with its kind and where it is, and nothing that is
not a difference (processing-time history columns).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from highwater.cli import app
from highwater.settings import Settings
from highwater.stack.env import settings_env
from replay.verify import Difference, VerifyReport, verify
from schemas.catalog import TRANSACTIONS
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.offline import HistoryEvent
from sinks.online import AppliedEvent, EntityUpdate, PartitionCheckpoint, WriteBatch
from sinks.redis_online import FIELD_SEPARATOR, RedisOnlineStore
from streams.features import REGISTRY
from streams.synthetic import SyntheticStream

pytestmark = pytest.mark.stack

A, B = "va", "vb"
PARTITIONS = 4
BATCH = 500
LATE_EVERY = 250  # every 250th transaction is late: in history (flagged), not online
INGESTED_AT_MS = 1_780_000_000_000


@cache
def _transactions() -> list[dict[str, Any]]:
    return SyntheticStream(seed=3, count=3_000).transactions()


def _partition(txn: dict[str, Any]) -> int:
    return zlib.crc32(txn["card_id"].encode()) % PARTITIONS


def _applied(txn: dict[str, Any]) -> AppliedEvent:
    """The event as streams/apply_sink.py builds it: id, time, one update per entity of the topic."""
    updates = tuple(
        EntityUpdate(e.name, str(txn[e.key_field]), REGISTRY.payload_of(e.name, txn))
        for e in REGISTRY.entities_of_topic(TRANSACTIONS)
    )
    return AppliedEvent(str(txn["transaction_id"]), int(txn["event_time"]), updates)


def _build(
    client: redis.Redis,
    offline: ClickHouseOfflineStore,
    settings: Settings,
    generation: str,
    *,
    ingested_at_ms: int = INGESTED_AT_MS,
    apply_seq_base: int = 0,
    online: bool = True,
) -> None:
    """Write the synthetic transactions to ``generation`` (history, and online unless told not to)."""
    store = RedisOnlineStore(client, settings.for_generation(generation))
    offline.migrate(generation)
    next_offset = [0] * PARTITIONS
    max_time: list[int | None] = [None] * PARTITIONS
    txns = _transactions()
    for number, start in enumerate(range(0, len(txns), BATCH), start=1):
        batch = WriteBatch()
        history: list[HistoryEvent] = []
        touched: set[int] = set()
        for i, txn in enumerate(txns[start : start + BATCH], start=start):
            partition = _partition(txn)
            offset = next_offset[partition]
            next_offset[partition] += 1
            touched.add(partition)
            late = i % LATE_EVERY == LATE_EVERY - 1
            if late:
                batch.counters["late"] = batch.counters.get("late", 0) + 1
            else:
                batch.events.append(_applied(txn))
                batch.counters["applied"] = batch.counters.get("applied", 0) + 1
                current = max_time[partition]
                max_time[partition] = max(current or 0, int(txn["event_time"]))
            # Optional fields left out now and then: NULLs must compare equal to NULLs.
            recorded = dict(txn, latitude=None, longitude=None, mcc=None) if i % 10 == 5 else txn
            history.append(
                HistoryEvent(
                    TRANSACTIONS,
                    partition,
                    offset,
                    recorded,
                    ingested_at_ms + i,
                    late,
                    "beyond allowed lateness" if late else "",
                    apply_seq_base + number,
                )
            )
        batch.checkpoints = [
            PartitionCheckpoint(TRANSACTIONS, p, next_offset[p], max_time[p]) for p in sorted(touched)
        ]
        offline.write_history(generation, history)
        if online:
            store.write(batch)


def _drop(client: redis.Redis, offline: ClickHouseOfflineStore, generation: str) -> None:
    keys = list(client.scan_iter(match=f"hw:{generation}:*", count=10_000))
    for start in range(0, len(keys), 1_000):
        client.delete(*keys[start : start + 1_000])
    offline.drop_generation(generation)


@dataclass
class Pair:
    """Two generations built from the same events, and what a test needs to perturb and verify them."""

    settings: Settings
    client: redis.Redis
    offline: ClickHouseOfflineStore

    def verify(self) -> VerifyReport:
        return verify(self.settings, A, B, progress=False, redis_client=self.client, offline=self.offline)

    def history(self, generation: str, where: str = "1") -> list[dict[str, Any]]:
        table = self.offline.query_arrow(
            f"SELECT * FROM {{transactions}} FINAL WHERE {where} ORDER BY partition, offset", generation
        )
        return table.to_pylist()


@pytest.fixture
def pair(
    offline_settings: Settings, redis_client: redis.Redis, offline_store: ClickHouseOfflineStore
) -> Iterator[Pair]:
    for generation in (A, B):
        _drop(redis_client, offline_store, generation)
        _build(redis_client, offline_store, offline_settings, generation)
    try:
        yield Pair(offline_settings, redis_client, offline_store)
    finally:
        for generation in (A, B):
            _drop(redis_client, offline_store, generation)


def _card_event(client: redis.Redis) -> tuple[str, str, bytes, float]:
    """(card id, event id, member, score) of the first event of the first card of ``vb``."""
    card = _transactions()[0]["card_id"]
    key = f"hw:{B}:ev:{{card:{card}}}"
    first: list[tuple[bytes, float]] = client.zrange(key, 0, 0, withscores=True)  # type: ignore[assignment]
    member, score = first[0]
    return card, member.decode().split(FIELD_SEPARATOR)[0], member, score


def _kinds(report: VerifyReport) -> set[str]:
    return set(report.totals)


def _only(report: VerifyReport, kind: str) -> list[Difference]:
    return [d for d in report.differences if d.kind == kind]


# --- identical ------------------------------------------------------------------------------------
def test_generations_built_from_the_same_events_are_identical(pair: Pair) -> None:
    report = pair.verify()
    assert report.ok, report.differences[:5]
    assert report.difference_count == 0 and report.differences == []
    applied = [t for i, t in enumerate(_transactions()) if i % LATE_EVERY != LATE_EVERY - 1]
    cards, merchants = {t["card_id"] for t in applied}, {t["merchant_id"] for t in applied}
    assert report.entities == 2  # card and merchant
    assert report.entity_ids == len(cards) + len(merchants) > 100
    assert report.events == 2 * len(applied)  # each event sits under its card and its merchant
    assert len(report.as_of_ms) == 3
    per_as_of = len(cards) * len(REGISTRY.features_of("card")) + len(merchants) * len(
        REGISTRY.features_of("merchant")
    )
    assert report.feature_values == 3 * per_as_of
    assert report.seen == len(applied)
    assert report.checkpoints == PARTITIONS
    assert report.counters == 2
    assert report.history_compared
    assert report.history_rows == {"transactions": (3_000, 3_000), "fraud_labels": (0, 0)}


def test_processing_time_columns_of_history_are_not_differences(pair: Pair) -> None:
    """Re-written with other ingested_at and apply_seq (a later run would have them), vb still matches."""
    _build(
        pair.client,
        pair.offline,
        pair.settings,
        B,
        ingested_at_ms=INGESTED_AT_MS + 86_400_000,
        apply_seq_base=70,
        online=False,
    )
    rows_a, rows_b = pair.history(A, "offset = 0"), pair.history(B, "offset = 0")
    assert [r["ingested_at"] for r in rows_a] != [r["ingested_at"] for r in rows_b]
    assert [r["apply_seq"] for r in rows_a] != [r["apply_seq"] for r in rows_b]
    report = pair.verify()
    assert report.ok, report.differences[:5]


# --- online ---------------------------------------------------------------------------------------
def test_an_event_missing_online_is_reported_with_its_entity_and_id(pair: Pair) -> None:
    card, event_id, member, score = _card_event(pair.client)
    pair.client.zrem(f"hw:{B}:ev:{{card:{card}}}", member)
    report = pair.verify()
    assert not report.ok
    events = _only(report, "online.event")
    assert len(events) == 1 and report.totals["online.event"] == 1
    missing = events[0]
    assert missing.where == f"card:{card} {event_id}"
    assert missing.a_value["event_time_ms"] == int(score) and missing.b_value is None
    assert _kinds(report) == {"online.event", "online.feature"}  # the 7-day window still holds it
    assert all(d.where.startswith(f"card:{card} card_") for d in _only(report, "online.feature"))


def test_a_changed_amount_in_an_event_is_reported(pair: Pair) -> None:
    card, event_id, member, score = _card_event(pair.client)
    key = f"hw:{B}:ev:{{card:{card}}}"
    fields = member.decode().split(FIELD_SEPARATOR)
    amount_at = 1 + REGISTRY.fields_of("card").index("amount")
    old_amount = fields[amount_at]
    fields[amount_at] = repr(float(old_amount) + 0.01)
    pair.client.zrem(key, member)
    pair.client.zadd(key, {FIELD_SEPARATOR.join(fields): score})
    report = pair.verify()
    events = _only(report, "online.event")
    assert [d.where for d in events] == [f"card:{card} {event_id}"]
    assert events[0].a_value["fields"]["amount"] == old_amount
    assert events[0].b_value["fields"]["amount"] == fields[amount_at]
    assert events[0].a_value["event_time_ms"] == events[0].b_value["event_time_ms"]
    avg = [d for d in _only(report, "online.feature") if " card_amount_avg_7d @ " in d.where]
    assert avg and all(d.where.startswith(f"card:{card} ") for d in avg)
    assert avg[0].a_value.value != avg[0].b_value.value


def test_a_changed_counter_is_reported(pair: Pair) -> None:
    pair.client.hincrby(f"hw:{B}:meta:counters", "applied", 1)
    report = pair.verify()
    assert report.totals == {"online.counter": 1}
    applied = len(_transactions()) - len(_transactions()) // LATE_EVERY
    assert report.differences == [Difference("online.counter", "applied", applied, applied + 1)]


def test_a_changed_checkpoint_is_reported(pair: Pair) -> None:
    key = f"hw:{B}:meta:checkpoints"
    offset, _, max_time = pair.client.hget(key, f"{TRANSACTIONS}:2").decode().partition(":")  # type: ignore[union-attr]
    pair.client.hset(key, f"{TRANSACTIONS}:2", f"{int(offset) + 1}:{max_time}")
    report = pair.verify()
    assert report.totals == {"online.checkpoint": 1}
    (difference,) = report.differences
    assert difference.where == f"{TRANSACTIONS}:2"
    assert difference.a_value == PartitionCheckpoint(TRANSACTIONS, 2, int(offset), int(max_time))
    assert difference.b_value == PartitionCheckpoint(TRANSACTIONS, 2, int(offset) + 1, int(max_time))


# --- history --------------------------------------------------------------------------------------
def test_a_missing_history_row_is_reported(pair: Pair) -> None:
    pair.offline.command(
        "ALTER TABLE {transactions} DELETE WHERE partition = 1 AND offset = 7 SETTINGS mutations_sync = 2", B
    )
    assert pair.history(B, "partition = 1 AND offset = 7") == []
    report = pair.verify()
    assert report.totals == {"history.missing": 1}
    (difference,) = report.differences
    assert difference.kind == "history.missing"
    assert difference.where == f"transactions {TRANSACTIONS}:1:7"
    assert difference.b_value is None
    row = pair.history(A, "partition = 1 AND offset = 7")[0]
    assert difference.a_value["transaction_id"] == row["transaction_id"]
    assert "ingested_at" not in difference.a_value and "apply_seq" not in difference.a_value
    assert report.history_rows["transactions"] == (3_000, 2_999)


def test_a_history_row_with_another_amount_is_reported(pair: Pair) -> None:
    txns = _transactions()
    partition = _partition(txns[0])
    changed = dict(txns[0], amount=txns[0]["amount"] + 1.0)
    # Re-writing an offset replaces its row (ReplacingMergeTree; readers use FINAL).
    pair.offline.write_history(B, [HistoryEvent(TRANSACTIONS, partition, 0, changed, INGESTED_AT_MS)])
    report = pair.verify()
    assert report.totals == {"history.changed": 1}
    (difference,) = report.differences
    assert difference.where == f"transactions {TRANSACTIONS}:{partition}:0"
    assert difference.a_value == {"amount": txns[0]["amount"]}
    assert difference.b_value == {"amount": txns[0]["amount"] + 1.0}


# --- command line ---------------------------------------------------------------------------------
def test_the_command_exits_0_when_identical_1_when_different_2_for_an_unknown_generation(
    pair: Pair, cli_env: None
) -> None:
    runner = CliRunner()
    same = runner.invoke(app, ["verify", A, B])
    assert same.exit_code == 0, same.output
    assert "identical" in same.output
    pair.client.hincrby(f"hw:{B}:meta:counters", "applied", 1)
    different = runner.invoke(app, ["verify", A, B, "--limit", "5"])
    assert different.exit_code == 1, different.output
    assert "online.counter" in different.output and "applied" in different.output
    unknown = runner.invoke(app, ["verify", A, "nope"])
    assert unknown.exit_code == 2, unknown.output
    assert "unknown generation 'nope'" in unknown.output
    assert "Traceback" not in unknown.output


def test_the_command_reports_bad_input_in_one_line_without_a_traceback(
    stack: Settings, tmp_path: Path
) -> None:
    # A fresh in-process ClickHouse of its own: the subprocess must not share the session's chDB path.
    env = os.environ | settings_env(stack) | {"HIGHWATER_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}"}
    done = subprocess.run(
        [sys.executable, "-m", "highwater.cli", "verify", "nope-a", "nope-b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: unknown generation 'nope-a'")
    assert "Traceback" not in done.stderr + done.stdout
