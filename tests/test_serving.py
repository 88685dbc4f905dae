"""FeatureService over gRPC against the real Redis online store of the local stack.

The server runs in-process on a free port. Each server gets its own online-store generation (key
namespace), so these tests neither see nor disturb what other tests write to the same Redis. Expected
values are worked out by hand from a few events (see ``_EVENTS``).
"""

from __future__ import annotations

import gc
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

from highwater.settings import Settings, get_settings
from highwater.stack.env import settings_env
from serving.client import FeatureClient, FeatureServiceError, OnlineFeatures
from serving.protos import features_pb2, features_pb2_grpc
from serving.server import FeatureServer, build_server, freeze_startup_heap
from serving.service import MAX_ENTITY_IDS, SERVICE_NAME
from serving.timeconv import format_ms
from sinks.online import AppliedEvent, EntityUpdate, PartitionCheckpoint, WriteBatch
from sinks.redis_online import RedisOnlineStore
from streams.features import REGISTRY

pytestmark = pytest.mark.stack

T0 = 1_772_409_600_000  # 2026-03-02T00:00:00Z: the pipeline clock after _EVENTS
MIN = 60_000
RETENTION_MS = 3_600_000

# (event id, card, merchant, event time, amount)
_EVENTS = [
    ("e1", "c1", "m1", T0 - 30 * MIN, 10.0),
    ("e2", "c1", "m2", T0 - 10 * MIN, 25.5),
    ("e3", "c1", "m1", T0 - 2 * MIN, 4.5),
    ("e4", "c2", "m2", T0, 0.0),
]


@dataclass
class Served:
    """A running server on its own store generation."""

    settings: Settings
    store: RedisOnlineStore
    server: FeatureServer

    @property
    def target(self) -> str:
        return self.server.target


def _settings(stack: Settings, **update: object) -> Settings:
    online = stack.online.model_copy(
        update={"generation": f"t{uuid.uuid4().hex[:12]}", "retention_ms": RETENTION_MS}
    )
    return stack.model_copy(update={"grpc_host": "127.0.0.1", "grpc_port": 0, "online": online, **update})


@contextmanager
def _serve(settings: Settings) -> Iterator[Served]:
    store = RedisOnlineStore.from_settings(settings)
    server = build_server(settings, store)
    server.start()
    try:
        yield Served(settings, store, server)
    finally:
        server.stop(None)


def _applied(event_id: str, time_ms: int, record: dict[str, object]) -> AppliedEvent:
    updates = tuple(
        EntityUpdate(e.name, str(record[e.key_field]), REGISTRY.payload_of(e.name, record))
        for e in REGISTRY.entities_of_topic("transactions")
    )
    return AppliedEvent(event_id, time_ms, updates)


@pytest.fixture(scope="module")
def served(stack: Settings) -> Iterator[Served]:
    """A server whose store holds _EVENTS (card and merchant updates) with the clock at T0."""
    with _serve(_settings(stack)) as running:
        events: list[AppliedEvent] = []
        for event_id, card, merchant, time_ms, amount in _EVENTS:
            record = {"amount": amount, "merchant_id": merchant, "card_id": card}
            events.append(_applied(event_id, time_ms, record))
        running.store.write(
            WriteBatch(
                events=events,
                checkpoints=[PartitionCheckpoint("transactions", 0, len(_EVENTS), T0)],
            )
        )
        yield running


@pytest.fixture()
def client(served: Served) -> Iterator[FeatureClient]:
    with FeatureClient(served.target) as c:
        yield c


def _error(call: Callable[[], object]) -> FeatureServiceError:
    with pytest.raises(FeatureServiceError) as info:
        call()
    return info.value


# --- values -------------------------------------------------------------------------------------------


def test_all_card_features_default_to_the_clock(client: FeatureClient) -> None:
    got = client.get_online_features("card", ["c1", "c2", "never-seen"])

    assert got.as_of_ms == T0
    assert got.event_time_clock_ms == T0
    assert got.as_of == datetime(2026, 3, 2, tzinfo=UTC)
    assert list(got.feature_names) == [f.name for f in REGISTRY.features_of("card")]
    assert [row.entity_id for row in got.rows] == ["c1", "c2", "never-seen"]
    c1, c2, unseen = (row.values for row in got.rows)
    assert c1 == {
        "card_txn_count_5m": 1,
        "card_txn_count_1h": 3,
        "card_txn_count_24h": 3,
        "card_amount_sum_1h": 40.0,
        "card_amount_sum_24h": 40.0,
        "card_amount_max_24h": 25.5,
        "card_amount_avg_7d": pytest.approx(40.0 / 3),
        "card_distinct_merchants_24h": 2,
        "card_seconds_since_last_txn": 120.0,
    }
    # A zero amount gives 0.0, not null: the max of one event of 0 is 0.
    assert c2["card_amount_max_24h"] == 0.0
    assert c2["card_amount_sum_1h"] == 0.0
    assert c2["card_seconds_since_last_txn"] == 0.0
    # No events: counts and sums are 0, max/avg/seconds-since-last are null.
    assert unseen["card_txn_count_1h"] == 0
    assert unseen["card_amount_sum_24h"] == 0.0
    assert unseen["card_amount_max_24h"] is None
    assert unseen["card_amount_avg_7d"] is None
    assert unseen["card_seconds_since_last_txn"] is None
    assert isinstance(c1["card_txn_count_1h"], int)
    assert isinstance(c1["card_amount_sum_1h"], float)


