"""Training sets, the feature log and feature skew, against an independent computation in Python.

History is written directly with ``write_history`` from a seeded synthetic stream, delivered out of order
over three partitions in apply batches, with late events, duplicates (some late copies, some in another
partition), a tie in event time whose summation order matters, and an event 1 ms after a spine time.
The oracle below shares nothing with the SQL: it deduplicates with pandas, finds windows with ``bisect``
and folds sums left to right in Python floats, which is what the online store's Lua does, so every value
must be *exactly* equal (counts and floats alike).
"""

from __future__ import annotations

import bisect
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from typer.testing import CliRunner

import sinks.feature_log
from highwater.cli import app
from highwater.settings import Settings
from schemas.catalog import FRAUD_LABELS, TRANSACTIONS
from serving.timeconv import format_ms
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.feature_log import feature_log, feature_skew
from sinks.offline import HistoryEvent, UnknownGenerationError
from sinks.redis_online import LIVE_GENERATION_KEY
from sinks.training_set import TrainingSetError, build_training_set
from streams.features import REGISTRY, Aggregation, Feature
from streams.synthetic import SyntheticStream

pytestmark = pytest.mark.stack

GEN = "ts_main"
PARTITIONS = 3
BATCH = 25
INGESTED_AT_MS = 1_780_000_000_000
FEATURES = REGISTRY.all_features()
WINDOWS = sorted({f.window_ms for f in FEATURES})


# --- the data -------------------------------------------------------------------------------------------
@dataclass
class History:
    transactions: list[HistoryEvent]
    labels: list[HistoryEvent]
    leak: tuple[str, int]  # (card, T): an event with a huge amount sits at T + 1
    tie: tuple[str, int]  # (card, t): four events at the same time, delivered in reverse id order


def _partition(txn: dict[str, Any]) -> int:
    return zlib.crc32(txn["card_id"].encode()) % PARTITIONS


@cache
def _history() -> History:
    """Transactions in delivery order with log positions, late flags, apply batches and duplicates."""
    rng = random.Random(20260301)
    stream = SyntheticStream(seed=5, count=3_000, n_cards=40, n_merchants=40, late_share=0.01)
    deliveries = [d for d in stream.deliveries() if d.topic == TRANSACTIONS]
    records: list[tuple[dict[str, Any], bool]] = [
        (d.record, d.late or rng.random() < 0.03) for d in deliveries
    ]
    # Re-deliveries of 3% of the transactions, later in the log (same content); a third in another partition.
    for i in rng.sample(range(len(records)), len(records) * 3 // 100):
        record = records[i][0]
        records.insert(
            min(len(records), i + rng.randint(1, 300)), (dict(record, _dup=True), rng.random() < 0.3)
        )
    first, last = deliveries[0].record["event_time"], max(d.record["event_time"] for d in deliveries)
    # Four events of a card of their own at the same time, delivered in reverse id order: summed in
    # (event_time, transaction_id) order they make 1.0, in delivery order 0.9999999999999999.
    tie_card, tie_time = "card-tie", first + (last - first) // 2
    base = {
        **deliveries[0].record,
        "card_id": tie_card,
        "merchant_id": "merchant-00001",
        "event_time": tie_time,
    }
    at = len(records) // 2
    for position, (suffix, amount) in enumerate((("d", 0.4), ("c", 0.3), ("b", 0.2), ("a", 0.1))):
        tie = {**base, "transaction_id": f"txn-tie-{suffix}", "amount": amount}
        records.insert(at + position, (tie, False))
    # Leakage probe: an event with a huge amount 1 ms after a spine time.
    leak_card, leak_time = "card-00002", first + (last - first) // 3
    leak = {
        **base,
        "card_id": leak_card,
        "transaction_id": "txn-leak",
        "amount": 1e9,
        "event_time": leak_time + 1,
    }
    records.insert(len(records) // 3, (leak, False))

    offsets = [0] * PARTITIONS
    transactions = []
    for position, (record, late) in enumerate(records):
        partition = _partition(record)
        if record.pop("_dup", False) and rng.random() < 0.33:
            partition = (partition + 1) % PARTITIONS
        transactions.append(
            HistoryEvent(
                TRANSACTIONS,
                partition,
                offsets[partition],
                record,
                INGESTED_AT_MS,
                late=late,
                late_reason="beyond lateness" if late else "",
                apply_seq=position // BATCH,
            )
        )
        offsets[partition] += 1
    labels = [
        HistoryEvent(FRAUD_LABELS, 0, i, label, INGESTED_AT_MS) for i, label in enumerate(stream.labels())
    ]
    return History(transactions, labels, (leak_card, leak_time), (tie_card, tie_time))


@pytest.fixture(scope="module")
def history(offline_store: ClickHouseOfflineStore) -> Iterator[History]:
    data = _history()
    offline_store.drop_generation(GEN)
    offline_store.migrate(GEN)
    try:
        offline_store.write_history(GEN, data.transactions)
        offline_store.write_history(GEN, data.labels)
        yield data
    finally:
        offline_store.drop_generation(GEN)


# --- the oracle -----------------------------------------------------------------------------------------
def _frame(events: Sequence[HistoryEvent]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "transaction_id": e.event["transaction_id"],
                "card_id": e.event["card_id"],
                "merchant_id": e.event["merchant_id"],
                "amount": e.event["amount"],
                "t": e.event["event_time"],
                "partition": e.partition,
                "offset": e.offset,
                "late": e.late,
                "apply_seq": e.apply_seq,
            }
            for e in events
        ]
    )


