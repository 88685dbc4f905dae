"""The model store contract, run against both stores (Redis on the session stack, a directory), and the
``highwater models`` command line.

Each Redis test gets a prefix of its own, so tests never see each other's versions; each file test a
directory of its own. Concurrency is checked with real threads and real processes.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from highwater.cli import app
from highwater.settings import Settings, get_settings
from sinks.file_model_store import FileModelStore
from sinks.model_store import ModelStore, ModelStoreError, ModelVersion
from sinks.redis_model_store import RedisModelStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Spec:
    """Where one store lives; :meth:`open` gives a new instance on it (as another process would)."""

    kind: str
    url: str = ""
    prefix: str = ""
    directory: str = ""

    def open(self) -> ModelStore:
        if self.kind == "redis":
            return RedisModelStore.from_url(self.url, prefix=self.prefix)
        return FileModelStore(self.directory)


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.stack), "file"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Spec]:
    if request.param == "file":
        yield Spec("file", directory=str(tmp_path / "models"))
        return
    stack: Settings = request.getfixturevalue("stack")
    prefix = f"test:models:{uuid.uuid4().hex[:12]}"
    yield Spec("redis", url=stack.redis_url, prefix=prefix)
    client = redis.Redis.from_url(stack.redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def store(spec: Spec) -> Iterator[ModelStore]:
    opened = spec.open()
    try:
        yield opened
    finally:
        opened.close()


def _save(store: ModelStore, tag: str, lineage: str = "main") -> ModelVersion:
    """A version whose bytes, offsets and metrics are derived from ``tag`` (so each is recognisable)."""
    return store.save(
        f"model-{tag}".encode(),
        f"state-{tag}".encode(),
        {"transactions": {0: len(tag)}},
        {"auc": 0.5},
        lineage=lineage,
    )


# --- round trip -----------------------------------------------------------------------------------------
def test_save_then_load_get_and_load_state_give_back_exactly_what_was_saved(store: ModelStore) -> None:
    model = random.Random(1).randbytes(200_000) + b"\x00\xff"
    state = random.Random(2).randbytes(50_000)
    offsets = {"transactions": {0: 120, 3: 7}, "fraud-labels": {1: 5}}
    metrics = {"auc": 0.9712, "ap": 0.8125, "labels_learned": 4000}
    before = time.time_ns() // 1_000_000
    saved = store.save(model, state, offsets, metrics, lineage="main")
    after = time.time_ns() // 1_000_000

    assert saved.version == "1"
    assert saved.lineage == "main"
    assert before <= saved.created_at_ms <= after
    assert saved.size_bytes == len(model)
    assert saved.offsets == offsets
    assert saved.metrics == {"auc": 0.9712, "ap": 0.8125, "labels_learned": 4000.0}
    got = store.get("1")
    assert got == saved
    assert all(isinstance(p, int) for parts in got.offsets.values() for p in parts)
    assert store.load("1") == model
    assert store.load_state("1") == state


def test_state_none_and_empty_state_are_kept_apart(store: ModelStore) -> None:
    without = store.save(b"m", None, {}, {})
    empty = store.save(b"", b"", {}, {})
    assert store.load_state(without.version) is None
    assert store.load_state(empty.version) == b""
    assert store.load(empty.version) == b""
    assert store.get(empty.version).size_bytes == 0


def test_invalid_lineage_is_refused_before_anything_is_written(store: ModelStore) -> None:
    with pytest.raises(ModelStoreError, match="invalid lineage name 'Main/x'"):
        store.save(b"m", None, {}, {}, lineage="Main/x")
    assert store.versions() == []


# --- listing --------------------------------------------------------------------------------------------
def test_versions_are_numbered_in_save_order_and_filter_by_lineage(store: ModelStore) -> None:
    lineages = ["main", "r1", "main", "r1", "main", "main", "main", "main", "main", "main", "r1", "main"]
    saved = [_save(store, f"{i}", lineage) for i, lineage in enumerate(lineages)]

    expected = [str(n) for n in range(1, len(lineages) + 1)]
    assert [v.version for v in saved] == expected
    # Numeric order: "10" after "9", not after "1".
    assert [v.version for v in store.versions()] == expected
    assert store.versions() == saved
    assert [v.version for v in store.versions("main")] == [
        str(n + 1) for n, lineage in enumerate(lineages) if lineage == "main"
    ]
    assert [v.version for v in store.versions("r1")] == ["2", "4", "11"]
    assert store.versions("nothing") == []
    assert store.latest("main") == saved[-1]
    latest_r1 = store.latest("r1")
    assert latest_r1 is not None and latest_r1.version == "11"
    assert store.latest("nothing") is None


# --- live, promote, rollback ----------------------------------------------------------------------------
def test_promote_and_rollback_walk_the_promotion_history(store: ModelStore) -> None:
    for i in range(3):
        _save(store, str(i))
    assert store.live() is None
    with pytest.raises(ModelStoreError, match="nothing to roll back: no model version was ever promoted"):
        store.rollback()

    assert store.promote("1").version == "1"
    assert store.live() == store.get("1")
    assert store.promote("2").version == "2"
    assert store.live() == store.get("2")
    assert store.rollback() == store.get("1")
    assert store.live() == store.get("1")
    with pytest.raises(
        ModelStoreError, match="nothing to roll back to: version 1 is the first version promoted"
    ):
        store.rollback()
    assert store.live() == store.get("1")

    # Along a longer history, repeatedly; promoting the live version again is not a new step.
    store.promote("2")
    store.promote("3")
    store.promote("3")
    assert [store.rollback().version for _ in range(2)] == ["2", "1"]
    with pytest.raises(ModelStoreError, match="nothing to roll back to"):
        store.rollback()


@pytest.mark.parametrize("version", ["99", "0", "01", "abc", "../1", ""])
def test_unknown_versions_are_errors_naming_the_version(store: ModelStore, version: str) -> None:
    _save(store, "a")
    store.promote("1")
    for call in (store.load, store.load_state, store.get, store.promote):
        with pytest.raises(ModelStoreError, match=f"unknown model version {version!r}"):
            call(version)
    live = store.live()
    assert live is not None and live.version == "1"


def test_drop_lineage_deletes_only_versions_never_live(store: ModelStore) -> None:
    for tag, lineage in [("m1", "main"), ("r2", "r1"), ("r3", "r1"), ("r4", "r1"), ("m5", "main")]:
        _save(store, tag, lineage)
    store.promote("3")
    store.promote("1")  # 3 was live once: kept

    assert store.drop_lineage("r1") == 2
    assert [v.version for v in store.versions("r1")] == ["3"]
    assert [v.version for v in store.versions()] == ["1", "3", "5"]
    for dropped in ("2", "4"):
        with pytest.raises(ModelStoreError, match=f"unknown model version '{dropped}'"):
            store.load(dropped)
        with pytest.raises(ModelStoreError, match=f"unknown model version '{dropped}'"):
            store.get(dropped)
    assert store.drop_lineage("r1") == 0
    assert store.drop_lineage("main") == 1  # 5; 1 is live
    assert [v.version for v in store.versions()] == ["1", "3"]
    assert store.rollback().version == "3"
    assert store.load("3") == b"model-r3"
    assert store.load_state("1") == b"state-m1"
    # Numbers are never reused.
    assert _save(store, "again", "r1").version == "6"


# --- concurrency ----------------------------------------------------------------------------------------
def test_concurrent_saves_from_threads_get_distinct_versions_and_lose_nothing(spec: Spec) -> None:
    threads, per_thread = 8, 10
    stores = [spec.open() for _ in range(threads)]
    start = threading.Barrier(threads)

    def work(index: int) -> list[tuple[str, str]]:
        start.wait()
        return [(_save(stores[index], f"t{index}-{i}").version, f"t{index}-{i}") for i in range(per_thread)]

    with ThreadPoolExecutor(threads) as pool:
        results = [pair for done in pool.map(work, range(threads)) for pair in done]
    saved = dict(results)
    assert len(saved) == len(results), "a version number was handed out twice"
    _check_all_saved(spec, saved, threads * per_thread)
    for opened in stores:
        opened.close()


_CHILD = r"""
import json, os, sys
spec = json.loads(sys.argv[1])
tag, count, crash = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "crash"
if spec["kind"] == "redis":
    from sinks.redis_model_store import RedisModelStore
    store = RedisModelStore.from_url(spec["url"], prefix=spec["prefix"])
