"""The schema registry server through Confluent's own client (``SchemaRegistryClient``).

Most tests use the session stack's registry with subjects unique to the test; the restart test runs
its own registry processes on one data directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from highwater.settings import Settings
from highwater.stack.health import check_registry
from highwater.stack.ports import free_port
from schemas.registry_server import CONTENT_TYPE

pytestmark = pytest.mark.stack

V1: dict[str, Any] = {
    "type": "record",
    "name": "Payment",
    "namespace": "test",
    "fields": [{"name": "id", "type": "string"}],
}
V2_REQUIRED: dict[str, Any] = {**V1, "fields": [*V1["fields"], {"name": "amount", "type": "double"}]}
V2_OPTIONAL: dict[str, Any] = {
    **V1,
    "fields": [*V1["fields"], {"name": "note", "type": ["null", "string"], "default": None}],
}


def avro(schema: dict[str, Any], indent: int | None = None) -> Schema:
    return Schema(json.dumps(schema, indent=indent), "AVRO")


def parsed(schema: Schema) -> Any:
    return json.loads(schema.schema_str or "null")


def new_client(url: str) -> SchemaRegistryClient:
    """A client with an empty cache, so every call reaches the server."""
    return SchemaRegistryClient({"url": url, "max.retries": 0})


@pytest.fixture
def client(stack: Settings) -> Iterator[SchemaRegistryClient]:
    with new_client(stack.schema_registry_url) as registry:  # closes its HTTP session
        yield registry


@pytest.fixture
def subject() -> str:
    return f"test-{uuid.uuid4().hex[:8]}-value"


def registry_error(call: object) -> SchemaRegistryError:
    assert callable(call)
    with pytest.raises(SchemaRegistryError) as info:
        call()
    return info.value


def test_register_then_read_back_every_way(client: SchemaRegistryClient, subject: str) -> None:
    schema_id = client.register_schema(subject, avro(V1))

    assert parsed(client.get_schema(schema_id)) == V1
    latest = client.get_latest_version(subject)
    assert (latest.subject, latest.version, latest.schema_id) == (subject, 1, schema_id)
    assert client.get_version(subject, 1).schema_id == schema_id
    found = client.lookup_schema(subject, avro(V1))
    assert (found.version, found.schema_id) == (1, schema_id)
    assert client.get_versions(subject) == [1]
    assert subject in client.get_subjects()
    assert [(v.subject, v.version) for v in client.get_schema_versions(schema_id)] == [(subject, 1)]
    assert client.get_subjects_by_schema_id(schema_id) == [subject]


def test_same_schema_gets_the_same_global_id(stack: Settings, subject: str) -> None:
    first = new_client(stack.schema_registry_url).register_schema(subject, avro(V1))
    again = new_client(stack.schema_registry_url).register_schema(subject, avro(V1, indent=2))
    other_subject = new_client(stack.schema_registry_url).register_schema(f"other-{subject}", avro(V1))

    assert first == again == other_subject
    client = new_client(stack.schema_registry_url)
    assert client.get_versions(subject) == [1]
    assert {subject, f"other-{subject}"} <= set(client.get_subjects_by_schema_id(first))


def test_backward_rejects_a_required_field_and_accepts_an_optional_one(
    client: SchemaRegistryClient, subject: str
) -> None:
    first = client.register_schema(subject, avro(V1))
    assert client.get_compatibility() == "BACKWARD"

    assert client.test_compatibility(subject, avro(V2_REQUIRED)) is False
    rejected = registry_error(lambda: client.register_schema(subject, avro(V2_REQUIRED)))
    assert (rejected.http_status_code, rejected.error_code) == (409, 409)
    assert "amount" in rejected.error_message

    assert client.test_compatibility(subject, avro(V2_OPTIONAL)) is True
    second = client.register_schema(subject, avro(V2_OPTIONAL))
    assert second != first
    assert client.get_versions(subject) == [1, 2]


def test_compatibility_is_configured_per_subject(client: SchemaRegistryClient, subject: str) -> None:
    relaxed, strict = subject, f"strict-{subject}"
    for name in (relaxed, strict):
        client.register_schema(name, avro(V1))
    unset = registry_error(lambda: client.get_compatibility(relaxed))
    assert unset.error_code == 40408

    client.set_compatibility(relaxed, "NONE")

    assert client.get_compatibility(relaxed) == "NONE"
    assert client.get_compatibility() == "BACKWARD"
    assert client.register_schema(relaxed, avro(V2_REQUIRED)) > 0
    assert registry_error(lambda: client.register_schema(strict, avro(V2_REQUIRED))).http_status_code == 409
    invalid = registry_error(lambda: client.set_compatibility(relaxed, "SOMETIMES"))
    assert invalid.error_code == 42203


def test_unknown_ids_subjects_and_versions_have_confluent_error_codes(
    client: SchemaRegistryClient, subject: str
) -> None:
    client.register_schema(subject, avro(V1))

    assert registry_error(lambda: client.get_schema(987_654)).error_code == 40403
    assert registry_error(lambda: client.get_version(f"missing-{subject}", 1)).error_code == 40401
    assert registry_error(lambda: client.get_version(subject, 7)).error_code == 40402
    assert registry_error(lambda: client.lookup_schema(subject, avro(V2_OPTIONAL))).error_code == 40403


def test_invalid_and_non_avro_schemas_are_refused(client: SchemaRegistryClient, subject: str) -> None:
    broken = registry_error(lambda: client.register_schema(subject, Schema('{"type": "record"}', "AVRO")))
    assert (broken.http_status_code, broken.error_code) == (422, 42201)
    other = registry_error(lambda: client.register_schema(subject, Schema('{"type": "object"}', "JSON")))
    assert other.error_code == 42201
    assert "JSON" in other.error_message


def test_soft_deleted_versions_disappear_but_their_ids_still_resolve(
    client: SchemaRegistryClient, subject: str
) -> None:
    schema_id = client.register_schema(subject, avro(V1))
    client.register_schema(subject, avro(V2_OPTIONAL))

    assert client.delete_version(subject, 1) == 1

    assert client.get_versions(subject) == [2]
    assert client.get_versions(subject, deleted=True) == [1, 2]
    assert parsed(client.get_schema(schema_id)) == V1
    assert client.delete_subject(subject) == [2]
    assert subject not in client.get_subjects()
    assert subject in client.get_subjects(deleted=True)


def test_http_responses_use_the_registry_content_type(stack: Settings) -> None:
    response = httpx.get(f"{stack.schema_registry_url}/schemas/ids/987654")

    assert response.status_code == 404
    assert response.headers["content-type"] == CONTENT_TYPE
    assert response.json() == {"error_code": 40403, "message": "Schema 987654 not found"}


def _start_registry(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "schemas.registry_server",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while not check_registry(port, timeout=1.0)[0]:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"registry did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_data_survives_a_registry_restart(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "registry", tmp_path / "registry.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = _start_registry(data_dir, port, log)
    try:
        client = new_client(url)
        schema_id = client.register_schema("restart-value", avro(V1))
        client.register_schema("restart-value", avro(V2_OPTIONAL))
        client.set_compatibility("restart-value", "FULL")
    finally:
        _stop(first)

    second = _start_registry(data_dir, port, log)
    try:
        client = new_client(url)
        assert parsed(client.get_schema(schema_id)) == V1
        assert client.get_versions("restart-value") == [1, 2]
        assert client.get_compatibility("restart-value") == "FULL"
        assert client.register_schema("restart-value", avro(V1)) == schema_id
        assert client.register_schema("elsewhere-value", avro(V2_REQUIRED)) > schema_id + 1
    finally:
        _stop(second)
