"""``highwater demo``: the whole path once, on the embedded stack, with a short report.

Starts the local stack (unless one is already up, which it then leaves running), creates the topics,
produces a seeded synthetic stream with fraud scenarios plus two malformed records, runs the stream job
to the end of the log (online features in Redis, history in ClickHouse), serves features over gRPC,
reads the cards of each fraud scenario through the Python client, replays the log into a new generation
and verifies it against the live one, builds a point-in-time training set with labels and checks it
against what was served, then runs the fraud model (:mod:`highwater.demo_model`: streaming scores,
online learning from the delayed labels, quality against batch baselines with an AUC plot, gRPC scores,
a model replay), prints what happened, and stops everything it started.

Example:
    $ make demo        # or: uv run highwater demo --count 50000
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from highwater.bootstrap import bootstrap_log
from highwater.demo_model import fraud_model_demo
from highwater.settings import Settings, get_settings
from highwater.stack import LocalStack
from replay.generations import drop
from replay.replay import replay
from replay.verify import verify
from schemas.catalog import TRANSACTIONS
from schemas.serde import AvroSerde
from serving.client import FeatureClient, OnlineFeatures
from serving.server import build_server
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.feature_log import feature_skew
from sinks.redis_online import RedisOnlineStore, live_generation
from sinks.training_set import build_training_set
from streams.features import REGISTRY
from streams.job import run_job
from streams.producer import EventProducer
from streams.synthetic import SyntheticStream

console = Console()
DEMO_SPAN_MS = 35 * 86_400_000


@contextmanager
def _local_stack(settings: Settings) -> Iterator[bool]:
    """Start the local stack unless it is up; yields whether this call started it."""
    stack = LocalStack(settings)
    started = stack.start()
    if started:
        console.print(
            f"[bold]local stack[/] up: broker {settings.broker_bootstrap}, registry "
            f"{settings.schema_registry_url}, redis {settings.redis_url}"
        )
    else:
        console.print("[bold]local stack[/] already running: using it and leaving it up")
    try:
        yield started
    finally:
        if started:
            stack.stop()
            console.print("[bold]local stack[/] stopped")


def _forget_old_history(settings: Settings) -> None:
    """Drop the history an earlier demo left in the local ClickHouse (its data directory outlives the
    in-memory broker): this run's log starts empty, and history must describe this log only."""
    store = ClickHouseOfflineStore.from_settings(settings)
    try:
        for generation in store.generations():
            store.drop_generation(generation)
    finally:
        store.close()


def _produce(settings: Settings, stream: SyntheticStream) -> tuple[int, float]:
    producer = EventProducer(settings)
    deliveries = [(d.topic, d.record) for d in stream.deliveries()]
    started = time.perf_counter()
    report = producer.produce_many(deliveries, progress=True)
    elapsed = time.perf_counter() - started
    if not report.ok:
        raise RuntimeError(f"producing the demo stream failed: {report}")
    # Two records a broken producer could write, to show the dead-letter path:
    raw = Producer(settings.kafka_config())
    raw.produce(TRANSACTIONS, key=b"demo-bad", value=b"this is not Avro")
    bad = stream.transactions()[0] | {"transaction_id": "demo-negative", "amount": -12.5}
    raw.produce(
        TRANSACTIONS, key=b"demo-bad", value=AvroSerde(settings.schema_registry_url).encode(TRANSACTIONS, bad)
    )
    raw.flush(30)
    return report.written, elapsed


def _scenario_cards(stream: SyntheticStream) -> dict[str, str]:
    by_id = {t["transaction_id"]: t for t in stream.transactions()}
    cards: dict[str, str] = {}
    for txn_id, scenario in sorted(stream.scenarios().items()):
        cards.setdefault(scenario, by_id[txn_id]["card_id"])
    fraud_cards = set(cards.values())
    normal = next(t["card_id"] for t in stream.transactions() if t["card_id"] not in fraud_cards)
    cards["no fraud"] = normal
    return cards


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "null"
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def _features_table(response: OnlineFeatures, labels: dict[str, str]) -> Table:
    table = Table(title=f"card features as of {response.as_of.isoformat()} (the event-time clock)")
    table.add_column("feature", no_wrap=True)
    for label, card in labels.items():
        table.add_column(f"{card}\n{label.replace('_', ' ')}", justify="right")
    for name in response.feature_names:
        table.add_row(
            name.removeprefix("card_"), *(_fmt(response.value(card, name)) for card in labels.values())
        )
    return table


