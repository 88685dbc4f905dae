"""A small schema registry speaking the Confluent REST API, for the local stack.

It implements what ``confluent_kafka.schema_registry.SchemaRegistryClient`` uses for AVRO schemas:
registering and looking up schemas, reading them by global id or by subject version, listing subjects
and versions, soft and permanent deletes, compatibility levels (global and per subject) and
compatibility tests. Rules and storage live in :mod:`schemas.registry_store`; this module maps HTTP to
them. Responses use ``application/vnd.schemaregistry.v1+json`` and errors Confluent's body
``{"error_code": ..., "message": ...}``.

Differences from Confluent worth knowing: only AVRO without references; ``GET /config/{subject}``
answers 40408 when the subject has no level of its own unless ``defaultToGlobal=true`` (as Confluent
does); no modes, contexts, metadata or rule sets (``GET /mode`` always says READWRITE).

Run it:
    $ python -m schemas.registry_server --host 127.0.0.1 --port 18081 --data-dir .highwater/registry

Example:
    >>> from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    >>> client = SchemaRegistryClient({"url": "http://127.0.0.1:18081"})  # doctest: +SKIP
    >>> client.register_schema("t-value", Schema('{"type": "string"}', "AVRO"))  # doctest: +SKIP
    1
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from schemas.registry_store import (
    SUPPORTED_TYPES,
    RegistryError,
    RegistryStore,
    VersionRef,
    invalid_schema,
    invalid_version,
    parse_schema,
    schema_not_found,
)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_MAX_VERSION = 2**31 - 1
log = logging.getLogger("schemas.registry_server")

Handler = Callable[[Request], Awaitable[Response]]


def _json(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type=CONTENT_TYPE)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() == "true"


def _version(raw: str) -> VersionRef:
    if raw in ("latest", "-1"):
        return "latest"
    try:
        number = int(raw)
    except ValueError:
        raise invalid_version(raw) from None
    if not 1 <= number <= _MAX_VERSION:
        raise invalid_version(raw)
    return number


def _schema_id(request: Request) -> int:
    raw = request.path_params["schema_id"]
    try:
        return int(raw)
    except ValueError:
        raise schema_not_found(f"Schema {raw} not found") from None


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid_schema(f"Request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise invalid_schema("Request body must be a JSON object")
    return body


async def _parsed_body(request: Request) -> Any:
    body = await _body(request)
    return parse_schema(body.get("schema"), body.get("schemaType", "AVRO"), body.get("references"))


def create_app(store: RegistryStore) -> Starlette:
    """The ASGI app serving ``store``.

    Example:
        >>> app = create_app(RegistryStore(Path("/tmp/registry")))  # doctest: +SKIP
    """

    async def root(request: Request) -> Response:
        return _json({})

    async def schema_types(request: Request) -> Response:
        return _json(list(SUPPORTED_TYPES))

    async def schema_by_id(request: Request) -> Response:
        schema_id = _schema_id(request)
        text, kind = store.schema_by_id(schema_id)
        subject = request.query_params.get("subject")
        if subject and subject not in {s for s, _ in store.versions_of_id(schema_id, deleted=True)}:
            raise schema_not_found(f"Schema {schema_id} not found in subject '{subject}'")
        return _json({"schema": text, "schemaType": kind})

    async def raw_schema_by_id(request: Request) -> Response:
        text, _ = store.schema_by_id(_schema_id(request))
        return Response(text, media_type=CONTENT_TYPE)

    async def versions_of_id(request: Request) -> Response:
        pairs = store.versions_of_id(_schema_id(request), deleted=_flag(request, "deleted"))
        return _json([{"subject": s, "version": v} for s, v in pairs])

    async def subjects_of_id(request: Request) -> Response:
        pairs = store.versions_of_id(_schema_id(request), deleted=_flag(request, "deleted"))
        return _json(sorted({s for s, _ in pairs}))

    async def subjects(request: Request) -> Response:
        return _json(
            store.subjects(
                deleted=_flag(request, "deleted"),
                deleted_only=_flag(request, "deleted_only"),
                prefix=request.query_params.get("subjectPrefix", ""),
            )
        )

    async def subject(request: Request) -> Response:
        name = request.path_params["subject"]
        if request.method == "DELETE":
            return _json(store.delete_subject(name, permanent=_flag(request, "permanent")))
        found = store.lookup(name, await _parsed_body(request), deleted=_flag(request, "deleted"))
        return _json(found.to_json())

    async def versions(request: Request) -> Response:
        name = request.path_params["subject"]
        if request.method == "POST":
            registered = store.register(name, await _parsed_body(request))
            log.info("subject %s version %d has schema id %d", name, registered.version, registered.schema_id)
            return _json({"id": registered.schema_id, "subject": name, "version": registered.version})
        found = store.versions(
            name, deleted=_flag(request, "deleted"), deleted_only=_flag(request, "deleted_only")
        )
        return _json([v.version for v in found])

    async def version(request: Request) -> Response:
        name = request.path_params["subject"]
        ref = _version(request.path_params["version"])
        if request.method == "DELETE":
            return _json(store.delete_version(name, ref, permanent=_flag(request, "permanent")))
        return _json(store.version(name, ref, deleted=_flag(request, "deleted")).to_json())

    async def version_schema(request: Request) -> Response:
        found = store.version(request.path_params["subject"], _version(request.path_params["version"]))
        return Response(found.schema, media_type=CONTENT_TYPE)

    async def config(request: Request) -> Response:
        name = request.path_params.get("subject")
        if request.method == "PUT":
            level = store.set_compatibility((await _body(request)).get("compatibility"), name)
            return _json({"compatibility": level})
        if request.method == "DELETE":
            return _json({"compatibilityLevel": store.delete_compatibility(name)})
        level = store.compatibility(name, default_to_global=name is None or _flag(request, "defaultToGlobal"))
        return _json({"compatibilityLevel": level})

    async def compatibility(request: Request) -> Response:
        name = request.path_params["subject"]
        raw = request.path_params.get("version")
        problems = store.check(name, await _parsed_body(request), None if raw is None else _version(raw))
        body: dict[str, object] = {"is_compatible": not problems}
        if _flag(request, "verbose"):
            body["messages"] = problems
        return _json(body)

    async def mode(request: Request) -> Response:
        return _json({"mode": "READWRITE"})

    async def registry_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RegistryError)
        return _json({"error_code": exc.error_code, "message": exc.message}, exc.http_status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json({"error_code": exc.status_code, "message": exc.detail}, exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("request %s %s failed", request.method, request.url.path)
        return _json({"error_code": 50001, "message": f"Error in the backend data store: {exc}"}, 500)

    routes = [
        Route("/", root),
        Route("/schemas/types", schema_types),
        Route("/schemas/ids/{schema_id}", schema_by_id),
        Route("/schemas/ids/{schema_id}/schema", raw_schema_by_id),
        Route("/schemas/ids/{schema_id}/versions", versions_of_id),
        Route("/schemas/ids/{schema_id}/subjects", subjects_of_id),
        Route("/subjects", subjects),
        Route("/subjects/{subject}", subject, methods=["POST", "DELETE"]),
        Route("/subjects/{subject}/versions", versions, methods=["GET", "POST"]),
        Route("/subjects/{subject}/versions/{version}", version, methods=["GET", "DELETE"]),
        Route("/subjects/{subject}/versions/{version}/schema", version_schema),
        Route("/config", config, methods=["GET", "PUT", "DELETE"]),
        Route("/config/{subject}", config, methods=["GET", "PUT", "DELETE"]),
        Route("/compatibility/subjects/{subject}/versions", compatibility, methods=["POST"]),
        Route("/compatibility/subjects/{subject}/versions/{version}", compatibility, methods=["POST"]),
        Route("/mode", mode),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            RegistryError: registry_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
    )


def main(argv: list[str] | None = None) -> None:
    """Serve the registry until SIGTERM/SIGINT; logs go to stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m schemas.registry_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to bind (default 8081)")
    parser.add_argument("--data-dir", type=Path, required=True, help="directory of the registry's database")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    store = RegistryStore(args.data_dir)
    log.info("schema registry on http://%s:%d, data in %s", args.host, args.port, store.path)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # uvicorn sends access lines to stdout
    try:
        uvicorn.run(
            create_app(store), host=args.host, port=args.port, log_level=args.log_level, log_config=log_config
        )
    finally:
        store.close()


if __name__ == "__main__":
    main()
