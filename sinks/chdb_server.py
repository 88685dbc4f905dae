"""A small server speaking the ClickHouse HTTP interface over chDB, for the local stack.

chDB (ClickHouse in-process) lets one process own a data directory. This server is that process: it
opens ``--data-dir`` with clickhouse-connect's own chDB client and answers the subset of the ClickHouse
HTTP interface that ``clickhouse_connect.get_client(dsn="http://127.0.0.1:PORT")`` uses, so every other
Highwater process talks to the offline store exactly as to a ClickHouse server.

Supported:

- ``GET /ping`` and ``GET /`` without a query answer ``Ok.``.
- ``GET``/``POST /``: the query in the ``query`` URL parameter, the request body, or both (then joined
  by a newline, as ClickHouse does); multipart form fields ``query`` and ``param_*``, which
  clickhouse-connect sends when bind parameters are large.
- ``database``; ``default_format`` or a trailing ``FORMAT x`` clause (any format chDB writes);
  ``param_<name>`` server-side parameters for ``{name:Type}`` placeholders; every other URL parameter
  that is not an HTTP-transport one is a ClickHouse setting of the query (unknown ones fail as in
  ClickHouse).
- ``INSERT INTO t [(cols)] FORMAT f`` followed by data (in the query, the body, or split between
  them), in any input format chDB reads; a body with ``Content-Encoding`` lz4, zstd, gzip or deflate.
- ``GET`` runs read-only statements only, as ClickHouse does (``readonly`` as a URL parameter too).
- Responses carry ``X-ClickHouse-Format`` (for statements producing a result), ``-Timezone``,
  ``-Query-Id`` and ``-Summary``; errors are ``Code: N. DB::Exception: ...`` with
  ``X-ClickHouse-Exception-Code``, so clickhouse-connect raises DatabaseError with the engine's text.

Not supported, on purpose: sessions (``session_id`` is ignored, so ``SET``, ``USE`` and temporary
tables are refused with an error instead of silently not persisting), users and authentication (the
server binds 127.0.0.1 and ignores credentials), external data, ClickHouse's own block compression
(``compress=1``/``decompress=1`` are refused), compressed responses, progress headers and
``client_protocol_version`` (clients fall back to protocol 0). A request with ``wait_end_of_query=1``
(clickhouse-connect's ``query*`` calls) or a format that cannot be cut into blocks is answered from
memory; other results in Native, RowBinary, TSV, CSV or JSONEachRow stream block by block.

Statements run on a small pool of chDB connections (``--connections``), one request at a time each
(a streamed answer keeps its connection until it ends or its client leaves), in a thread pool, so
long queries do not block others or the event loop. The query text must be UTF-8 (chDB replaces
invalid bytes), and several statements in one request run one after the other (ClickHouse refuses
them over HTTP).

Run it:
    $ python -m sinks.chdb_server --host 127.0.0.1 --port 18123 --data-dir .highwater/clickhouse

Example:
    >>> import clickhouse_connect
    >>> client = clickhouse_connect.get_client(dsn="http://127.0.0.1:18123")  # doctest: +SKIP
    >>> client.query("SELECT {x:UInt32} + 1", parameters={"x": 41}).result_rows  # doctest: +SKIP
    [(42,)]
"""

from __future__ import annotations

import argparse
import copy
import email.parser
import email.policy
import gzip
import json
import logging
import queue
import re
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import clickhouse_connect
import uvicorn
from clickhouse_connect.driver._backend.models import QueryRuntime
from clickhouse_connect.driver._chdbclient import ChdbClient
from clickhouse_connect.driver.compression import _lz4_decompressor, _zstd_decompress
from clickhouse_connect.driver.exceptions import DatabaseError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

log = logging.getLogger("sinks.chdb_server")

