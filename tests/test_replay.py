"""Replay and generations on the real local stack: the log rebuilds the same state, also after a kill.

The module has a stack of its own: it reads whole topics and moves the live pointer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer

from highwater.bootstrap import bootstrapped_stack
from highwater.settings import Settings
from highwater.stack.env import isolated_settings, settings_env
from replay.generations import drop, list_generations, live_generation, promote
from replay.replay import ReplayError, _timestamp_at, replay, resolve_positions
from schemas.catalog import FRAUD_LABELS, LATE_EVENTS, TRANSACTIONS
from sinks.clickhouse_offline import ClickHouseOfflineStore
from sinks.offline import UnknownGenerationError
from sinks.redis_online import RedisOnlineStore
from streams.features import REGISTRY
from streams.job import run_job
from streams.producer import EventProducer
from streams.synthetic import SyntheticStream
from tests.oracle import read_topic
from tests.state import online_state

pytestmark = [pytest.mark.stack, pytest.mark.slow]

COUNT = 6_000


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack of its own whose live generation g1 was built by the stream job from a disordered log."""
    settings = isolated_settings(tmp_path_factory.mktemp("replay"))
    settings.stream.batch_size = 700
    with bootstrapped_stack(settings):
        stream = SyntheticStream(seed=5, count=COUNT, disorder_ms=4_000, late_share=0.01)
        report = EventProducer(settings).produce_many((d.topic, d.record) for d in stream.deliveries())
        assert not report.rejected
        run_job(until_end=True, settings=settings, show_progress=False)
        yield settings


def _history(settings: Settings, generation: str) -> dict[str, list[dict[str, Any]]]:
    """History rows without the processing-time columns (apply_seq, ingested_at)."""
    store = ClickHouseOfflineStore.from_settings(settings)
    try:
        return {
            table: store.query_arrow(
                f"SELECT * EXCEPT (ingested_at{', apply_seq' if table == 'transactions' else ''}) "
                f"FROM {{{table}}} FINAL ORDER BY topic, partition, offset",
                generation,
            ).to_pylist()
            for table in ("transactions", "fraud_labels")
        }
    finally:
        store.close()


@pytest.fixture(scope="module")
def replayed(live: Settings) -> str:
    report = replay(live, "r1", show_progress=False)
    assert not report.resumed and report.processed > COUNT
    return "r1"


def test_a_replay_rebuilds_the_live_state_exactly(live: Settings, replayed: str) -> None:
    assert online_state(live, replayed) == online_state(live, "g1")
    history = _history(live, replayed)
    assert history == _history(live, "g1")
    assert len(history["transactions"]) >= COUNT and history["fraud_labels"]
    assert any(row["late"] for row in history["transactions"])


def test_a_replay_counts_late_and_malformed_records_without_routing_them_again(live: Settings) -> None:
    routed_before = len(read_topic(live, LATE_EVENTS))
    assert routed_before > 0

    replay(live, "r9", show_progress=False)

    assert len(read_topic(live, LATE_EVENTS)) == routed_before
    live_counters = RedisOnlineStore.from_settings(live).counters()
    assert RedisOnlineStore.from_settings(live.for_generation("r9")).counters() == live_counters
    assert live_counters["late"] == routed_before


def test_a_replay_killed_half_way_resumes_to_the_same_state(live: Settings, replayed: str) -> None:
    resumable = live.model_copy(deep=True)
    resumable.stream.replay_batch_size = 150
    resumable.stream.replay_chunk_records = 500  # many bulk writes, so the kill lands among them
    env = os.environ | settings_env(resumable)
    command = [sys.executable, "-m", "highwater.cli", "replay", "--generation", "r2", "--from", "earliest"]
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis.from_url(live.redis_url)
    deadline = time.monotonic() + 120
    try:
        while int(client.hget("hw:r2:meta:counters", "applied") or 0) < COUNT // 3:
            assert job.poll() is None, "the replay ended before it could be killed mid-way"
            assert time.monotonic() < deadline, "the replay made no progress"
            time.sleep(0.01)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(30)
    assert client.hget("hw:r2:meta:replay", "status") == b"running"

    report = replay(resumable, "r2", show_progress=False)

    assert report.resumed and 0 < report.processed < COUNT
    assert online_state(live, "r2") == online_state(live, replayed)
    assert _history(live, "r2") == _history(live, replayed)
    drop(live, "r2")


def test_a_replay_writes_a_smaller_first_chunk(live: Settings) -> None:
    """The first bulk write is a quarter of the others, so the writers start early (streams.apply_sink)."""
    chunked = live.model_copy(deep=True)
    chunked.stream.replay_batch_size = 50
    chunked.stream.replay_chunk_records = 2_000

    replay(chunked, "r5", show_progress=False)

    store = ClickHouseOfflineStore.from_settings(live)
    try:
        rows = store.query_arrow(
            "SELECT apply_seq, count() AS n FROM {transactions} FINAL GROUP BY apply_seq ORDER BY apply_seq",
            "r5",
        ).to_pylist()
    finally:
        store.close()
    sizes = [row["n"] for row in rows]
    # Chunks are whole polls of at most 50 records per partition; labels count towards a chunk too.
    assert 300 <= sizes[0] <= 1_000, sizes
    assert all(n >= 1_800 for n in sizes[1:-1]), sizes
    drop(live, "r5")


