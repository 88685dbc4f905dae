"""The chDB server (``sinks.chdb_server``) through clickhouse-connect's HTTP client, as a ClickHouse server.

Most tests use the session stack's ``clickhouse`` part, in a database of their own; the restart test
runs a stack of its own (through the CLI and ``LocalStack``) to see the part listed, stopped without
leftovers, and its data still there after a restart.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import httpx
import pandas as pd
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from highwater.settings import Settings
from highwater.stack import LocalStack, settings_env
from highwater.stack.env import isolated_settings
from highwater.stack.procs import StackPaths, live_pid, wait_gone

DB = "chdb_server_test"
COLUMNS = ["id", "name", "ts", "amount"]
UTC = dt.UTC


def new_client(settings: Settings, **kwargs: object) -> Client:
    return clickhouse_connect.get_client(dsn=settings.effective_clickhouse_dsn, **kwargs)


@pytest.fixture(scope="module")
def client(stack: Settings) -> Iterator[Client]:
    """A client with clickhouse-connect's defaults (lz4-compressed inserts, a session id per client)."""
    client = new_client(stack)
    client.command(f"DROP DATABASE IF EXISTS {DB}")
    client.command(f"CREATE DATABASE {DB}")
    try:
        yield client
    finally:
        client.command(f"DROP DATABASE IF EXISTS {DB}")
        client.close()


@pytest.fixture
def table(client: Client, request: pytest.FixtureRequest) -> str:
    """A fresh MergeTree table named after the test."""
    name = f"{DB}.{request.node.name.replace('[', '_').replace(']', '')}"
    client.command(f"DROP TABLE IF EXISTS {name}")
    client.command(
        f"CREATE TABLE {name} (id UInt32, name String, ts DateTime64(3, 'UTC'), amount Float64) "
        "ENGINE = MergeTree ORDER BY id"
    )
    return name


@pytest.mark.stack
def test_inserts_of_every_kind_read_back_every_way(client: Client, table: str) -> None:
    tricky = "tab\there, back\\slash, 'quote', ünïcode"
    native = client.insert(
        table,
        [[1, tricky, dt.datetime(2024, 1, 1, 12, tzinfo=UTC), 1.5], [2, "b", dt.datetime(2024, 1, 2), 2.5]],
        column_names=COLUMNS,
    )
    arrow = client.insert_arrow(
        table,
        pa.table(
            {
                "id": pa.array([3, 4], pa.uint32()),
                "name": ["c", "d"],
                "ts": pa.array([1_700_000_000_000, 1_700_000_000_001], pa.timestamp("ms", tz="UTC")),
                "amount": [3.0, 4.0],
            }
        ),
    )
    frame = client.insert_df(
        table,
        pd.DataFrame(
            {"id": [5], "name": ["e"], "ts": [pd.Timestamp("2024-01-05", tz="UTC")], "amount": [5.0]}
        ),
    )
    assert (native.written_rows, arrow.written_rows, frame.written_rows) == (2, 2, 1)

    rows = client.query(f"SELECT id, name, ts, amount FROM {table} ORDER BY id").result_rows
    assert rows[0] == (1, tricky, dt.datetime(2024, 1, 1, 12, 0), 1.5)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[3][2] == dt.datetime(2023, 11, 14, 22, 13, 20, 1000)

    arrow_back = client.query_arrow(f"SELECT id, name FROM {table} ORDER BY id")
    assert arrow_back.column("name").to_pylist() == [tricky, "b", "c", "d", "e"]
    frame_back = client.query_df(f"SELECT id, amount FROM {table} ORDER BY id")
    assert frame_back["amount"].tolist() == [1.5, 2.5, 3.0, 4.0, 5.0]
    assert client.command(f"SELECT count() FROM {table}") == 5
    assert client.command(f"SELECT sum(amount), max(id) FROM {table}") == ["16", "5"]
    assert client.query(f"SELECT * FROM {table} LIMIT 0").column_names == tuple(COLUMNS)


@pytest.mark.stack
def test_uncompressed_client_with_a_default_database(stack: Settings, table: str) -> None:
    plain = new_client(stack, compress=False, database=DB, autogenerate_session_id=False)
    try:
        short = table.split(".", 1)[1]
        summary = plain.insert(short, [[7, "x", dt.datetime(2024, 1, 1), 0.25]], column_names=COLUMNS)
        assert summary.written_rows == 1
        assert plain.query(f"SELECT name, amount FROM {short}").result_rows == [("x", 0.25)]
        assert plain.raw_insert(short, COLUMNS, "8,y,2024-01-01 00:00:00,1\n", fmt="CSV").written_rows == 1
        assert plain.command(f"SELECT count() FROM {short}") == 2
    finally:
        plain.close()


