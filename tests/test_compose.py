"""Static checks of docker-compose.yml and the Dockerfile, which no Docker engine here can run.

The compose file must be right by construction, so every rule it has to keep is a checker below: a
function from the parsed file to a list of problems. The real files must give no problems, and each
checker is also run on a deliberately broken copy of the compose file (written to a temporary
directory) to prove it can fail. Nothing is hard-coded that the project already states elsewhere:
setting names come from ``Settings``, CLI commands from the typer app named in ``[project.scripts]``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import typer
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ValidationError

from highwater.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"

Compose = dict[str, Any]
Checker = Callable[[Compose], list[str]]

# The conditions the Compose specification allows under a long-form depends_on entry.
VALID_CONDITIONS = frozenset({"service_started", "service_healthy", "service_completed_successfully"})
# Which compose service each Highwater setting must dial.
EXPECTED_TARGETS = {
    "broker_bootstrap": "redpanda",
    "schema_registry_url": "redpanda",
    "redis_url": "redis",
    "clickhouse_dsn": "clickhouse",
    "vector_store_url": "weaviate",
}
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")
_VERSION_TAG = re.compile(r"^v?\d+\.\d+")
_UV_PIN = re.compile(r"\buv==(\d+)\.(\d+)\.(\d+)\b")


# --------------------------------------------------------------------------------------------------
# Reading the files
# --------------------------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> Compose:
    """Parse a compose file (YAML anchors and ``<<`` merge keys resolved by PyYAML)."""
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path} is not a YAML mapping"
    return document


def interpolate(value: str, missing: list[str] | None = None) -> str:
    """Resolve compose variables the way ``docker compose`` does with an empty shell environment.

    ``${NAME:-default}`` and ``${NAME-default}`` give their default, ``$$`` gives ``$``, and a bare
    ``${NAME}`` gives "" and is recorded in ``missing`` (compose would only warn about it).
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("op") is not None:
            return match.group("default")
        if missing is not None:
            missing.append(match.group("name"))
        return ""

    return _VARIABLE.sub(replace, value)


def services(compose: Compose) -> dict[str, dict[str, Any]]:
    """The ``services`` mapping of a parsed compose file."""
    found = compose.get("services")
    assert isinstance(found, dict) and found, "docker-compose.yml defines no services"
    return found


def highwater_services(compose: Compose) -> dict[str, dict[str, Any]]:
    """Services built from this repository (they run the Highwater image)."""
    return {name: svc for name, svc in services(compose).items() if "build" in svc}


def environment(service: Mapping[str, Any], missing: list[str] | None = None) -> dict[str, str | None]:
    """A service's environment as a mapping, interpolated; ``None`` means "passed through from the host"."""
    raw = service.get("environment") or {}
    pairs: dict[str, Any]
    if isinstance(raw, list):
        pairs = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    else:
        pairs = dict(raw)
    return {key: None if value is None else interpolate(str(value), missing) for key, value in pairs.items()}