# URL parameters that belong to the HTTP transport, not to the query. ClickHouse consumes them in its
# HTTP handler; chDB has no such handler and would reject most of them as unknown settings. Ignoring
# them is what a stateless server does: no sessions (session_*), no users (user, password, quota_key,
# role), no progress headers or response compression (we answer uncompressed; clients read
# Content-Encoding), no query cancellation on disconnect, no native protocol revision (clients then
# read plain Native). query_id only names the query in our answer.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "role",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "buffer_size",
        "wait_end_of_query",
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "client_protocol_version",
        "add_http_cors_header",
        "compress",
        "decompress",
        "readonly",
    }
)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Formats chDB can cut into self-contained blocks (see clickhouse-connect's chdb backend).
_STREAMABLE_FORMATS = frozenset({"Native", "TabSeparated", "TSV", "CSV", "RowBinary", "JSONEachRow"})
_STREAM_CHUNK = 1 << 20
_SHUTDOWN_GRACE_S = 2  # the stack's supervisor kills a part 5 s after SIGTERM
_LEADING_NOISE = rb"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*"  # whitespace and comments
_FIRST_WORD = re.compile(r"[A-Za-z]+|\(")
# Statements that produce a result set (and so may take FORMAT and run under readonly).
_RESULT_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "CHECK", "("}
)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)(?:\s+SETTINGS\b[^;]*)?\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_INSERT_WITH_DATA = re.compile(
    _LEADING_NOISE + rb"INSERT\s+INTO\s+(.+?)\s+FORMAT\s+(\w+)", re.IGNORECASE | re.DOTALL
)
_NOT_A_DATA_INSERT = re.compile(rb"\b(?:SELECT|VALUES|WITH)\b", re.IGNORECASE)
_STATEMENT_START = re.compile(_LEADING_NOISE.decode(), re.DOTALL)
_SESSION_STATEMENT = re.compile(r"(?:SET|USE)\b|CREATE\s+TEMPORARY\b", re.IGNORECASE)
_CODE = re.compile(r"^Code: (\d+)\.")

# ClickHouse's exceptionCodeToHTTPStatus for the codes this server meets; everything else is 500.
_HTTP_STATUS = {
    **dict.fromkeys((46, 47, 50, 56, 60, 63, 73, 81, 115, 336), 404),  # UNKNOWN_<something>
    **dict.fromkeys((6, 26, 27, 36, 38, 41, 42, 43, 53, 62, 72, 117, 456), 400),  # bad input, syntax
    164: 403,  # READONLY
    48: 501,  # NOT_IMPLEMENTED
}
_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}


class ClickHouseError(Exception):
    """An error answered the way ClickHouse answers it: code, ``Code: N. DB::Exception: ...``, status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, code: int, name: str, text: str) -> ClickHouseError:
        """An error of this server, worded like the engine's own."""
        return cls(code, f"Code: {code}. DB::Exception: {text}. ({name})")

    @classmethod
    def from_engine(cls, exc: Exception) -> ClickHouseError:
        """The engine's error (a clickhouse-connect DatabaseError carrying chDB's message) as is."""
        message = str(exc).strip()
        match = _CODE.match(message)
        if match:
            return cls(int(match.group(1)), message)
        code = getattr(exc, "code", None)
        return cls.of(code if isinstance(code, int) and code else 1001, "STD_EXCEPTION", message)

    def response(self, query_id: str) -> Response:
        return Response(
            f"{self.message}\n",
            status_code=_HTTP_STATUS.get(self.code, 500),
            media_type="text/plain; charset=UTF-8",
            headers={"X-ClickHouse-Exception-Code": str(self.code), "X-ClickHouse-Query-Id": query_id},
        )


def _not_implemented(text: str) -> ClickHouseError:
    return ClickHouseError.of(48, "NOT_IMPLEMENTED", text)


@dataclass
class _Connection:
    """One chDB client of the pool and the settings currently SET on its handle."""

    client: ChdbClient
    applied: dict[str, str] = field(default_factory=dict)

    def prepare(self, database: str, settings: dict[str, str]) -> None:
        """Point the handle at ``database`` and make its settings exactly ``settings``.

        Settings are SET on the handle and kept while the next requests send the same ones (every
        clickhouse-connect request repeats its client settings): applying them per call with SET and
        a restore costs ten times the query itself.
        """
        self.client.database = database
        for name in [n for n in self.applied if n not in settings]:
            self.client.raw_query(f"SET {name} = DEFAULT")
            del self.applied[name]
        for name, value in settings.items():
            if self.applied.get(name) == value:
                continue
            if not _SETTING_NAME.match(name):
                raise ClickHouseError.of(115, "UNKNOWN_SETTING", f"Invalid setting name {name!r}")
            escaped = value.replace("\\", "\\\\").replace("'", "\\'")
            self.applied.pop(name, None)
            try:
                self.client.raw_query(f"SET {name} = '{escaped}'")
            except DatabaseError:
                with suppress(DatabaseError):  # an unknown setting has nothing to reset
                    self.client.raw_query(f"SET {name} = DEFAULT")
                raise
            self.applied[name] = value