else:
    from sinks.file_model_store import FileModelStore
    store = FileModelStore(spec["directory"])
if crash:
    # Die at the step that would make the version visible: bytes written, nothing committed.
    def die(*args, **kwargs):
        os._exit(3)
    if spec["kind"] == "redis":
        import redis.client
        redis.client.Pipeline.execute = die
    else:
        os.rename = die
print("ready", flush=True)
sys.stdin.readline()
versions = []
for i in range(count):
    v = store.save(f"model-{tag}-{i}".encode(), f"state-{tag}-{i}".encode(), {"transactions": {0: i}}, {})
    versions.append(v.version)
print(json.dumps(versions), flush=True)
"""


def _child(spec: Spec, tag: str, count: int, crash: bool = False) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(asdict(spec)), tag, str(count), "crash" if crash else "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def test_concurrent_saves_from_two_processes_get_distinct_versions_and_lose_nothing(spec: Spec) -> None:
    per_process = 30
    children = {tag: _child(spec, tag, per_process) for tag in ("p0", "p1")}
    for child in children.values():  # both are ready: let them go together
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    saved: dict[str, str] = {}
    for tag, child in children.items():
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        for i, version in enumerate(json.loads(out)):
            assert version not in saved
            saved[version] = f"{tag}-{i}"
    _check_all_saved(spec, saved, 2 * per_process)


def _check_all_saved(spec: Spec, saved: dict[str, str], count: int) -> None:
    """Through a fresh instance: exactly the ``saved`` versions exist, each with its own bytes."""
    assert len(saved) == count
    reopened = spec.open()
    try:
        listed = [v.version for v in reopened.versions()]
        assert listed == sorted(saved, key=int)
        for version, tag in saved.items():
            assert reopened.load(version) == f"model-{tag}".encode()
            assert reopened.load_state(version) == f"state-{tag}".encode()
    finally:
        reopened.close()


def test_concurrent_promotions_keep_every_replaced_version_in_the_history(spec: Spec) -> None:
    """Four threads promote 24 versions at once: a lost update would drop a history entry."""
    setup = spec.open()
    for i in range(24):
        _save(setup, str(i))
    setup.close()
    threads = 4
    start = threading.Barrier(threads)

    def work(index: int) -> None:
        mine = spec.open()
        start.wait()
        for n in range(index + 1, 25, threads):
            mine.promote(str(n))
        mine.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    check = spec.open()
    live = check.live()
    assert live is not None
    seen = [live.version]
    for _ in range(23):
        seen.append(check.rollback().version)
    with pytest.raises(ModelStoreError, match="nothing to roll back to"):
        check.rollback()
    assert sorted(seen, key=int) == [str(n) for n in range(1, 25)]
    check.close()


def test_a_save_that_crashes_before_committing_is_never_listed_or_loaded(
    spec: Spec, store: ModelStore
) -> None:
    child = _child(spec, "crashed", 1, crash=True)
    child.communicate("go\n", timeout=60)
    assert child.returncode == 3
    assert store.versions() == []
    assert store.latest("main") is None
    with pytest.raises(ModelStoreError, match="unknown model version '1'"):
        store.load("1")
    with pytest.raises(ModelStoreError, match="unknown model version '1'"):
        store.promote("1")
    after = _save(store, "next")
    assert after.version == "2"
    assert [v.version for v in store.versions()] == ["2"]


def test_a_reopened_store_sees_versions_bytes_and_the_promotion_history(spec: Spec) -> None:
    first = spec.open()
    saved = [_save(first, "a"), _save(first, "b", "r1"), _save(first, "c")]
    first.promote("1")
    first.promote("3")
    first.close()

    second = spec.open()
    assert second.versions() == saved
    assert second.versions("r1") == [saved[1]]
    assert second.latest("main") == saved[2]
    assert second.load("2") == b"model-b"
    assert second.load_state("3") == b"state-c"
    assert second.live() == saved[2]
    assert second.rollback() == saved[0]
    second.close()
    third = spec.open()
    assert third.live() == saved[0]
    assert _save(third, "d").version == "4"
    third.close()


# --- command line ---------------------------------------------------------------------------------------
def _rows(output: str) -> dict[str, list[str]]:
    """The rows of the ``models list`` table by version: its cells, stripped."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0].isdigit():
            rows[cells[0]] = cells
    return rows