def test_a_replay_up_to_positions_stops_there(live: Settings) -> None:
    store = RedisOnlineStore.from_settings(live)
    ends = {p: c.next_offset // 2 for p, c in store.checkpoints(TRANSACTIONS).items()}
    spec = ",".join(f"{TRANSACTIONS}:{p}:{o}" for p, o in ends.items())
    replay(live, "half", end=spec, targets=("online",), show_progress=False)
    half = RedisOnlineStore.from_settings(live.for_generation("half"))
    assert {p: c.next_offset for p, c in half.checkpoints(TRANSACTIONS).items()} == ends
    assert "half" not in ClickHouseOfflineStore.from_settings(live).generations()  # history not a target
    drop(live, "half")


def test_promotion_switches_readers_atomically(live: Settings, replayed: str) -> None:
    store = RedisOnlineStore.from_settings(live)
    ends = {p: c.next_offset // 3 for p, c in store.checkpoints(TRANSACTIONS).items()}
    spec = ",".join(f"{TRANSACTIONS}:{p}:{o}" for p, o in ends.items())
    replay(live, "third", end=spec, targets=("online",), show_progress=False)
    reader = RedisOnlineStore.from_settings(live, follow_live=True)
    ids = sorted(
        {key.split(":")[-1].rstrip("}") for key in online_state(live, "g1") if key.startswith("ev:{card")}
    )
    ids = ids[:200]
    names = [f.name for f in REGISTRY.features_of("card")]
    as_of = int(redis.Redis.from_url(live.redis_url).get("hw:g1:meta:clock") or 0)
    answers = {
        gen: RedisOnlineStore.from_settings(live.for_generation(gen)).read("card", ids, names, as_of).rows
        for gen in ("g1", "third")
    }
    assert answers["g1"] != answers["third"], "the generations must differ for the test to mean anything"
    seen: list[tuple[str, bool]] = []
    stop = threading.Event()

    def read_forever() -> None:
        while not stop.is_set():
            answer = reader.read("card", ids, names, as_of)
            seen.append((answer.generation, answer.rows == answers[answer.generation]))

    thread = threading.Thread(target=read_forever)
    thread.start()
    try:
        for _ in range(20):
            assert promote(live, "third") in ("g1", "third")
            time.sleep(0.005)
            promote(live, "g1")
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join()
    assert {gen for gen, _ in seen} == {"g1", "third"}
    assert all(whole for _, whole in seen), "a read mixed two generations"
    assert live_generation(live) == "g1"
    drop(live, "third")


def test_generations_list_shows_the_live_one_and_the_replays(live: Settings, replayed: str) -> None:
    infos = {info.name: info for info in list_generations(live)}
    assert infos["g1"].live and not infos[replayed].live
    assert infos[replayed].applied == infos["g1"].applied > 0
    assert infos[replayed].history_rows == infos["g1"].history_rows
    assert infos[replayed].replay["status"] == "done"


def test_bad_replay_and_generation_requests_are_refused_with_their_reason(
    live: Settings, replayed: str
) -> None:
    with pytest.raises(ReplayError, match="'g1' is live"):
        replay(live, "g1", show_progress=False)
    with pytest.raises(ReplayError, match="was begun with"):
        replay(live, replayed, start="transactions:0:5", show_progress=False)
    with pytest.raises(ReplayError, match="cannot read 'yesterday'"):
        resolve_positions(live, "yesterday", [TRANSACTIONS], is_end=False)
    with pytest.raises(ReplayError, match="topic 'nope'"):
        resolve_positions(live, "nope:0:5", [TRANSACTIONS, FRAUD_LABELS], is_end=False)
    with pytest.raises(ValueError, match="invalid generation name"):
        replay(live, "Bad Name", show_progress=False)
    with pytest.raises(UnknownGenerationError, match="'ghost'"):
        promote(live, "ghost")
    with pytest.raises(ValueError, match="is live"):
        drop(live, "g1")
    env = os.environ | settings_env(live)
    result = subprocess.run(
        [sys.executable, "-m", "highwater.cli", "generations", "promote", "ghost"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "unknown generation 'ghost'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_replay_from_a_time_starts_at_the_first_record_produced_then(live: Settings) -> None:
    future = resolve_positions(live, "2999-01-01T00:00:00Z", [TRANSACTIONS], is_end=False)
    ends = RedisOnlineStore.from_settings(live).checkpoints(TRANSACTIONS)
    assert future == {TRANSACTIONS: {p: c.next_offset for p, c in ends.items()}}
    past = resolve_positions(live, "2000-01-01T00:00:00Z", [TRANSACTIONS], is_end=False)
    assert past == {TRANSACTIONS: dict.fromkeys(ends, 0)}
    middle = ends[0].next_offset // 2
    consumer = Consumer(live.kafka_config(**{"group.id": "test-replay-time"}))
    try:
        stamp = _timestamp_at(consumer, TRANSACTIONS, 0, middle)
        found = resolve_positions(live, _iso(stamp), [TRANSACTIONS], is_end=False)[TRANSACTIONS][0]
        assert found <= middle
        assert _timestamp_at(consumer, TRANSACTIONS, 0, found) >= stamp
        assert found == 0 or _timestamp_at(consumer, TRANSACTIONS, 0, found - 1) < stamp
    finally:
        consumer.close()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