def command_args(service: Mapping[str, Any]) -> list[str]:
    """A service's ``command`` as an argument list (compose splits a string form like a shell)."""
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def published_ports(service: Mapping[str, Any]) -> list[tuple[int, int, str]]:
    """``(host port, container port, protocol)`` for every port a service publishes on the host."""
    found: list[tuple[int, int, str]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                found.append((int(entry["published"]), int(entry["target"]), entry.get("protocol", "tcp")))
            continue
        spec, _, protocol = str(entry).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:  # container port only: the host port is ephemeral
            continue
        host, container = parts[-2], parts[-1]
        host_range, container_range = _port_range(host), _port_range(container)
        if len(host_range) != len(container_range):
            raise ValueError(f"port ranges of different lengths in {entry!r}")
        found.extend(zip(host_range, container_range, [protocol or "tcp"] * len(host_range), strict=True))
    return found


def _port_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def listening_ports(service: Mapping[str, Any]) -> set[int]:
    """Container ports a service is known to listen on: its ports, expose, and ``0.0.0.0:N`` flags."""
    ports = {container for _, container, _ in published_ports(service)}
    ports.update(int(str(port).partition("/")[0]) for port in service.get("expose") or [])
    for arg in command_args(service):
        ports.update(int(port) for port in re.findall(r"0\.0\.0\.0:(\d+)", arg))
    return ports


def pyproject() -> dict[str, Any]:
    """The parsed pyproject.toml."""
    return tomllib.loads(PYPROJECT.read_text())


def cli_root() -> Any:
    """The click command behind the ``highwater`` console script named in ``[project.scripts]``."""
    module_name, _, attribute = pyproject()["project"]["scripts"]["highwater"].partition(":")
    app = getattr(importlib.import_module(module_name), attribute)
    assert isinstance(app, typer.Typer), f"{module_name}:{attribute} is not a typer app"
    return typer.main.get_command(app)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of a Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_env(text: str) -> dict[str, str]:
    """Variables set by ``ENV key=value ...`` instructions (later ones win)."""
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions(text):
        if keyword == "ENV":
            for token in shlex.split(arguments):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def installed_uv_version() -> str:
    """``major.minor.patch`` of the uv running this project (``uv run`` exports its path as ``UV``)."""
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is neither in $UV nor on PATH"
    output = subprocess.run([uv, "--version"], check=True, capture_output=True, text=True).stdout
    match = re.search(r"(\d+\.\d+\.\d+)", output)
    assert match, f"cannot read a version from {output!r}"
    return match.group(1)


# --------------------------------------------------------------------------------------------------
# Checkers: parsed compose file in, problems out
# --------------------------------------------------------------------------------------------------


def image_problems(compose: Compose) -> list[str]:
    """Every service is built here or runs an image pinned to a concrete version tag (never latest)."""
    problems = []
    for name, service in services(compose).items():
        if "build" in service:
            continue
        image = service.get("image")
        if not image:
            problems.append(f"{name}: neither image nor build")
            continue
        reference = str(image).partition("@")[0]
        repository, _, tag = reference.rpartition(":")
        if not repository or "/" in tag:  # no tag at all (the colon belonged to a registry port)
            problems.append(f"{name}: image {image!r} has no tag")
        elif tag == "latest" or not _VERSION_TAG.match(tag):
            problems.append(f"{name}: image {image!r} is not pinned to a version tag")
    return problems


def depends_on_problems(compose: Compose) -> list[str]:
    """depends_on names existing services, with valid conditions; service_healthy needs a healthcheck."""
    problems = []
    all_services = services(compose)
    for name, service in all_services.items():
        depends_on = service.get("depends_on") or {}
        entries = {dep: {} for dep in depends_on} if isinstance(depends_on, list) else depends_on
        for dependency, options in entries.items():
            target = all_services.get(dependency)
            if target is None:
                problems.append(f"{name}: depends on unknown service {dependency!r}")
                continue
            condition = (options or {}).get("condition", "service_started")
            if condition not in VALID_CONDITIONS:
                problems.append(f"{name}: invalid condition {condition!r} on {dependency!r}")
            elif condition == "service_healthy" and not target.get("healthcheck"):
                problems.append(f"{name}: waits for {dependency!r} to be healthy, but it has no healthcheck")
    return problems


def settings_env_names() -> set[str]:
    """Every environment variable name ``Settings`` reads, derived from its fields and nested models."""
    config = Settings.model_config
    prefix = config.get("env_prefix") or ""
    delimiter = config.get("env_nested_delimiter")
    names: set[str] = set()

    def walk(model: type[BaseModel], path: str) -> None:
        for field_name, field in model.model_fields.items():
            name = f"{path}{delimiter}{field_name}" if path else f"{prefix}{field_name}"
            names.add(name.upper())
            annotation = field.annotation
            if delimiter and isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, name)

    walk(Settings, "")
    return names


def env_name_problems(compose: Compose) -> list[str]:
    """Every HIGHWATER_* variable of any service names a real field of ``Settings``."""
    prefix = (Settings.model_config.get("env_prefix") or "").upper()
    known = settings_env_names()
    problems = []
    for name, service in services(compose).items():
        for key in environment(service):
            if key.upper().startswith(prefix) and key.upper() not in known:
                problems.append(f"{name}: {key} is not a Settings field")
    return problems


def interpolation_problems(compose: Compose) -> list[str]:
    """No ``${VAR}`` without a default: the file must work with an empty shell environment."""
    problems: list[str] = []
    for name, service in services(compose).items():
        missing: list[str] = []
        environment(service, missing)
        problems.extend(f"{name}: ${{{variable}}} has no default" for variable in missing)
    return problems