def complete_events(events: Sequence[HistoryEvent]) -> pd.DataFrame:
    """Every transaction once: the copy with the smallest (partition, offset), late or not."""
    frame = _frame(events).sort_values(["partition", "offset"])
    return frame.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)


def applied_events(events: Sequence[HistoryEvent]) -> pd.DataFrame:
    """Every transaction applied online once: its first applied copy (smallest apply_seq, then position)."""
    frame = _frame(events)
    frame = frame[~frame["late"]].sort_values(["apply_seq", "partition", "offset"])
    return frame.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)


@dataclass
class _Window:
    times: list[int]
    ids: list[str]
    fields: dict[str, list[Any]]


class Oracle:
    """Window aggregates over one set of events, per entity key, in (event_time, transaction_id) order."""

    def __init__(self, events: pd.DataFrame) -> None:
        self.by_key: dict[tuple[str, str], pd.DataFrame] = {}
        for entity in REGISTRY.entities():
            for key, group in events.groupby(entity.key_field):
                self.by_key[(entity.name, str(key))] = group.sort_values(["t", "transaction_id"])
        self._lists = {
            k: (
                g["t"].tolist(),
                g["transaction_id"].tolist(),
                g["amount"].tolist(),
                g["merchant_id"].tolist(),
                g["apply_seq"].tolist(),
            )
            for k, g in self.by_key.items()
        }

    def window(self, feature: Feature, key: str, as_of: int, max_seq: int | None = None) -> _Window:
        """The key's events in (T-W, T] (applied by ``max_seq`` when given), in order."""
        times, ids, amounts, merchants, seqs = self._lists.get((feature.entity, key), ([], [], [], [], []))
        lo = bisect.bisect_right(times, as_of - feature.window_ms)  # t == T - W is out
        hi = bisect.bisect_right(times, as_of)  # t == T is in
        keep = [i for i in range(lo, hi) if max_seq is None or seqs[i] <= max_seq]
        return _Window(
            [times[i] for i in keep],
            [ids[i] for i in keep],
            {"amount": [amounts[i] for i in keep], "merchant_id": [merchants[i] for i in keep]},
        )

    def value(self, feature: Feature, key: str, as_of: int, max_seq: int | None = None) -> Any:
        window = self.window(feature, key, as_of, max_seq)
        agg = feature.aggregation
        if agg is Aggregation.COUNT:
            return len(window.times)
        if agg is Aggregation.SECONDS_SINCE_LAST:
            return (as_of - window.times[-1]) / 1000 if window.times else None
        assert feature.field is not None
        values = window.fields[feature.field]
        if agg is Aggregation.DISTINCT_COUNT:
            return len(set(values))
        total = 0.0
        for v in values:  # left fold from 0 in event order, like the online store's Lua
            total += v
        if agg is Aggregation.SUM:
            return total
        if not values:
            return None
        if agg is Aggregation.MAX:
            return max(values)
        if agg is Aggregation.AVG:
            return total / len(values)
        raise AssertionError(agg)


def _assert_same(got: Any, want: Any, where: str, problems: list[str]) -> None:
    if got is None or want is None:
        if not (got is None and want is None):
            problems.append(f"{where}: got {got!r}, expected {want!r}")
    elif type(got) is not type(want) and not (isinstance(got, float) and isinstance(want, float)):
        problems.append(f"{where}: got {got!r} ({type(got).__name__}), expected {want!r}")
    elif got != want:  # exact: same events, same order, same IEEE operations
        problems.append(f"{where}: got {got!r}, expected {want!r}")