@pytest.mark.stack
def test_server_side_parameters(client: Client, table: str) -> None:
    assert client.query("SELECT {x:UInt32}", parameters={"x": 5}).result_rows == [(5,)]
    tricky = "a\tb\\c'd\ne"
    client.insert(table, [[1, tricky, dt.datetime(2024, 1, 1), 1.0]], column_names=COLUMNS)
    found = client.query(f"SELECT id FROM {table} WHERE name = {{n:String}}", parameters={"n": tricky})
    assert found.result_rows == [(1,)]
    # Parameters too long for the URL travel as multipart form fields.
    long = "x" * 10_000
    assert client.query("SELECT length({s:String})", parameters={"s": long}).result_rows == [(10_000,)]
    assert client.command("SELECT {a:Array(UInt8)}", parameters={"a": [1, 2]}) == "[1,2]"


@pytest.mark.stack
def test_errors_carry_the_engine_message(client: Client) -> None:
    with pytest.raises(DatabaseError, match=rf"Code: 60\..*{DB}\.no_such_table") as unknown:
        client.query(f"SELECT * FROM {DB}.no_such_table")
    assert unknown.value.code == 60
    with pytest.raises(DatabaseError, match="Code: 62"):
        client.command("SELEC 1")
    with pytest.raises(DatabaseError, match="Unknown setting 'no_such_setting'"):
        client.query("SELECT 1", settings={"no_such_setting": 1})
    # No sessions: SET would not last, so it is refused rather than ignored.
    with pytest.raises(DatabaseError, match="needs an HTTP session"):
        client.command("SET max_threads = 1")
    assert client.query("SELECT 1").result_rows == [(1,)]  # the client still works


@pytest.mark.stack
def test_settings_apply_to_one_request(client: Client) -> None:
    query = "SELECT getSetting('max_threads'), getSetting('date_time_input_format')"
    default = client.query(query).result_rows[0]
    assert default[1] == "best_effort"  # clickhouse-connect's client setting, sent with every request
    assert client.query(query, settings={"max_threads": 7}).result_rows[0][0] == 7
    # The server keeps a few engine connections: every one must be back to the defaults.
    assert [client.query(query).result_rows[0] for _ in range(8)] == [default] * 8


@pytest.mark.stack
def test_large_results_stream_and_fail_mid_stream_with_the_message(client: Client) -> None:
    with client.query_row_block_stream("SELECT number FROM numbers(2000000)") as stream:
        assert sum(len(block) for block in stream) == 2_000_000
    assert len(client.raw_stream("SELECT number FROM numbers(100000) FORMAT CSV").read()) == 588_890
    failing = "SELECT throwIf(number = 3000000), number FROM numbers(4000000)"
    with (
        pytest.raises(DatabaseError, match="FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"),
        client.query_row_block_stream(failing, settings={"max_block_size": 10_000}) as stream,
    ):
        for _ in stream:
            pass
    assert client.query("SELECT 2").result_rows == [(2,)]


@pytest.mark.stack
def test_a_client_leaving_a_stream_frees_its_connection(stack: Settings, client: Client) -> None:
    """The server runs statements on a few engine connections; a stream holds one until it ends."""
    for _ in range(6):
        with httpx.stream(
            "POST", stack.clickhouse_dsn, content="SELECT number FROM numbers(100000000) FORMAT RowBinary"
        ) as response:
            assert len(next(response.iter_bytes())) > 0
    answer = httpx.post(stack.clickhouse_dsn, content="SELECT 3", timeout=10)
    assert answer.text == "3\n"


@pytest.mark.stack
def test_plain_http(stack: Settings, table: str) -> None:
    url = stack.clickhouse_dsn
    ping = httpx.get(f"{url}/ping")
    assert (ping.status_code, ping.text) == (200, "Ok.\n")
    assert httpx.get(url, params={"query": "SELECT 1"}).text == "1\n"
    json_answer = httpx.get(url, params={"query": "SELECT 1 AS one", "default_format": "JSONEachRow"})
    assert json_answer.json() == {"one": 1}
    assert json_answer.headers["X-ClickHouse-Format"] == "JSONEachRow"

    readonly = httpx.get(url, params={"query": f"DROP TABLE {table}"})
    assert (readonly.status_code, readonly.headers["X-ClickHouse-Exception-Code"]) == (403, "164")

    data = b"1\tgz\t2024-01-01 00:00:00\t1\n2\tgz\t2024-01-01 00:00:00\t2\n"
    insert = httpx.post(
        url,
        params={"query": f"INSERT INTO {table} FORMAT TSV"},
        content=gzip.compress(data),
        headers={"Content-Encoding": "gzip"},
    )
    assert insert.status_code == 200, insert.text
    assert json.loads(insert.headers["X-ClickHouse-Summary"])["written_rows"] == "2"
    inline = httpx.post(url, content=f"INSERT INTO {table} FORMAT CSV\n3,inline,2024-01-01 00:00:00,3\n")
    assert inline.status_code == 200, inline.text
    assert httpx.post(url, content=f"SELECT sum(amount) FROM {table}").text == "6\n"

    unknown = httpx.post(url, content=b"SELECT 1", headers={"Content-Encoding": "br"})
    assert unknown.status_code == 501
    assert "Content-Encoding 'br' is not supported" in unknown.text
    native = httpx.post(url, params={"decompress": "1"}, content=b"SELECT 1")
    assert native.status_code == 501
    assert "decompress=1" in native.text