def settings_for(service: Mapping[str, Any]) -> Settings:
    """``Settings`` as the service's container sees it: only its HIGHWATER_* variables, no .env file."""
    prefix = (Settings.model_config.get("env_prefix") or "").upper()
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.upper().startswith(prefix):
                patch.delenv(key)
        for key, value in environment(service).items():
            if key.upper().startswith(prefix) and value is not None:
                patch.setenv(key, value)
        return Settings(_env_file=None)  # type: ignore[call-arg]  # pydantic-settings init arg


def _host_and_port(settings: Settings, field: str) -> tuple[str | None, int | None]:
    value = getattr(settings, field)
    if field == "broker_bootstrap":
        host, _, port = value.split(",")[0].rpartition(":")
        return host, int(port)
    parts = urlsplit(value)
    return parts.hostname, parts.port


def settings_problems(compose: Compose) -> list[str]:
    """Each Highwater service's settings validate and dial the right service on a port it listens on."""
    problems = []
    all_services = services(compose)
    for name, service in highwater_services(compose).items():
        try:
            settings = settings_for(service)
        except ValidationError as error:
            problems.append(f"{name}: settings do not validate: {error}")
            continue
        for field, expected in EXPECTED_TARGETS.items():
            host, port = _host_and_port(settings, field)
            if host != expected:
                problems.append(f"{name}: {field} dials host {host!r}, expected service {expected!r}")
            elif port not in listening_ports(all_services[expected]):
                problems.append(
                    f"{name}: {field} dials {expected}:{port}, which {expected} does not listen on"
                )
        if settings.grpc_host != "0.0.0.0":
            problems.append(f"{name}: grpc_host {settings.grpc_host!r} is unreachable from other containers")
        if settings.state_dir != Path("/var/lib/highwater"):
            problems.append(f"{name}: state_dir is {settings.state_dir}, not the image's /var/lib/highwater")
    return problems


def cli_args_problem(root: Any, args: list[str]) -> str | None:
    """Why ``highwater <args>`` would not parse, or None; parses options without running anything.

    Sub-commands are looked up by name in each group's ``commands``; the leaf command then parses its
    options and arguments with ``make_context``, which validates them but calls nothing.
    """
    command, path, rest = root, ["highwater"], list(args)
    while isinstance(getattr(command, "commands", None), Mapping):
        if not rest or rest[0].startswith("-"):
            return f"{args}: no sub-command of {' '.join(path)!r}"
        if rest[0] not in command.commands:
            return f"{args}: {rest[0]!r} is not a command of {' '.join(path)!r}"
        command, path, rest = command.commands[rest[0]], [*path, rest[0]], rest[1:]
    try:
        command.make_context(" ".join(path), rest)
    except Exception as error:  # typer's vendored click raises UsageError (or Exit for --help)
        return f"{args}: {type(error).__name__}: {error}"
    return None


def command_problems(compose: Compose) -> list[str]:
    """Highwater services keep the image's entry point and run real CLI commands with valid options."""
    root = cli_root()
    problems = []
    for name, service in highwater_services(compose).items():
        if "entrypoint" in service:
            problems.append(f"{name}: overrides the image's highwater entry point")
        problem = cli_args_problem(root, command_args(service))
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def port_problems(compose: Compose) -> list[str]:
    """No two services publish the same host port and protocol."""
    owners: dict[tuple[int, str], str] = {}
    problems = []
    for name, service in services(compose).items():
        for host_port, _, protocol in published_ports(service):
            owner = owners.setdefault((host_port, protocol), name)
            if owner != name:
                problems.append(f"{name}: host port {host_port}/{protocol} is already published by {owner}")
    return problems


def volume_problems(compose: Compose) -> list[str]:
    """Named volumes a service mounts are declared at the top level."""
    declared = set(compose.get("volumes") or {})
    problems = []
    for name, service in services(compose).items():
        for mount in service.get("volumes") or []:
            source = mount.get("source", "") if isinstance(mount, dict) else str(mount).split(":")[0]
            is_named = ":" in str(mount) or isinstance(mount, dict)
            if is_named and source and not source.startswith(("/", ".", "~", "$")) and source not in declared:
                problems.append(f"{name}: volume {source!r} is not declared under volumes")
    return problems