# --- the spine ------------------------------------------------------------------------------------------
def _spine(data: History) -> pa.Table:
    """Rows at event times, between events, on window edges, with unknown ids; shuffled."""
    rng = random.Random(7)
    complete = complete_events(data.transactions)
    first, last = int(complete["t"].min()), int(complete["t"].max())
    rows: list[dict[str, Any]] = []

    def add(card: str, merchant: str, as_of: int, txn: str) -> None:
        if first <= as_of <= last:
            rows.append({"card_id": card, "merchant_id": merchant, "transaction_id": txn, "at": as_of})

    sample = complete.sample(400, random_state=1)
    for row in sample.itertuples():
        add(row.card_id, row.merchant_id, row.t, row.transaction_id)  # at the event
        add(row.card_id, row.merchant_id, row.t + rng.randint(1, 7_200_000), row.transaction_id)  # between
    for row in complete.sample(60, random_state=2).itertuples():
        for window in WINDOWS:
            add(row.card_id, row.merchant_id, row.t + window, row.transaction_id)  # the event just left
            add(row.card_id, row.merchant_id, row.t + window - 1, row.transaction_id)  # last ms in it
    for i in range(20):
        as_of = rng.randint(first, last)
        add("card-unknown", "merchant-unknown", as_of, f"txn-unknown-{i}")
        add(str(sample["card_id"].iloc[i]), "merchant-unknown", as_of, f"txn-unknown-{i}")
    add(data.tie[0], "merchant-00001", data.tie[1], "txn-tie-a")
    add(data.tie[0], "merchant-00001", data.tie[1] + 3_600_000 - 1, "txn-tie-a")
    add(data.leak[0], "merchant-00001", data.leak[1], "txn-leak")
    add(data.leak[0], "merchant-00001", data.leak[1] + 1, "txn-leak")
    add("card-unknown", "merchant-unknown", first, "txn-first")
    add("card-unknown", "merchant-unknown", last, "txn-last")
    rng.shuffle(rows)
    return pa.table(
        {
            "card_id": [r["card_id"] for r in rows],
            "merchant_id": [r["merchant_id"] for r in rows],
            "transaction_id": [r["transaction_id"] for r in rows],
            "timestamp": pa.array([r["at"] for r in rows], pa.timestamp("ms", tz="UTC")),
            "row_note": list(range(len(rows))),
        }
    )


def _as_ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


# --- training sets --------------------------------------------------------------------------------------
def test_every_feature_of_every_spine_row_matches_the_oracle_exactly(
    history: History, offline_store: ClickHouseOfflineStore
) -> None:
    spine = _spine(history)
    table = build_training_set(offline_store, spine, generation=GEN)

    assert table.column_names == [*spine.column_names, *(f.name for f in FEATURES)]
    assert table.select(spine.column_names).equals(spine)  # spine columns and row order kept
    for f in FEATURES:
        assert table.schema.field(f.name).type == (pa.int64() if f.aggregation.integral else pa.float64())
    oracle = Oracle(complete_events(history.transactions))
    problems: list[str] = []
    compared = 0
    for row in table.to_pylist():
        as_of = _as_ms(row["timestamp"])
        for f in FEATURES:
            key = row[REGISTRY.entity(f.entity).key_field]
            _assert_same(row[f.name], oracle.value(f, key, as_of), f"{key}@{as_of}.{f.name}", problems)
            compared += 1
    assert not problems, f"{len(problems)} of {compared} differ, e.g. {problems[:10]}"
    assert compared > 10_000
    nulls = sum(1 for row in table.to_pylist() if row["card_amount_max_24h"] is None)
    assert nulls > 0  # unknown cards: null max, not 0


def test_events_at_the_same_time_are_summed_in_transaction_id_order(
    history: History, offline_store: ClickHouseOfflineStore
) -> None:
    card, at = history.tie
    spine = pa.table({"card_id": [card], "timestamp": [at]})
    table = build_training_set(
        offline_store, spine, ["card_txn_count_5m", "card_amount_sum_1h"], generation=GEN
    )
    window = Oracle(complete_events(history.transactions)).window(
        REGISTRY.feature("card_amount_sum_1h"), card, at
    )
    assert window.ids == ["txn-tie-a", "txn-tie-b", "txn-tie-c", "txn-tie-d"]
    assert table["card_txn_count_5m"][0].as_py() == 4
    assert table["card_amount_sum_1h"][0].as_py() == 0.1 + 0.2 + 0.3 + 0.4 == 1.0
    assert 0.4 + 0.3 + 0.2 + 0.1 != 1.0  # the delivery order would not do