# Takes a second; answers the time it started on the server (now64() is fixed when a query starts).
SLOW_QUERY = (
    "SELECT toUnixTimestamp64Micro(now64(6)) / 1e6, sum(sleepEachRow(0.1)) FROM numbers(10) "
    "SETTINGS max_block_size = 1"
)
SUBPROCESS_CLIENT = """
import datetime, json, sys, time
import clickhouse_connect
from highwater.settings import get_settings

client = clickhouse_connect.get_client(dsn=get_settings().effective_clickhouse_dsn)
print("ready", flush=True)
sys.stdin.readline()
started = client.query(sys.argv[1]).result_rows[0][0]
ended = time.time()
rows = [[100 + i, "subprocess", datetime.datetime(2024, 1, 1), 1.0] for i in range(50)]
client.insert(sys.argv[2], rows, column_names=sys.argv[3:])
print(json.dumps([started, ended]), flush=True)
"""


@pytest.mark.stack
def test_clients_in_threads_and_another_process_work_at_the_same_time(stack: Settings, table: str) -> None:
    """Two threads and a subprocess each run a one-second query: each must start (on the server)
    before any of them has ended."""
    child = subprocess.Popen(
        [sys.executable, "-c", SUBPROCESS_CLIENT, SLOW_QUERY, table, *COLUMNS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | settings_env(stack),
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        intervals: list[tuple[float, float]] = []
        errors: list[BaseException] = []
        go = threading.Barrier(3)

        def work(offset: int) -> None:
            try:
                own = new_client(stack)
                go.wait()
                started = own.query(SLOW_QUERY).result_rows[0][0]
                intervals.append((started, time.time()))
                rows = [[offset + i, "thread", dt.datetime(2024, 1, 1), 1.0] for i in range(50)]
                own.insert(table, rows, column_names=COLUMNS)
                own.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(offset,)) for offset in (0, 1000)]
        for thread in threads:
            thread.start()
        go.wait()
        child.stdin.write("go\n")
        child.stdin.flush()
        for thread in threads:
            thread.join(timeout=60)
        child_interval = json.loads(child.stdout.readline())
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert errors == []
    intervals.append((child_interval[0], child_interval[1]))
    assert max(start for start, _ in intervals) < min(end for _, end in intervals), intervals
    check = new_client(stack)
    try:
        counts = check.query(f"SELECT name, count() FROM {table} GROUP BY name ORDER BY name").result_rows
    finally:
        check.close()
    assert counts == [("subprocess", 50), ("thread", 100)]


def highwater(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "highwater.cli", *args],
        env=os.environ | settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=settings.state_dir.parent,
    )


@pytest.mark.slow
def test_a_stack_of_its_own_lists_the_part_stops_it_and_keeps_its_data(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path / "state")
    pid_file = StackPaths(settings.state_dir).pid_file("clickhouse")
    try:
        up = highwater(settings, "up")
        assert up.returncode == 0, up.stderr
        assert settings.clickhouse_dsn in up.stdout
        status = highwater(settings, "status")
        assert status.returncode == 0, status.stdout
        assert "clickhouse" in status.stdout
        assert "database(s)" in status.stdout
        first_pid = live_pid(pid_file)
        assert first_pid is not None

        client = new_client(settings)
        client.command("CREATE TABLE default.kept (id UInt32) ENGINE = MergeTree ORDER BY id")
        client.insert("default.kept", [[1], [2], [3]], column_names=["id"])
        client.close()

        down = highwater(settings, "down")
        assert down.returncode == 0, down.stderr
        assert wait_gone([first_pid], timeout=0) == []
        assert live_pid(pid_file) is None

        restarted = LocalStack(settings, outlive_caller=False)
        assert restarted.start()
        assert live_pid(pid_file) not in (None, first_pid)
        client = new_client(settings)
        assert client.query("SELECT id FROM default.kept ORDER BY id").result_rows == [(1,), (2,), (3,)]
        client.close()
    finally:
        LocalStack(settings).stop()
    assert live_pid(pid_file) is None