class EnginePool:
    """chDB clients on one data directory (one engine per process, one handle per client)."""

    def __init__(self, data_dir: Path, size: int) -> None:
        self.data_dir = data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._idle: queue.Queue[_Connection] = queue.Queue()
        self._all: list[_Connection] = []
        for _ in range(size):
            client = clickhouse_connect.get_client(dsn=f"chdb://{self.data_dir}")
            assert isinstance(client, ChdbClient)
            self._all.append(_Connection(client))
            self._idle.put(self._all[-1])
        self.version = self._all[0].client.server_version
        self.timezone = str(self._all[0].client.command("SELECT timezone()"))

    def acquire(self) -> _Connection:
        """An idle connection, waiting for one if all are busy (call in a worker thread)."""
        return self._idle.get()

    def release(self, connection: _Connection) -> None:
        self._idle.put(connection)

    @contextmanager
    def connection(self) -> Iterator[_Connection]:
        held = self.acquire()
        try:
            yield held
        finally:
            self.release(held)

    def close(self) -> None:
        """Close every client (waits for statements still running on them)."""
        for held in self._all:
            held.client.close()


@dataclass
class _Query:
    """One request, parsed: the statement (bytes, may carry insert data) and its URL parameters."""

    sql: bytes
    database: str
    settings: dict[str, str]
    params: dict[str, str]
    default_format: str | None
    readonly: bool
    wait_end: bool
    query_id: str


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    """The request body without its Content-Encoding; an encoding we cannot read is an error."""
    name = (encoding or "").strip().lower()
    try:
        if name in ("", "identity"):
            return body
        if name == "lz4":
            return bytes(_lz4_decompressor().decompress(body))
        if name == "zstd":
            return bytes(_zstd_decompress(body))
        if name == "gzip":
            return gzip.decompress(body)
        if name == "deflate":
            return zlib.decompress(body)
    except Exception as exc:
        raise ClickHouseError.of(
            354, "CANNOT_DECOMPRESS", f"Cannot decode the {name} request body: {exc}"
        ) from exc
    raise _not_implemented(
        f"Content-Encoding {encoding!r} is not supported here (lz4, zstd, gzip, deflate are)"
    )