def test_an_event_after_the_as_of_time_never_counts(
    history: History, offline_store: ClickHouseOfflineStore
) -> None:
    card, at = history.leak
    spine = pa.table({"card_id": [card, card], "timestamp": [at, at + 1]})
    table = build_training_set(
        offline_store,
        spine,
        generation=GEN,
        features=[
            "card_amount_max_24h",
            "card_amount_sum_1h",
            "card_txn_count_5m",
            "card_seconds_since_last_txn",
        ],
    ).to_pylist()
    before, after = table
    assert before["card_amount_max_24h"] is None or before["card_amount_max_24h"] < 1e9
    assert before["card_amount_sum_1h"] < 1e9
    assert after["card_amount_max_24h"] == 1e9
    assert after["card_txn_count_5m"] == before["card_txn_count_5m"] + 1
    assert after["card_seconds_since_last_txn"] == 0.0


def test_timestamps_as_epoch_ms_and_microseconds_give_the_same_rows(
    history: History, offline_store: ClickHouseOfflineStore
) -> None:
    spine = _spine(history).slice(0, 50)
    ms = spine["timestamp"].cast(pa.int64())
    features = ["card_txn_count_1h", "card_amount_avg_7d", "merchant_amount_sum_24h"]
    reference = build_training_set(offline_store, spine, features, generation=GEN).drop(["timestamp"])
    as_int = spine.set_column(3, "at_ms", ms)
    by_int = build_training_set(offline_store, as_int, features, generation=GEN, timestamp_column="at_ms")
    assert by_int.drop(["at_ms"]).equals(reference)
    # Sub-millisecond parts change no window: T and floor(T) see the same events (seconds_since_last apart).
    micro = pa.array([v * 1000 + 999 for v in ms.to_pylist()], pa.timestamp("us"))
    by_us = build_training_set(
        offline_store, spine.set_column(3, "timestamp", micro), features, generation=GEN
    )
    assert by_us.drop(["timestamp"]).equals(reference)


def _latest_label(labels: Sequence[HistoryEvent], cutoff: int) -> dict[str, bool]:
    frame = pd.DataFrame(
        [
            {
                "id": e.event["transaction_id"],
                "at": e.event["label_time"],
                "partition": e.partition,
                "offset": e.offset,
                "is_fraud": e.event["is_fraud"],
            }
            for e in labels
        ]
    )
    frame = frame[frame["at"] <= cutoff].sort_values(["at", "partition", "offset"])
    return dict(zip(frame["id"], frame["is_fraud"], strict=True)) if len(frame) else {}


def test_labels_are_the_latest_before_the_cutoff(
    history: History, offline_store: ClickHouseOfflineStore
) -> None:
    generation = "ts_labels"
    offline_store.drop_generation(generation)
    offline_store.migrate(generation)
    try:
        txns = [e for e in history.transactions if not e.late][:200]
        offline_store.write_history(generation, txns)
        base = txns[0].event["event_time"] + 86_400_000
        ids = [e.event["transaction_id"] for e in txns]

        def label(i: int, partition: int, offset: int, at: int, is_fraud: bool) -> HistoryEvent:
            record = {
                "transaction_id": ids[i],
                "card_id": txns[i].event["card_id"],
                "is_fraud": is_fraud,
                "label_time": at,
                "source": "analyst",
            }
            return HistoryEvent(FRAUD_LABELS, partition, offset, record, INGESTED_AT_MS)

        labels = [
            label(0, 0, 0, base, True),  # fraud, later cleared
            label(0, 0, 1, base + 1000, False),
            label(1, 1, 0, base, False),  # same label_time: the larger (partition, offset) wins
            label(1, 0, 2, base, True),
            label(2, 0, 3, base + 5000, True),  # only after the early cutoff
        ]
        labels += [label(i, 2, i, base + i, i % 3 == 0) for i in range(3, 150)]
        offline_store.write_history(generation, labels)
        spine = pa.table(
            {
                "transaction_id": [*ids[:160], "txn-never-seen"],
                "card_id": [e.event["card_id"] for e in txns[:160]] + ["card-00001"],
                "timestamp": [e.event["event_time"] for e in txns[:160]] + [txns[0].event["event_time"]],
            }
        )
        for cutoff in (base + 500, base + 10_000, base + 100):
            table = build_training_set(
                offline_store,
                spine,
                ["card_txn_count_1h"],
                generation=generation,
                labels=True,
                label_cutoff=cutoff,
            )
            assert table.schema.field("is_fraud").type == pa.bool_()
            want = _latest_label(labels, cutoff)
            got = dict(zip(table["transaction_id"].to_pylist(), table["is_fraud"].to_pylist(), strict=True))
            assert got == {i: want.get(i) for i in got}, cutoff
        early = build_training_set(
            offline_store,
            spine.slice(0, 3),
            ["card_txn_count_1h"],
            generation=generation,
            labels=True,
            label_cutoff=datetime.fromtimestamp((base + 500) / 1000, tz=UTC),
        )["is_fraud"].to_pylist()
        late = build_training_set(
            offline_store,
            spine.slice(0, 3),
            ["card_txn_count_1h"],
            generation=generation,
            labels=True,
            label_cutoff=base + 10_000,
        )["is_fraud"].to_pylist()
        assert early == [True, False, None]  # id 1: same label_time, (1, 0) after (0, 2)
        assert late == [False, False, True]
    finally:
        offline_store.drop_generation(generation)


