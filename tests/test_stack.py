"""``highwater up | status | down`` and the process guarantees of the local stack.

Each test runs its own stack (own ports, own state directory), not the session's, mostly through the
real CLI in a subprocess so messages and exit codes are checked as a user sees them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from highwater.settings import Settings
from highwater.stack import LocalStack, settings_env
from highwater.stack.env import isolated_settings
from highwater.stack.ports import port_in_use
from highwater.stack.procs import SUPERVISOR, StackPaths, live_pid, wait_gone

PARTS = ("broker", "schema-registry", "redis", "clickhouse")


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings of a stack private to the test; whatever it started is stopped afterwards."""
    own = isolated_settings(tmp_path / "state")
    yield own
    LocalStack(own).stop()


def highwater(settings: Settings, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``highwater`` CLI with ``settings`` (and optionally another PATH)."""
    env = os.environ | settings_env(settings)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "highwater.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=settings.state_dir.parent,
    )


def stack_pids(settings: Settings) -> dict[str, int]:
    """Live pids of the supervisor and parts, from their pid files."""
    paths = StackPaths(settings.state_dir)
    pids = {name: live_pid(paths.pid_file(name)) for name in (SUPERVISOR, *PARTS)}
    return {name: pid for name, pid in pids.items() if pid is not None}


def test_up_status_down_leaves_no_process(settings: Settings) -> None:
    up = highwater(settings, "up")
    assert up.returncode == 0, up.stderr
    assert "local stack is up" in up.stdout
    pids = stack_pids(settings)
    assert set(pids) == {SUPERVISOR, *PARTS}
    assert LocalStack(settings).start() is False  # already running: nothing new is started
    assert stack_pids(settings) == pids

    status = highwater(settings, "status")
    assert status.returncode == 0, status.stdout
    for part in PARTS:
        assert part in status.stdout

    down = highwater(settings, "down")
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    assert wait_gone(list(pids.values()), timeout=0) == []
    assert stack_pids(settings) == {}
    assert not any(part.healthy for part in LocalStack(settings).status())
    assert LocalStack(settings).stop() is False  # down is idempotent


def test_killing_the_supervisor_takes_every_part_with_it(settings: Settings) -> None:
    stack = LocalStack(settings)
    assert stack.start()
    pids = stack_pids(settings)
    assert set(pids) == {SUPERVISOR, *PARTS}

    os.kill(pids[SUPERVISOR], signal.SIGKILL)

    assert wait_gone([pids[part] for part in PARTS], timeout=30) == []
    assert not stack.running()
    assert not any(s.healthy for s in stack.status())


def test_a_taken_port_is_reported_and_nothing_starts(settings: Settings) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.broker_port))
        holder.listen()

        up = highwater(settings, "up")

    assert up.returncode == 1
    assert f"port {settings.broker_port} for broker is in use" in up.stderr
    assert "HIGHWATER_BROKER_BOOTSTRAP" in up.stderr
    assert "Traceback" not in up.stderr
    assert stack_pids(settings) == {}
    assert not port_in_use(settings.schema_registry_port)
    assert not port_in_use(settings.redis_port)


def test_a_missing_binary_is_reported_and_nothing_starts(settings: Settings, tmp_path: Path) -> None:
    empty_path = tmp_path / "empty-bin"
    empty_path.mkdir()

    up = highwater(settings, "up", path=str(empty_path))

    assert up.returncode == 1
    assert "redis-server not found on PATH" in up.stderr
    assert "apt-get install redis-server" in up.stderr
    assert "Traceback" not in up.stderr
    assert stack_pids(settings) == {}
