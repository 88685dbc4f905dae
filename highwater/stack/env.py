"""The environment that makes a child process build the same :class:`Settings` as this one.

Every Highwater process reads its settings from ``HIGHWATER_*`` variables, so handing a settings
object to a subprocess means writing it out as variables: top-level fields as
``HIGHWATER_<FIELD>``, nested ones as ``HIGHWATER_<GROUP>__<FIELD>``. All fields are written, so the
child's ``.env`` file or inherited variables cannot change what it sees.

Example:
    >>> from highwater.settings import Settings
    >>> env = settings_env(Settings(broker_bootstrap="127.0.0.1:29092"))
    >>> env["HIGHWATER_BROKER_BOOTSTRAP"], env["HIGHWATER_STREAM__PARTITIONS"]
    ('127.0.0.1:29092', '4')
    >>> subprocess.run(["highwater", "status"], env=os.environ | env)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from highwater.settings import Settings
from highwater.stack.ports import free_ports


def settings_env(settings: Settings) -> dict[str, str]:
    """``HIGHWATER_*`` variables reproducing ``settings`` in a child process (merge into its env)."""
    prefix = str(settings.model_config.get("env_prefix") or "")
    delimiter = str(settings.model_config.get("env_nested_delimiter") or "__")
    env: dict[str, str] = {}

    def put(name: str, value: object) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            for key, inner in value.items():
                put(f"{name}{delimiter}{key}", inner)
        elif isinstance(value, bool):
            env[name.upper()] = "true" if value else "false"
        elif isinstance(value, list):
            env[name.upper()] = json.dumps(value)
        else:
            env[name.upper()] = str(value)

    for field, value in settings.model_dump(mode="json").items():
        put(f"{prefix}{field}", value)
    return env


def isolated_settings(state_dir: Path, **overrides: object) -> Settings:
    """Settings for a local stack of its own: ``state_dir`` and free ports for every server.

    For tests and experiments that must not meet the default stack (or each other).

    Example:
        >>> s = isolated_settings(Path("/tmp/hw-iso"))
        >>> s.broker_port != 19092 and s.redis_url.startswith("redis://127.0.0.1:")
        True
    """
    broker, registry, redis_port, clickhouse, grpc = free_ports(5)
    fields: dict[str, object] = {
        "state_dir": state_dir,
        "broker_bootstrap": f"127.0.0.1:{broker}",
        "schema_registry_url": f"http://127.0.0.1:{registry}",
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",
        "clickhouse_dsn": f"http://127.0.0.1:{clickhouse}",
        "grpc_port": grpc,
    }
    fields.update(overrides)
    return Settings(**fields)  # type: ignore[arg-type]