# --- bad input ------------------------------------------------------------------------------------------
def _spine_tables(store: ClickHouseOfflineStore) -> list[str]:
    result = store.client.query(
        "SELECT name FROM system.tables WHERE database = {d:String} AND name LIKE 'hw_spine_%'",
        parameters={"d": store.database},
    )
    return [row[0] for row in result.result_rows]


def _good_spine(history: History) -> pa.Table:
    event = next(e.event for e in history.transactions if not e.late)
    return pa.table(
        {
            "card_id": [event["card_id"]],
            "merchant_id": [event["merchant_id"]],
            "transaction_id": [event["transaction_id"]],
            "timestamp": pa.array([event["event_time"]], pa.timestamp("ms", tz="UTC")),
        }
    )


def test_bad_input_is_one_error_type_naming_the_problem(
    history: History, offline_store: ClickHouseOfflineStore
) -> None:
    spine = _good_spine(history)
    complete = complete_events(history.transactions)
    first, last = int(complete["t"].min()), int(complete["t"].max())

    def fails(expected: Sequence[str], *args: Any, **kwargs: Any) -> str:
        kwargs.setdefault("generation", GEN)
        with pytest.raises(TrainingSetError) as caught:
            build_training_set(offline_store, *args, **kwargs)
        message = str(caught.value)
        for text in expected:
            assert text in message, message
        return message

    fails(["card_id"], spine.drop(["card_id"]), ["card_txn_count_1h"])
    fails(["merchant_id"], spine.drop(["merchant_id"]), None)  # all features: merchant ones need it
    build_training_set(offline_store, spine.drop(["merchant_id"]), ["card_txn_count_1h"], generation=GEN)
    fails(["ts"], spine, ["card_txn_count_1h"], timestamp_column="ts")
    fails(["'card_txn_count_2h'"], spine, ["card_txn_count_1h", "card_txn_count_2h"])
    fails(["transaction_id"], spine.drop(["transaction_id"]), None, labels=True, label_cutoff=last)
    fails(["cutoff"], spine, None, labels=True)
    nulls = pa.table({"card_id": ["card-00001", None], "timestamp": [first, first]})
    fails(["'card_id'", "1 null"], nulls, ["card_txn_count_1h"])
    nulls = pa.table(
        {"card_id": ["card-00001", "card-00002"], "timestamp": pa.array([first, None], pa.int64())}
    )
    fails(["'timestamp'", "1 null"], nulls, ["card_txn_count_1h"])
    fails(
        ["timestamp", "string"],
        pa.table({"card_id": ["c"], "timestamp": ["2026-03-02"]}),
        ["card_txn_count_1h"],
    )
    history_range = f"{format_ms(first)} .. {format_ms(last)}"
    early = pa.table({"card_id": ["card-00001", "card-00001"], "timestamp": [first - 1, last]})
    fails([format_ms(first - 1), format_ms(last), history_range], early, ["card_txn_count_1h"])
    late = pa.table({"card_id": ["card-00001", "card-00001"], "timestamp": [first, last + 1]})
    fails([format_ms(first), format_ms(last + 1), history_range], late, ["card_txn_count_1h"])
    with pytest.raises(UnknownGenerationError) as caught:
        build_training_set(offline_store, spine, generation="ts_nope")
    assert isinstance(caught.value, TrainingSetError)
    assert "'ts_nope'" in str(caught.value)
    assert _spine_tables(offline_store) == []