@pytest.fixture
def cli_store(
    stack: Settings, redis_client: redis.Redis, cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModelStore]:
    """The store the CLI opens (the settings': Redis, default prefix), emptied, with a wide terminal."""
    monkeypatch.setenv("COLUMNS", "250")
    assert get_settings().model.store == "redis"
    opened = RedisModelStore.from_url(stack.redis_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.mark.stack
def test_models_cli_lists_promotes_and_rolls_back(cli_store: ModelStore) -> None:
    runner = CliRunner()
    empty = runner.invoke(app, ["models", "list"])
    assert empty.exit_code == 0 and "no model versions" in empty.output

    offsets = {"transactions": {0: 1_000, 1: 234, 2: 0}, "fraud-labels": {0: 17}}
    cli_store.save(b"x" * 3_000, b"s", offsets, {"auc": 0.97123, "ap": 0.8, "labels_learned": 4_000})
    cli_store.save(b"y" * 10, None, {"transactions": {0: 5}}, {}, lineage="r1")
    cli_store.save(b"z" * 2_500_000, b"s", {"transactions": {0: 2_000, 1: 500}}, {"auc": 0.98})

    promoted = runner.invoke(app, ["models", "promote", "1"])
    assert promoted.exit_code == 0, promoted.output
    assert "model version 1 (lineage main) is live (was none)" in promoted.output
    assert runner.invoke(app, ["models", "promote", "3"]).exit_code == 0
    live = cli_store.live()
    assert live is not None and live.version == "3"

    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    rows = _rows(listed.output)
    assert sorted(rows) == ["1", "2", "3"]
    assert rows["1"][:3] == ["1", "", "main"]
    # Consumed = next offsets summed per topic (1000 + 234 + 0), metrics by name, sizes in KiB/MiB.
    assert rows["1"][4] == "fraud-labels 17, transactions 1,234"
    assert rows["1"][5] == "ap 0.8000, auc 0.9712, labels_learned 4,000"
    assert rows["1"][6] == f"{3_000 / 1024:.1f} KiB"
    assert rows["2"][1:3] == ["", "r1"] and rows["2"][5] == "-" and rows["2"][6] == "10 B"
    assert rows["3"][1] == "yes" and rows["3"][4] == "transactions 2,500"
    assert rows["3"][6] == f"{2_500_000 / 1024**2:.1f} MiB"
    created = time.strftime("%Y-%m-%d", time.gmtime(cli_store.get("1").created_at_ms / 1000))
    assert rows["1"][3].startswith(created)

    only_r1 = _rows(runner.invoke(app, ["models", "list", "--lineage", "r1"]).output)
    assert sorted(only_r1) == ["2"]

    back = runner.invoke(app, ["models", "rollback"])
    assert back.exit_code == 0, back.output
    assert "rolled back: model version 1 (lineage main) is live (was 3)" in back.output
    live = cli_store.live()
    assert live is not None and live.version == "1"


@pytest.mark.stack
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "promote", "42"], "error: unknown model version '42'"),
        (["models", "rollback"], "error: nothing to roll back to: version 1 is the first version promoted"),
    ],
)
def test_models_cli_errors_are_one_line_and_exit_2(
    cli_store: ModelStore, args: list[str], message: str
) -> None:
    cli_store.save(b"m", None, {}, {})
    cli_store.promote("1")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    live = cli_store.live()
    assert live is not None and live.version == "1"


def test_models_cli_uses_the_file_store_when_the_settings_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIGHWATER_MODEL__STORE", "file")
    monkeypatch.setenv("HIGHWATER_MODEL__DIRECTORY", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")
    get_settings.cache_clear()
    try:
        FileModelStore(tmp_path).save(b"m", None, {"transactions": {0: 3}}, {"auc": 0.5})
        runner = CliRunner()
        assert sorted(_rows(runner.invoke(app, ["models", "list"]).output)) == ["1"]
        assert runner.invoke(app, ["models", "promote", "1"]).exit_code == 0
        live = FileModelStore(tmp_path).live()
        assert live is not None and live.version == "1"
        result = runner.invoke(app, ["models", "rollback"])
        assert result.exit_code == 2 and "nothing to roll back to" in result.output
    finally:
        get_settings.cache_clear()