def _multipart_fields(body: bytes, content_type: str) -> dict[str, str]:
    """The text fields of a multipart/form-data body; a file field (external data) is an error."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        if part.get_filename() is not None:
            raise _not_implemented("External data (file fields in a multipart request) is not supported")
        payload = part.get_payload(decode=True)
        fields[name] = payload.decode() if isinstance(payload, bytes) else str(payload)
    return fields


async def _parse(request: Request) -> _Query:
    params = dict(request.query_params)
    body = await request.body() if request.method == "POST" else b""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        params.update(_multipart_fields(body, content_type))
        body = b""
    else:
        body = _decode_body(body, request.headers.get("content-encoding"))
    for flag in ("compress", "decompress"):
        if params.get(flag, "0") not in ("0", "false", ""):
            raise _not_implemented(
                f"{flag}=1 (ClickHouse block compression) is not supported; use HTTP compression"
            )
    text = params.get("query", "")
    sql = text.encode() + (b"\n" + body if body else b"") if text else body
    return _Query(
        sql=sql,
        database=params.get("database") or "default",
        settings={
            k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")
        },
        params={k: v for k, v in params.items() if k.startswith("param_")},
        default_format=params.get("default_format") or None,
        readonly=request.method != "POST" or params.get("readonly", "0") not in ("0", ""),
        wait_end=params.get("wait_end_of_query", "0") not in ("0", ""),
        query_id=params.get("query_id") or str(uuid.uuid4()),
    )


def _data_insert(sql: bytes) -> tuple[str, str, int] | None:
    """``(target, format, offset of the data)`` of ``INSERT INTO target FORMAT f <data>``, else None.

    The data starts after the spaces and the one line break following the format name, as in ClickHouse.
    """
    match = _INSERT_WITH_DATA.match(sql)
    if match is None or _NOT_A_DATA_INSERT.search(match.group(1)):
        return None
    offset = match.end()
    while offset < len(sql) and sql[offset : offset + 1] in (b" ", b"\t", b"\f"):
        offset += 1
    if sql[offset : offset + 1] == b"\r":
        offset += 1
    if sql[offset : offset + 1] == b"\n":
        offset += 1
    return match.group(1).decode(), match.group(2).decode(), offset


def _statement(text: str) -> str:
    """``text`` from its first keyword on (leading whitespace and comments skipped)."""
    start = _STATEMENT_START.match(text)
    return text[start.end() :] if start else text


@dataclass
class _Answer:
    body: bytes | None
    stream: Any = None  # an open raw stream (holding its connection) when streaming
    connection: _Connection | None = None
    first: bytes = b""
    tag: str = ""  # X-ClickHouse-Exception-Tag of a streamed answer
    summary: dict[str, str] = field(default_factory=dict)


class ChdbServer:
    """Maps HTTP requests onto an :class:`EnginePool`."""

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool

    # --- blocking parts, run in the thread pool -----------------------------------------------------
    def _insert(self, query: _Query, target: str, fmt: str, offset: int) -> dict[str, str]:
        started = time.perf_counter_ns()
        with self.pool.connection() as held:
            try:
                held.prepare(query.database, query.settings)
                # A view, not a copy, of the data (raw_insert writes any buffer to its INFILE file).
                data: Any = memoryview(query.sql)[offset:]
                summary = held.client.raw_insert(target, None, data, fmt=fmt)
            except DatabaseError as exc:
                raise ClickHouseError.from_engine(exc) from exc
        out = {k: str(v) for k, v in summary.summary.items()}
        out["elapsed_ns"] = str(time.perf_counter_ns() - started)
        return out

    def _select(self, query: _Query, sql: str | bytes, stream: bool) -> _Answer:
        started = time.perf_counter_ns()
        held = self.pool.acquire()
        runtime = QueryRuntime(database=query.database, settings={})
        handed_over = False
        try:
            held.prepare(query.database, query.settings)
            # The backend call, not client.raw_query: raw_query binds parameters on the client (it would
            # escape the already escaped HTTP values again and substitute names without a {name:Type}
            # placeholder), while the HTTP request arrives bound; raw_query ends in this same call.
            backend = held.client._backend
            if not stream:
                body = backend.execute_raw_query(sql, query.params, None, runtime, None)
                summary = {
                    "result_bytes": str(len(body)),
                    "elapsed_ns": str(time.perf_counter_ns() - started),
                }
                return _Answer(body=body, summary=summary)
            raw = backend.execute_raw_stream(sql, query.params, None, runtime, None)
            try:
                first = raw.read(_STREAM_CHUNK)  # engine errors surface here, before any header is sent
            except BaseException:
                raw.close()
                raise
            handed_over = True  # the stream holds the connection until finish_stream
            return _Answer(body=None, stream=raw, connection=held, first=first, tag=uuid.uuid4().hex[:16])
        except DatabaseError as exc:
            raise ClickHouseError.from_engine(exc) from exc
        finally:
            if not handed_over:
                self.pool.release(held)

    def finish_stream(self, answer: _Answer) -> None:
        """End a streamed answer's engine stream and give its connection back (idempotent)."""
        if answer.connection is not None:
            answer.stream.close()
            self.pool.release(answer.connection)
            answer.connection = None

    # --- HTTP ---------------------------------------------------------------------------------------
    def headers(self, query: _Query, fmt: str | None, summary: dict[str, str]) -> dict[str, str]:
        headers = {
            "X-ClickHouse-Query-Id": query.query_id,
            "X-ClickHouse-Timezone": query.settings.get("session_timezone") or self.pool.timezone,
            "X-ClickHouse-Summary": json.dumps(summary),
            "X-ClickHouse-Server-Display-Name": "highwater-chdb",
        }
        if fmt is not None:
            headers["X-ClickHouse-Format"] = fmt
        return headers

    async def execute(self, query: _Query) -> Response:
        if not query.sql.strip():
            raise ClickHouseError.of(62, "SYNTAX_ERROR", "Empty query")
        insert = _data_insert(query.sql)
        if insert is not None:
            if query.readonly:
                raise _readonly()
            summary = await run_in_threadpool(self._insert, query, *insert)
            return Response(b"", headers=self.headers(query, None, summary))

        sql: str | bytes
        try:
            text = sql = query.sql.decode()
        except UnicodeDecodeError:  # binary parameters bound into it: pass the bytes (chDB reads UTF-8)
            text, sql = query.sql.decode("utf-8", errors="replace"), query.sql
        statement = _statement(text)
        first_word = _FIRST_WORD.match(statement)
        word = first_word.group(0).upper() if first_word else ""
        if _SESSION_STATEMENT.match(statement):
            raise _not_implemented(
                f"{word} needs an HTTP session, which this server does not keep; pass the database and "
                "settings as URL parameters (clickhouse-connect does) or use a SETTINGS clause"
            )
        trailing = _TRAILING_FORMAT.search(text)
        result = word in _RESULT_KEYWORDS or trailing is not None
        if query.readonly and not result:
            raise _readonly()
        fmt: str | None = None
        if trailing is not None:
            fmt = trailing.group(1)
        elif result:
            fmt = query.default_format or "TabSeparated"
            if query.default_format:
                sql = f"{text.rstrip().rstrip(';').rstrip()}\nFORMAT {fmt}"
        stream = result and not query.wait_end and fmt in _STREAMABLE_FORMATS
        answer = await run_in_threadpool(self._select, query, sql, stream)
        headers = self.headers(query, fmt, answer.summary)
        media_type = _CONTENT_TYPES.get(fmt or "", "application/octet-stream")
        if answer.body is not None:
            return Response(answer.body, headers=headers, media_type=media_type)
        headers["X-ClickHouse-Exception-Tag"] = answer.tag
        return _EngineStream(self, answer, headers=headers, media_type=media_type)