def test_null_and_zero_differ_on_the_wire(served: Served) -> None:
    request = features_pb2.GetOnlineFeaturesRequest(
        entity="card", entity_ids=["c2", "never-seen"], features=["card_amount_max_24h", "card_txn_count_5m"]
    )
    with grpc.insecure_channel(served.target) as channel:
        response = features_pb2_grpc.FeatureServiceStub(channel).GetOnlineFeatures(request, timeout=10)

    c2_max, c2_count = response.results[0].values
    unseen_max, unseen_count = response.results[1].values
    assert c2_max.WhichOneof("value") == "double_value" and c2_max.double_value == 0.0
    assert c2_max.latest_event_time.ToMilliseconds() == T0
    assert unseen_max.WhichOneof("value") is None
    assert not unseen_max.HasField("latest_event_time")
    assert c2_count.WhichOneof("value") == "int64_value" and c2_count.int64_value == 1
    assert unseen_count.WhichOneof("value") == "int64_value" and unseen_count.int64_value == 0


def test_explicit_as_of_and_latest_event_times(client: FeatureClient) -> None:
    as_of = datetime(2026, 3, 1, 23, 45, tzinfo=UTC)  # T0 - 15 min: only e1 has happened
    features = [
        "card_txn_count_5m",
        "card_txn_count_1h",
        "card_amount_max_24h",
        "card_seconds_since_last_txn",
    ]
    got = client.get_online_features("card", ["c1"], features, as_of=as_of)

    assert got.as_of_ms == T0 - 15 * MIN
    assert got.event_time_clock_ms == T0
    row = got.rows[0]
    assert row.values == {
        "card_txn_count_5m": 0,
        "card_txn_count_1h": 1,
        "card_amount_max_24h": 10.0,
        "card_seconds_since_last_txn": 900.0,
    }
    assert row.latest_event_times_ms["card_txn_count_5m"] is None
    assert row.latest_event_times_ms["card_txn_count_1h"] == T0 - 30 * MIN
    assert row.latest_event_time("card_amount_max_24h") == datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    # Epoch milliseconds are accepted too, and a repeated id gets its own (equal) row.
    again = client.get_online_features("card", ["c1", "c1"], features, as_of=T0 - 15 * MIN)
    assert [r.values for r in again.rows] == [row.values, row.values]


def test_merchant_features(client: FeatureClient) -> None:
    got = client.get_online_features("merchant", ["m1", "m2"])
    assert got.to_dict() == {
        "m1": {"merchant_txn_count_1h": 2, "merchant_amount_sum_24h": 14.5},
        "m2": {"merchant_txn_count_1h": 2, "merchant_amount_sum_24h": 25.5},
    }


# --- refused requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entity", "ids", "features", "expected"),
    [
        ("bank", ["c1"], [], "entity: unknown entity 'bank'; known: card, merchant"),
        ("", ["c1"], [], "entity: unknown entity ''"),
        ("card", ["c1"], ["card_txn_count_1h", "nope"], "features[1]: unknown feature 'nope'"),
        ("card", ["c1"], ["merchant_txn_count_1h"], "'merchant_txn_count_1h' belongs to entity 'merchant'"),
        ("card", [], [], "entity_ids: expected 1 to 1000 ids, got 0"),
        (
            "card",
            [f"c{i}" for i in range(MAX_ENTITY_IDS + 1)],
            [],
            "entity_ids: expected 1 to 1000 ids, got 1001",
        ),
        ("card", ["c1", ""], [], "entity_ids[1]: empty entity id"),
    ],
)
def test_invalid_arguments_name_the_field(
    client: FeatureClient, entity: str, ids: list[str], features: list[str], expected: str
) -> None:
    error = _error(lambda: client.get_online_features(entity, ids, features))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in error.details
    assert str(error).startswith("INVALID_ARGUMENT: ")


def test_as_of_beyond_retention_fails_the_precondition(client: FeatureClient) -> None:
    too_old = T0 - RETENTION_MS - 1
    error = _error(lambda: client.get_online_features("card", ["c1"], as_of=too_old))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details.startswith(f"as_of: {format_ms(too_old)} is older than")
    assert format_ms(T0) in error.details
    assert "retention 1h (3600000 ms)" in error.details
    # The oldest servable as_of is exactly the clock minus the retention.
    oldest = client.get_online_features("card", ["c1"], ["card_txn_count_24h"], as_of=T0 - RETENTION_MS)
    assert oldest.value("c1", "card_txn_count_24h") == 0