def test_the_spine_table_is_dropped_when_the_query_fails(
    history: History, offline_store: ClickHouseOfflineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> pa.Table:
        if "hw_spine_" in args[0]:
            assert len(_spine_tables(offline_store)) == 1
            raise RuntimeError("the query failed")
        return ClickHouseOfflineStore.query_arrow(offline_store, *args, **kwargs)

    monkeypatch.setattr(offline_store, "query_arrow", broken)
    with pytest.raises(RuntimeError, match="the query failed"):
        build_training_set(offline_store, _good_spine(history), generation=GEN)
    monkeypatch.undo()
    assert _spine_tables(offline_store) == []


# --- the feature log ------------------------------------------------------------------------------------
def test_the_feature_log_is_what_was_served_and_skew_is_explained(
    history: History, offline_store: ClickHouseOfflineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied = applied_events(history.transactions)
    served = Oracle(applied)
    complete = Oracle(complete_events(history.transactions))
    log = feature_log(offline_store, GEN)
    assert log.column_names == [
        "transaction_id",
        "card_id",
        "merchant_id",
        "event_time",
        *(f.name for f in FEATURES),
    ]
    expected_order = applied.sort_values(["t", "transaction_id"])
    assert log["transaction_id"].to_pylist() == expected_order["transaction_id"].tolist()
    seq = dict(zip(applied["transaction_id"], applied["apply_seq"], strict=True))
    problems: list[str] = []
    expected_skew: dict[tuple[str, str], tuple[Any, Any, list[str], list[str]]] = {}
    first_applied = {r.transaction_id: r.apply_seq for r in applied.itertuples()}
    for row in log.to_pylist():
        as_of, t_seq = _as_ms(row["event_time"]), seq[row["transaction_id"]]
        for f in FEATURES:
            key = row[REGISTRY.entity(f.entity).key_field]
            want = served.value(f, key, as_of, max_seq=t_seq)
            _assert_same(row[f.name], want, f"{row['transaction_id']}.{f.name}", problems)
            full = complete.value(f, key, as_of)
            if full != want:
                window = complete.window(f, key, as_of)
                missing = [i for i in window.ids if first_applied.get(i, 1 << 62) > t_seq]
                late = [i for i in missing if i not in first_applied]
                after = [i for i in missing if i in first_applied]
                expected_skew[(row["transaction_id"], f.name)] = (want, full, late, after)
    assert not problems, f"{len(problems)} differ, e.g. {problems[:10]}"

    skew = feature_skew(offline_store, GEN)
    got = {
        (r["transaction_id"], r["feature"]): (
            r["served"],
            r["complete"],
            r["late_ids"],
            r["applied_after_ids"],
        )
        for r in skew.to_pylist()
    }
    assert len(got) == skew.num_rows
    assert set(got) == set(expected_skew)
    for key, (want_served, want_full, late, after) in expected_skew.items():
        g_served, g_full, g_late, g_after = got[key]
        assert (g_served, g_full) == (
            None if want_served is None else float(want_served),
            None if want_full is None else float(want_full),
        ), key
        assert (g_late, g_after) == (late, after), key
    assert any(v[2] for v in got.values()) and any(v[3] for v in got.values())  # both kinds occur
    # In chunks of a few hundred transactions (as long logs are computed), and explaining only a few:
    monkeypatch.setattr(sinks.feature_log, "CHUNK_ROWS", 300)
    assert feature_log(offline_store, GEN).equals(log)
    limited = feature_skew(offline_store, GEN, explain_limit=5)
    assert limited.num_rows == skew.num_rows
    assert limited.slice(0, 5).equals(skew.slice(0, 5))
    assert limited.slice(5)["late_ids"].null_count == skew.num_rows - 5
    assert all(
        r["unserved_count"] == len(r["late_ids"]) + len(r["applied_after_ids"]) > 0 for r in skew.to_pylist()
    )


def _event(txn_id: str, card: str, merchant: str, at: int, amount: float) -> dict[str, Any]:
    return {
        "transaction_id": txn_id,
        "card_id": card,
        "customer_id": "cust-1",
        "merchant_id": merchant,
        "amount": amount,
        "currency": "EUR",
        "event_time": at,
        "channel": "pos",
        "mcc": "5411",
        "latitude": None,
        "longitude": None,
    }


def test_in_order_batches_have_no_skew_and_the_log_equals_the_training_set(
    offline_store: ClickHouseOfflineStore,
) -> None:
    generation = "ts_inorder"
    txns = SyntheticStream(seed=9, count=800, n_cards=20, n_merchants=40).transactions()
    # One batch per event time (events of one time share it), in event-time order: nothing is ever behind.
    times = sorted({t["event_time"] for t in txns})
    batch = {at: i for i, at in enumerate(times)}
    events = [
        HistoryEvent(TRANSACTIONS, _partition(t), i, t, INGESTED_AT_MS, apply_seq=batch[t["event_time"]])
        for i, t in enumerate(txns)
    ]
    offline_store.drop_generation(generation)
    offline_store.migrate(generation)
    try:
        offline_store.write_history(generation, events)
        log = feature_log(offline_store, generation)
        spine = log.select(["transaction_id", "card_id", "merchant_id", "event_time"])
        train = build_training_set(offline_store, spine, generation=generation, timestamp_column="event_time")
        assert log.num_rows == len(txns)
        assert log.equals(train)
        assert feature_skew(offline_store, generation).num_rows == 0
    finally:
        offline_store.drop_generation(generation)


def test_a_late_event_and_one_applied_later_make_exactly_the_expected_skew(
    offline_store: ClickHouseOfflineStore,
) -> None:
    generation = "ts_skew"
    t0 = 1_772_409_600_000
    card = "card-skew"
    rows = [  # (id, merchant, seconds, amount, partition, offset, late, apply_seq)
        ("e1", "m1", 0, 10.0, 0, 0, False, 1),
        ("e2", "m2", 10, 20.0, 0, 1, True, 2),  # a late copy first in the log ...
        ("e2", "m2", 10, 20.0, 1, 0, False, 2),  # ... and an applied one: e2 was served, counted once
        ("e3", "m3", 20, 100.0, 0, 2, True, 3),  # late: never applied online
        ("e4", "m4", 30, 30.0, 0, 3, False, 6),  # applied after e5's batch
        ("e5", "m5", 40, 40.0, 0, 4, False, 5),
    ]
    events = [
        HistoryEvent(
            TRANSACTIONS, p, o, _event(i, card, m, t0 + s * 1000, a), INGESTED_AT_MS, late=late, apply_seq=seq
        )
        for i, m, s, a, p, o, late, seq in rows
    ]
    offline_store.drop_generation(generation)
    offline_store.migrate(generation)
    try:
        offline_store.write_history(generation, events)
        log = feature_log(offline_store, generation)
        assert log["transaction_id"].to_pylist() == ["e1", "e2", "e4", "e5"]
        assert log["card_txn_count_1h"].to_pylist() == [1, 2, 3, 3]  # e4 sees itself; e5 not yet e4
        skew = feature_skew(offline_store, generation).to_pylist()
        card_features = [f.name for f in REGISTRY.features_of("card")]
        # seconds_since_last is the transaction itself on both sides: no difference there.
        differing = [f for f in card_features if f != "card_seconds_since_last_txn"]
        assert [(r["transaction_id"], r["feature"]) for r in skew] == [("e4", f) for f in differing] + [
            ("e5", f) for f in differing
        ]
        by_key = {(r["transaction_id"], r["feature"]): r for r in skew}
        for f in differing:
            assert by_key[("e4", f)]["late_ids"] == ["e3"]
            assert by_key[("e4", f)]["applied_after_ids"] == []
            assert by_key[("e4", f)]["unserved_count"] == 1
            assert by_key[("e5", f)]["late_ids"] == ["e3"]
            assert by_key[("e5", f)]["applied_after_ids"] == ["e4"]
            assert by_key[("e5", f)]["unserved_count"] == 2
        e5 = by_key[("e5", "card_amount_sum_1h")]
        assert (e5["served"], e5["complete"]) == (10.0 + 20.0 + 40.0, 10.0 + 20.0 + 100.0 + 30.0 + 40.0)
        e4 = by_key[("e4", "card_amount_max_24h")]
        assert (e4["served"], e4["complete"]) == (30.0, 100.0)
        assert by_key[("e5", "card_txn_count_5m")]["served"] == 3.0
        assert by_key[("e5", "card_txn_count_5m")]["complete"] == 5.0
    finally:
        offline_store.drop_generation(generation)


# --- command line ---------------------------------------------------------------------------------------
def test_the_commands_write_the_same_tables_and_fail_in_one_line(
    history: History, offline_store: ClickHouseOfflineStore, cli_env: None, tmp_path: Path
) -> None:
    runner = CliRunner()
    spine = _spine(history).slice(0, 200)
    pq.write_table(spine, tmp_path / "spine.parquet")
    out = tmp_path / "train.parquet"
    cutoff = "2026-04-01T00:00:00Z"
    args = [
        "training-set",
        "--spine",
        str(tmp_path / "spine.parquet"),
        "--generation",
        GEN,
        "--out",
        str(out),
    ]
    done = runner.invoke(
        app,
        [
            *args,
            "--features",
            "card_txn_count_1h,merchant_amount_sum_24h",
            "--labels",
            "--label-cutoff",
            cutoff,
        ],
    )
    assert done.exit_code == 0, done.output
    assert "200 rows x 8 columns" in done.output
    expected = build_training_set(
        offline_store,
        spine,
        ["card_txn_count_1h", "merchant_amount_sum_24h"],
        generation=GEN,
        labels=True,
        label_cutoff=datetime(2026, 4, 1, tzinfo=UTC),
    )
    assert pq.read_table(out).equals(expected)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    failures = {
        "spine lacks column 'card_id'": [
            "--features",
            "card_txn_count_1h",
            "--timestamp-column",
            "timestamp",
        ],
        "unknown feature 'nope'": ["--features", "nope"],
        "unknown generation 'ts_nope'": ["--generation", "ts_nope"],
        "label cutoff": ["--labels", "--label-cutoff", "yesterday"],
        "labels need a label cutoff": ["--labels"],
    }
    pq.write_table(spine.drop(["card_id"]), tmp_path / "no_card.parquet")
    for message, extra in failures.items():
        target = tmp_path / "never.parquet"
        spine_file = "no_card.parquet" if "card_id" in message else "spine.parquet"
        call = [
            "training-set",
            "--spine",
            str(tmp_path / spine_file),
            "--generation",
            GEN,
            "--out",
            str(target),
        ]
        result = runner.invoke(app, [*call, *extra])
        assert result.exit_code == 2, (message, result.output)
        assert f"error: {message}" in result.output, result.output
        assert result.output.strip().count("\n") == 0, result.output
        assert "Traceback" not in result.output
        assert not target.exists()
    before = out.read_bytes()
    result = runner.invoke(app, [*args, "--features", "nope"])
    assert result.exit_code == 2 and out.read_bytes() == before  # an old file stays as it was

    log_out = tmp_path / "log.parquet"
    exported = runner.invoke(app, ["feature-log", "export", "--generation", GEN, "--out", str(log_out)])
    assert exported.exit_code == 0, exported.output
    assert pq.read_table(log_out).equals(feature_log(offline_store, GEN))
    report = runner.invoke(
        app, ["feature-log", "skew", "--generation", GEN, "--limit", "5"], env={"COLUMNS": "250"}
    )
    assert report.exit_code == 0, report.output
    skew = feature_skew(offline_store, GEN)
    assert f"{skew.num_rows:,} served value(s) differ" in report.output
    assert skew["transaction_id"][0].as_py() in report.output and "more (--limit)" in report.output
    unknown = runner.invoke(app, ["feature-log", "skew", "--generation", "ts_nope"])
    assert unknown.exit_code == 2 and "error: unknown generation 'ts_nope'" in unknown.output


def test_the_default_generation_is_the_live_one(
    history: History, offline_settings: Settings, redis_client: redis.Redis
) -> None:
    spine = _good_spine(history).slice(0, 5)
    with pytest.raises(UnknownGenerationError, match=offline_settings.online.generation):
        build_training_set(offline_settings, spine, ["card_txn_count_1h"])  # nothing promoted: g1, no tables
    redis_client.set(LIVE_GENERATION_KEY, GEN)
    try:
        live = build_training_set(offline_settings, spine, ["card_txn_count_1h"])
    finally:
        redis_client.delete(LIVE_GENERATION_KEY)
    assert live == build_training_set(offline_settings, spine, ["card_txn_count_1h"], generation=GEN)