def run_demo(count: int = 50_000, seed: int = 7) -> None:
    """Run the demo described in the module docstring."""
    settings = get_settings()
    # The demo applies 35 days at once and then scores each transaction as of its own time, so the
    # online store keeps them all; live, scoring keeps up with the log and the default retention holds.
    settings.online.retention_ms = DEMO_SPAN_MS + 86_400_000
    # The synthetic stream delivers 0.2% of transactions 10 min to 2 h late; the learner waits a day so
    # the quality report has a progressive prediction for every transaction (with the default 5 min,
    # their scores are dead-lettered as late and counted).
    settings.model.max_out_of_orderness_ms = 86_400_000
    # 35 days: fraud labels arrive 1-10 days after their transaction, so the model learns within the run.
    stream = SyntheticStream(seed=seed, count=count, late_share=0.002, span_ms=DEMO_SPAN_MS)
    with _local_stack(settings) as fresh:
        bootstrap_log(settings)
        if fresh:  # a fresh in-memory log: history of an earlier run describes another log
            _forget_old_history(settings)
        written, produce_s = _produce(settings, stream)
        summary = stream.summary()
        console.print(
            f"[bold]produced[/] {written:,} records ({summary.transactions:,} transactions, "
            f"{summary.labels:,} labels) in {produce_s:.1f} s; fraud {summary.fraud_share:.2%}, "
            f"delivered beyond lateness {summary.late_share:.2%}; plus 2 malformed records"
        )
        started = time.perf_counter()
        processed = run_job(until_end=True, settings=settings)
        job_s = time.perf_counter() - started
        store = RedisOnlineStore.from_settings(settings)
        counters = store.counters()
        server = build_server(settings, store)
        server.start()
        try:
            with FeatureClient(server.target) as client:
                labels = _scenario_cards(stream)
                started = time.perf_counter()
                cards = client.get_online_features("card", list(labels.values()))
                read_ms = (time.perf_counter() - started) * 1000
                merchants = client.get_online_features(
                    "merchant", sorted({t["merchant_id"] for t in stream.transactions()})[:3]
                )
        finally:
            server.stop(1.0)
        console.print(_features_table(cards, labels))
        offline_lines = _replay_verify_train(settings, stream, cards, labels)
        model_lines = fraud_model_demo(settings, stream)
        merchant_table = Table(title="merchant features")
        merchant_table.add_column("merchant")
        for name in merchants.feature_names:
            merchant_table.add_column(name, justify="right")
        for row in merchants.rows:
            merchant_table.add_row(row.entity_id, *(_fmt(row.values[n]) for n in merchants.feature_names))
        console.print(merchant_table)
        malformed = sum(v for k, v in counters.items() if k.startswith("malformed:"))
        report = Table(title="Highwater demo report", show_header=False)
        report.add_row(
            "stream job", f"{processed:,} records in {job_s:.1f} s ({processed / job_s:,.0f} records/s)"
        )
        report.add_row("applied online", f"{counters.get('applied', 0):,}")
        report.add_row("late → late-events", f"{counters.get('late', 0):,}")
        report.add_row(
            "malformed → dead-letter",
            f"{malformed:,} " + str({k: v for k, v in counters.items() if k.startswith("malformed:")}),
        )
        report.add_row(
            "entities",
            ", ".join(
                f"{e.name} ({len(REGISTRY.features_of(e.name))} features)" for e in REGISTRY.entities()
            ),
        )
        report.add_row(
            "gRPC read", f"{len(labels)} cards, all features, {read_ms:.1f} ms (first call, cold channel)"
        )
        for name, line in [*offline_lines, *model_lines]:
            report.add_row(name, line)
        console.print(report)
        console.print(
            "next: `uv run highwater up`, `uv run highwater produce`, `uv run highwater run`, "
            "`uv run highwater serve`, `uv run highwater features get card <id>`"
        )


def _replay_verify_train(
    settings: Settings, stream: SyntheticStream, cards: OnlineFeatures, labels: dict[str, str]
) -> list[tuple[str, str]]:
    """Replay into a new generation and verify it; build a training set and compare it with serving."""
    lines: list[tuple[str, str]] = []
    generation = f"demo-{int(time.time())}"
    replayed = replay(settings, generation)
    checked = verify(settings, live_generation(settings), generation, progress=False)
    lines.append(
        (
            "replay",
            f"{replayed.processed:,} records into generation {generation} in {replayed.seconds:.1f} s "
            f"({replayed.rate:,.0f} records/s)",
        )
    )
    history_rows = sum(a for a, _ in checked.history_rows.values())
    lines.append(
        (
            "verify live vs replay",
            f"{checked.difference_count:,} differences over {checked.entity_ids:,} ids, "
            f"{checked.feature_values:,} feature values and {history_rows:,} history rows",
        )
    )
    drop(settings, generation)
    txns = stream.transactions()
    spine = pa.table(
        {
            "transaction_id": [t["transaction_id"] for t in txns],
            "card_id": [t["card_id"] for t in txns],
            "merchant_id": [t["merchant_id"] for t in txns],
            "timestamp": [t["event_time"] for t in txns],
        }
    )
    started = time.perf_counter()
    cutoff = max(t["event_time"] for t in txns) + 10 * 86_400_000
    train = build_training_set(settings, spine, labels=True, label_cutoff=cutoff)
    train_s = time.perf_counter() - started
    labelled = train.column("is_fraud").drop_null()
    frauds = sum(1 for v in labelled.to_pylist() if v)
    lines.append(
        (
            "training set",
            f"{train.num_rows:,} rows x {train.num_columns} columns in {train_s:.1f} s; "
            f"{len(labelled):,} labelled ({frauds:,} fraud)",
        )
    )
    as_of = cards.as_of_ms
    names = [f.name for f in REGISTRY.features_of("card")]
    at_clock = pa.table({"card_id": list(labels.values()), "timestamp": [as_of] * len(labels)})
    offline = build_training_set(settings, at_clock, names).to_pylist()
    equal = sum(1 for row in offline for name in names if row[name] == cards.value(row["card_id"], name))
    lines.append(
        (
            "training set vs served",
            f"{equal} of {len(offline) * len(names)} card feature values equal at the clock "
            "(any others differ by events that arrived beyond lateness)",
        )
    )
    store = ClickHouseOfflineStore.from_settings(settings)
    try:
        skew = feature_skew(store, live_generation(settings), explain_limit=0)
    finally:
        store.close()
    lines.append(
        (
            "feature log vs complete data",
            f"{skew.num_rows:,} (transaction, feature) values served differently from the complete data: "
            "late events, or events applied in a later batch (a catch-up reads partitions at different "
            "speeds); `highwater feature-log skew` lists them with their explanation",
        )
    )
    return lines
