"""Shared fixtures: one real local stack (broker, schema registry, Redis) for the test session.

The stack runs on free ports with a temporary state directory, started through
:class:`highwater.stack.LocalStack` exactly as ``highwater up`` starts it, with the log bootstrapped
(topics created, schemas registered). It is stopped at the end of the session, also when tests fail;
it is bound to the pytest process, so even a killed test run leaves no parts behind.

Tests that need it take the ``stack`` fixture (the Settings pointing at it) and carry the ``stack``
marker. Subprocesses get the same settings through ``settings_env(stack)``.

Example:
    @pytest.mark.stack
    def test_something(stack: Settings, redis_client: redis.Redis) -> None:
        subprocess.run([...], env=os.environ | settings_env(stack), check=True)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from highwater.bootstrap import bootstrapped_stack
from highwater.settings import Settings, get_settings
from highwater.stack.env import isolated_settings, settings_env
from sinks.clickhouse_offline import ClickHouseOfflineStore


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of the session's running, bootstrapped local stack."""
    with bootstrapped_stack(isolated_settings(tmp_path_factory.mktemp("stack"))) as settings:
        yield settings


@pytest.fixture
def redis_client(stack: Settings) -> Iterator[redis.Redis]:
    """A client of the stack's Redis, with its database flushed before the test."""
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def offline_settings(stack: Settings) -> Settings:
    """The stack's settings, with the offline store of ``HIGHWATER_TEST_CLICKHOUSE_DSN`` when it is set.

    Unset, the offline store is the stack's own ClickHouse part (chDB behind the HTTP interface). Set it to
    a ClickHouse server's URL to run the offline tests against a real server.
    """
    dsn = os.environ.get("HIGHWATER_TEST_CLICKHOUSE_DSN")
    return stack.model_copy(update={"clickhouse_dsn": dsn}) if dsn else stack


@pytest.fixture(scope="session")
def offline_store(offline_settings: Settings) -> Iterator[ClickHouseOfflineStore]:
    """A client of the session's offline store (generations are the tests' to create and drop)."""
    store = ClickHouseOfflineStore.from_settings(offline_settings)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def cli_env(offline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In-process CLI runs (typer's CliRunner) see the session stack: its HIGHWATER_* variables are set."""
    for name, value in settings_env(offline_settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()