COMPOSE_CHECKERS: dict[str, Checker] = {
    "images": image_problems,
    "depends_on": depends_on_problems,
    "env_names": env_name_problems,
    "interpolation": interpolation_problems,
    "settings": settings_problems,
    "commands": command_problems,
    "ports": port_problems,
    "volumes": volume_problems,
}


def dockerfile_problems(text: str) -> list[str]:
    """The entry point is the console script, exec form, with the uv environment on PATH, not as root."""
    scripts: dict[str, str] = pyproject()["project"]["scripts"]
    instructions = dockerfile_instructions(text)
    problems = []
    entrypoints = [arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"]
    if not entrypoints:
        problems.append("no ENTRYPOINT")
    else:
        try:
            entrypoint = json.loads(entrypoints[-1])  # exec form is a JSON array
        except json.JSONDecodeError:
            entrypoint = None
        if not isinstance(entrypoint, list) or len(entrypoint) != 1 or entrypoint[0] not in scripts:
            problems.append(
                f"ENTRYPOINT {entrypoints[-1]} is not exec form of a console script {sorted(scripts)}"
            )
    env = dockerfile_env(text)
    venv_bin = f"{env.get('UV_PROJECT_ENVIRONMENT', '/app/.venv')}/bin"
    if venv_bin not in env.get("PATH", "").split(":"):
        problems.append(f"PATH does not start the uv environment's {venv_bin}")
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the image runs as root")
    return problems


def uv_pin_problems(text: str, installed: str) -> list[str]:
    """The Dockerfile installs uv of the same major.minor as the uv this project is developed with."""
    pins = _UV_PIN.findall(text)
    if len(pins) != 1:
        return [f"expected exactly one uv==X.Y.Z pin, found {len(pins)}"]
    pinned = ".".join(pins[0][:2])
    wanted = ".".join(installed.split(".")[:2])
    return [] if pinned == wanted else [f"Dockerfile pins uv {pinned}.x, the project uses uv {installed}"]


# --------------------------------------------------------------------------------------------------
# The real files pass
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()


@pytest.mark.parametrize("check", sorted(COMPOSE_CHECKERS))
def test_compose_file_passes(compose: Compose, check: str) -> None:
    assert COMPOSE_CHECKERS[check](compose) == []


def test_expected_services_present(compose: Compose) -> None:
    expected = {"redpanda", "console", "redis", "clickhouse", "weaviate"}
    ours = {"highwater-init", "highwater-stream", "highwater-score", "highwater-learn", "highwater-serve"}
    assert expected | ours <= set(services(compose))
    assert set(highwater_services(compose)) == ours


def test_highwater_services_share_one_environment(compose: Compose) -> None:
    environments = [environment(svc) for svc in highwater_services(compose).values()]
    assert all(env == environments[0] for env in environments)
    assert compose.get("x-highwater-env") == highwater_services(compose)["highwater-serve"]["environment"]


def test_settings_values(compose: Compose) -> None:
    settings = settings_for(services(compose)["highwater-stream"])
    assert settings.broker_bootstrap == "redpanda:9092"
    assert settings.schema_registry_url == "http://redpanda:8081"
    assert settings.redis_url == "redis://redis:6379/0"
    assert urlsplit(settings.clickhouse_dsn).hostname == "clickhouse"
    assert settings.vector_store_url == "http://weaviate:8080"
    assert settings.effective_clickhouse_dsn == settings.clickhouse_dsn  # a server, not embedded chDB


def test_startup_order(compose: Compose) -> None:
    svc = services(compose)
    assert svc["highwater-init"]["depends_on"]["redpanda"]["condition"] == "service_healthy"
    for name in ("highwater-stream", "highwater-score", "highwater-learn", "highwater-serve"):
        assert svc[name]["depends_on"]["highwater-init"]["condition"] == "service_completed_successfully"
        assert svc[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc[name]["restart"] == "unless-stopped"


def test_redis_is_durable(compose: Compose) -> None:
    args = command_args(services(compose)["redis"])
    assert args[args.index("--appendonly") + 1] == "yes"


def test_dockerfile_passes() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_uv_pin_matches_installed_uv() -> None:
    assert uv_pin_problems(DOCKERFILE.read_text(), installed_uv_version()) == []


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    """A real gRPC server with the standard health service on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(grace=None)


def test_serve_healthcheck_follows_grpc_health(
    compose: Compose, health_server: tuple[int, health.HealthServicer]
) -> None:
    """The serve container's healthcheck command, run as is, passes only while the server is SERVING."""
    port, servicer = health_server
    test = services(compose)["highwater-serve"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], test
    command = [sys.executable, *test[2:]]
    env = {**os.environ, "HIGHWATER_GRPC_PORT": str(port)}

    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert subprocess.run(command, env=env, capture_output=True).returncode != 0


# --------------------------------------------------------------------------------------------------
# Each checker catches a broken copy
# --------------------------------------------------------------------------------------------------

BREAKAGES = [
    ("env_names", "HIGHWATER_REDIS_URL:", "HIGHWATER_REDIS_ULR:", "HIGHWATER_REDIS_ULR"),
    ("env_names", "HIGHWATER_STREAM__PARTITIONS:", "HIGHWATER_STREAM__PARTITIONZ:", "PARTITIONZ"),
    ("settings", 'HIGHWATER_GRPC_PORT: "50051"', 'HIGHWATER_GRPC_PORT: "port"', "do not validate"),
    ("settings", 'HIGHWATER_STREAM__PARTITIONS: "4"', 'HIGHWATER_STREAM__PARTITIONS: "0"', "do not validate"),
    ("settings", "redis://redis:6379/0", "redis://redis:16379/0", "does not listen on"),
    ("settings", "http://weaviate:8080", "http://weaviat:8080", "expected service 'weaviate'"),
    ("settings", "HIGHWATER_GRPC_HOST: 0.0.0.0", "HIGHWATER_GRPC_HOST: 127.0.0.1", "unreachable"),
    ("images", "redis:7.4.2", "redis:latest", "not pinned"),
    ("images", "redis:7.4.2", "redis", "no tag"),
    ("images", "clickhouse/clickhouse-server:25.8.3.66", "clickhouse/clickhouse-server:25", "not pinned"),
    ("depends_on", "condition: service_completed_successfully", "condition: service_done", "invalid"),
    ("depends_on", "      highwater-init:\n", "      highwater-inti:\n", "unknown service"),
    (
        "depends_on",
        "      redis:\n        condition: service_healthy",
        "      console:\n        condition: service_healthy",
        "no healthcheck",
    ),
    ("commands", 'command: ["serve"]', 'command: ["serv"]', "not a command"),
    ("commands", 'command: ["run"]', 'command: ["run", "--until-ned"]', "--until-ned"),
    ("commands", 'command: ["topics"]', "command: []", "no sub-command"),
    ("ports", '"8090:8080"', '"8080:8080"', "8080/tcp"),
    ("interpolation", "${CLICKHOUSE_PASSWORD:-highwater}@", "${CLICKHOUSE_PASSWORD}@", "no default"),
    ("volumes", "redis-data:/data", "redis-dat:/data", "redis-dat"),
]


@pytest.mark.parametrize(("check", "old", "new", "expected"), BREAKAGES)
def test_checker_catches_broken_copy(tmp_path: Path, check: str, old: str, new: str, expected: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the breakage no longer applies: {old!r} is not in docker-compose.yml"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    problems = COMPOSE_CHECKERS[check](load_compose(broken))
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('ENTRYPOINT ["highwater"]', 'ENTRYPOINT ["highwatr"]', "console script"),
        ('ENTRYPOINT ["highwater"]', "ENTRYPOINT highwater", "exec form"),
        ('PATH="/app/.venv/bin:${PATH}"', 'PATH="/app/venv/bin:${PATH}"', "PATH"),
        ("USER highwater", "USER root", "root"),
    ],
)
def test_dockerfile_checker_catches_broken_copy(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"the breakage no longer applies: {old!r} is not in the Dockerfile"
    problems = dockerfile_problems(text.replace(old, new, 1))
    assert any(expected in problem for problem in problems), problems


def test_uv_pin_checker_catches_other_minor() -> None:
    major, minor, _ = installed_uv_version().split(".")
    other = f"{major}.{int(minor) + 1}.0"
    text = _UV_PIN.sub(f"uv=={other}", DOCKERFILE.read_text())
    assert uv_pin_problems(text, installed_uv_version()) != []
    assert uv_pin_problems("RUN pip install uv", installed_uv_version()) != []