async def _chunks(answer: _Answer) -> AsyncGenerator[bytes, None]:
    try:
        chunk = answer.first
        while chunk:
            yield chunk
            chunk = await run_in_threadpool(answer.stream.read, _STREAM_CHUNK)
    except Exception as exc:
        # The status line is gone: end the body with the error block ClickHouse (25.11+) writes,
        # which clickhouse-connect finds by the tag sent in the headers.
        message = ClickHouseError.from_engine(exc).message
        log.info("query failed while streaming: %s", message)
        yield (
            f"__exception__\r\n{answer.tag}\r\n{message}\n"
            f"{len(message.encode())} {answer.tag}\r\n__exception__\r\n"
        ).encode()


class _EngineStream(StreamingResponse):
    """A streamed answer that ends its engine stream and frees its connection however the response
    ends: read to the end, failed, or the client went away (Starlette then cancels the sending task
    and leaves the body iterator suspended, or never started)."""

    def __init__(self, server: ChdbServer, answer: _Answer, headers: dict[str, str], media_type: str) -> None:
        self._chunks = _chunks(answer)
        super().__init__(self._chunks, headers=headers, media_type=media_type)
        self._server = server
        self._answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._chunks.aclose()  # a read in flight finishes first (threads are not abandoned)
                await run_in_threadpool(self._server.finish_stream, self._answer)


def _readonly() -> ClickHouseError:
    return ClickHouseError.of(
        164,
        "READONLY",
        "Cannot execute query in readonly mode. For queries over HTTP, method GET implies readonly. "
        "You should use method POST for modifying queries",
    )


def create_app(pool: EnginePool) -> Starlette:
    """The ASGI app serving ``pool``.

    Example:
        >>> app = create_app(EnginePool(Path("/tmp/hw-clickhouse"), size=2))  # doctest: +SKIP
    """
    server = ChdbServer(pool)

    async def ping(request: Request) -> Response:
        return Response("Ok.\n", media_type="text/plain; charset=UTF-8")

    async def root(request: Request) -> Response:
        if request.method in ("GET", "HEAD") and "query" not in request.query_params:
            return await ping(request)
        query_id = request.query_params.get("query_id") or str(uuid.uuid4())
        try:
            query = await _parse(request)
            query.query_id = query_id
            return await server.execute(query)
        except ClickHouseError as exc:
            log.info("query %s failed: %s", query_id, exc.message)
            return exc.response(query_id)
        except Exception as exc:
            log.exception("query %s failed", query_id)
            return ClickHouseError.of(1001, "STD_EXCEPTION", f"{type(exc).__name__}: {exc}").response(
                query_id
            )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Here, not after uvicorn.run: on SIGTERM uvicorn re-raises the signal once it has stopped.
        await run_in_threadpool(pool.close)
        log.info("closed the engine")

    return Starlette(
        routes=[Route("/ping", ping), Route("/", root, methods=["GET", "POST"])], lifespan=lifespan
    )


def main(argv: list[str] | None = None) -> None:
    """Serve the data directory until SIGTERM/SIGINT; logs go to stderr."""
    parser = argparse.ArgumentParser(prog="python -m sinks.chdb_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8123, help="port to bind (default 8123)")
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="chDB data directory (owned by this process)"
    )
    parser.add_argument("--connections", type=int, default=4, help="statements run at once (default 4)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    pool = EnginePool(args.data_dir, max(1, args.connections))
    log.info(
        "ClickHouse %s (chDB) on http://%s:%d, data in %s", pool.version, args.host, args.port, pool.data_dir
    )
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # uvicorn sends access lines to stdout
    uvicorn.run(
        create_app(pool),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=log_config,
        # The C parser: h11's, in Python, cost this server ~0.5 s of CPU per million history rows
        # inserted (bodies of tens of MB arrive in 64 KB pieces).
        http="httptools",
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_S,  # then streams to clients that stopped reading end
    )


if __name__ == "__main__":
    main()