def test_no_clock_and_no_as_of_fails_the_precondition(stack: Settings) -> None:
    with _serve(_settings(stack)) as empty, FeatureClient(empty.target) as client:
        error = _error(lambda: client.get_online_features("card", ["c1"]))
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details.startswith("as_of: not set")
        assert "no event-time clock" in error.details
        # With an explicit as_of an empty store answers: nothing has happened yet.
        got = client.get_online_features("card", ["c1"], ["card_txn_count_1h"], as_of=T0)
        assert got.event_time_clock_ms is None
        assert got.value("c1", "card_txn_count_1h") == 0


def test_redis_down_is_unavailable(stack: Settings) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    with _serve(_settings(stack, redis_url=f"redis://127.0.0.1:{dead_port}/0")) as broken:
        with FeatureClient(broken.target) as client:
            error = _error(lambda: client.get_online_features("card", ["c1"], as_of=T0))
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert error.details.startswith("online store unavailable:")
        assert "Traceback" not in error.details


# --- server plumbing ----------------------------------------------------------------------------------


def test_health_reports_serving(served: Served) -> None:
    with grpc.insecure_channel(served.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_feature_service(served: Served) -> None:
    with grpc.insecure_channel(served.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"highwater.v1.FeatureService", "grpc.health.v1.Health"} <= names


def test_a_port_in_use_is_an_error(served: Served) -> None:
    settings = served.settings.model_copy(update={"grpc_port": served.server.port})
    with pytest.raises(RuntimeError, match=f"127.0.0.1:{served.server.port}"):
        build_server(settings, served.store)


def test_graceful_stop_reports_not_serving_first(stack: Settings) -> None:
    with _serve(_settings(stack)) as running:
        running.server.graceful_stop(grace_s=1.0)
        for service in ("", SERVICE_NAME):
            reply = running.server.health.Check(health_pb2.HealthCheckRequest(service=service), None)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


# --- CLI ----------------------------------------------------------------------------------------------


def _cli(served: Served, *args: str) -> tuple[int, str]:
    from highwater.cli import app

    env = settings_env(served.settings.model_copy(update={"grpc_target": served.target}))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["features", "get", *args], env=env)
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def test_cli_prints_one_id_with_null_distinct_from_zero(served: Served) -> None:
    code, out = _cli(
        served,
        "card",
        "never-seen",
        "-f",
        "card_txn_count_1h",
        "-f",
        "card_amount_max_24h",
        "--as-of",
        "2026-03-02T00:00:00Z",
    )
    assert code == 0, out
    assert f"card as of {format_ms(T0)} (event-time clock {format_ms(T0)})" in out
    lines = {line.split()[1]: line for line in out.splitlines() if "card_" in line}
    assert lines["card_txn_count_1h"].split()[3] == "0"
    assert lines["card_amount_max_24h"].split()[3] == "null"


def test_cli_prints_several_ids_side_by_side(served: Served) -> None:
    code, out = _cli(served, "card", "c1", "c2", "-f", "card_amount_sum_1h", "-f", "card_amount_avg_7d")
    assert code == 0, out
    header = next(line for line in out.splitlines() if "feature" in line)
    assert header.index("c1") < header.index("c2")
    sums = next(line for line in out.splitlines() if "card_amount_sum_1h" in line).split()
    assert [cell for cell in sums if cell not in ("│", "┃")][1:] == ["40", "0"]
    avgs = next(line for line in out.splitlines() if "card_amount_avg_7d" in line).split()
    assert [cell for cell in avgs if cell not in ("│", "┃")][1:] == ["13.3333", "0"]


def test_cli_error_is_one_line_and_exit_2(served: Served) -> None:
    code, out = _cli(served, "bank", "c1")
    assert code == 2
    assert out.strip() == "error: INVALID_ARGUMENT: entity: unknown entity 'bank'; known: card, merchant"
    code, out = _cli(served, "card", "c1", "--as-of", "yesterday")
    assert code == 2
    assert out.startswith("error: as_of: cannot parse 'yesterday'")


def test_client_takes_naive_datetimes_as_utc(client: FeatureClient) -> None:
    got = client.get_online_features("card", ["c1"], ["card_txn_count_1h"], as_of=datetime(2026, 3, 2))
    assert isinstance(got, OnlineFeatures)
    assert got.as_of_ms == T0
    assert got.to_dict() == {"c1": {"card_txn_count_1h": 3}}


def test_freezing_the_start_up_heap_keeps_it_out_of_collection(client: FeatureClient) -> None:
    """What ``highwater serve`` does before serving: objects alive then are no longer traversed by the
    collector's full passes, and the server answers as before."""
    alive_at_start_up = {"model": [1.0, 2.0]}
    assert any(o is alive_at_start_up for o in gc.get_objects())
    try:
        frozen = freeze_startup_heap()
        # Frozen objects still die by reference count, and threads left by earlier tests free some
        # between the two calls; nothing joins the frozen generation without another freeze.
        assert 0 < gc.get_freeze_count() <= frozen
        assert not any(o is alive_at_start_up for o in gc.get_objects())
        answer = client.get_online_features("card", ["c1"], ["card_txn_count_1h"])
        assert answer.value("c1", "card_txn_count_1h") == 3
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
