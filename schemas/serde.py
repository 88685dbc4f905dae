"""The one Avro serde of Highwater: Confluent wire format over a schema registry.

A value on the wire is ``0x00`` (magic byte), the writer schema's registry id as a 4-byte big-endian
integer, then the Avro binary body. Encoding registers the topic's schema under ``<topic>-value``
(once per process) with BACKWARD compatibility; decoding looks the writer schema up by id and resolves
it against the reader schema the consumer knows, so producers on older or newer schemas can share a
topic.

The registry client is ``confluent_kafka.schema_registry.SchemaRegistryClient`` (REST, caching); the
codec is fastavro. Framing is done here rather than through ``AvroDeserializer`` so that every failure
gets the precise reason the dead-letter topic records: :class:`UndecodableRecord`,
:class:`UnknownSchemaId`.

Example:
    >>> serde = AvroSerde("http://127.0.0.1:18081")          # doctest: +SKIP
    >>> raw = serde.encode("transactions", {...})            # doctest: +SKIP
    >>> serde.decode("transactions", raw)["transaction_id"]  # doctest: +SKIP
"""

from __future__ import annotations

import io
import re
import struct
import threading
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from schemas.catalog import CATALOG, SchemaCatalog
from schemas.codec import parse_for_decoding

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
COMPATIBILITY = "BACKWARD"


class SerdeError(Exception):
    """A value that cannot be turned into an event; ``kind`` is the dead-letter error type."""

    kind = "serde_error"


class UndecodableRecord(SerdeError):
    """Not Confluent-framed Avro, or a body that does not match its writer schema."""

    kind = "undecodable"


class UnknownSchemaId(SerdeError):
    """The framing names a schema id the registry does not know."""

    kind = "unknown_schema_id"


class AvroSerde:
    """Encode and decode topic values in Confluent wire format.

    Thread-safe: the caches are filled under a lock, reads after that are lock-free.
    """

    def __init__(self, registry: str | SchemaRegistryClient, catalog: SchemaCatalog = CATALOG) -> None:
        self.registry = (
            registry
            if isinstance(registry, SchemaRegistryClient)
            else SchemaRegistryClient({"url": registry})
        )
        self._catalog = catalog
        self._writer_ids: dict[tuple[str, str], int] = {}
        self._writers: dict[str, Any] = {}
        self._by_id: dict[int, Any] = {}
        self._text_by_id: dict[int, str] = {}
        self._resolve: dict[tuple[int, str], Any] = {}
        self._lock = threading.Lock()

    # --- encoding -----------------------------------------------------------------------------------
    def register(self, topic: str, schema_text: str | None = None) -> int:
        """Register ``schema_text`` (default: the catalog's schema) for ``topic``; returns its id."""
        text = schema_text if schema_text is not None else self._catalog.entry(topic).text
        key = (topic, text)
        schema_id = self._writer_ids.get(key)
        if schema_id is not None:
            return schema_id
        with self._lock:
            subject = self._catalog.subject(topic)
            try:
                current = self.registry.get_compatibility(subject)
            except SchemaRegistryError:
                current = None
            if current != COMPATIBILITY:
                self.registry.set_compatibility(subject_name=subject, level=COMPATIBILITY)
            schema_id = self.registry.register_schema(subject, Schema(text, "AVRO"))
            self._writers[text] = parse_for_decoding(text)
            self._writer_ids[key] = schema_id
            return schema_id

    def encode(self, topic: str, record: dict[str, Any], schema_text: str | None = None) -> bytes:
        """``record`` as a Confluent-framed Avro value written with the topic's schema."""
        schema_id = self.register(topic, schema_text)
        text = schema_text if schema_text is not None else self._catalog.entry(topic).text
        out = io.BytesIO()
        out.write(_HEADER.pack(MAGIC_BYTE, schema_id))
        fastavro.schemaless_writer(out, self._writers[text], record)
        return out.getvalue()

    # --- decoding -----------------------------------------------------------------------------------
    def writer_schema(self, schema_id: int) -> Any:
        """The parsed writer schema behind ``schema_id``; UnknownSchemaId if the registry lacks it."""
        parsed = self._by_id.get(schema_id)
        if parsed is not None:
            return parsed
        with self._lock:
            try:
                schema = self.registry.get_schema(schema_id)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise UnknownSchemaId(f"schema id {schema_id} is not in the registry") from exc
                raise
            if schema.schema_str is None:
                raise UnknownSchemaId(f"schema id {schema_id} has no schema text in the registry")
            parsed = parse_for_decoding(schema.schema_str)
            self._text_by_id[schema_id] = schema.schema_str
            self._by_id[schema_id] = parsed
            return parsed

    def writer_schema_text(self, schema_id: int) -> str:
        """The registry's text of the writer schema behind ``schema_id``; UnknownSchemaId if it lacks it."""
        self.writer_schema(schema_id)
        return self._text_by_id[schema_id]

    def needs_resolution(self, schema_id: int, topic: str) -> bool:
        """Whether values written with ``schema_id`` must be resolved to ``topic``'s reader schema
        (the writer schema differs from it), rather than read as they are."""
        return self._reader_for(schema_id, topic, self.writer_schema(schema_id)) is not None

    def _reader_for(self, schema_id: int, topic: str, writer: Any) -> Any:
        """The reader schema to resolve to, or None when the writer schema already is it.

        Resolution is several times slower than a plain read, so it is skipped when not needed.
        """
        key = (schema_id, topic)
        if key not in self._resolve:
            reader = parse_for_decoding(self._catalog.entry(topic).text)
            self._resolve[key] = None if reader == writer else reader
        return self._resolve[key]

    def decode(self, topic: str, value: bytes | None) -> dict[str, Any]:
        """The event in ``value``, resolved to the topic's current reader schema."""
        if value is None or len(value) < _HEADER.size:
            raise UndecodableRecord("value is empty or shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != MAGIC_BYTE:
            raise UndecodableRecord(f"magic byte is {magic}, expected {MAGIC_BYTE} (not Confluent framing)")
        writer = self.writer_schema(schema_id)
        reader = self._reader_for(schema_id, topic, writer)
        buf = io.BytesIO(value)
        buf.seek(_HEADER.size)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # fastavro raises many types for corrupt bodies
            # fastavro's messages can name the buffer object; its address would make each message unique
            detail = _ADDRESS.sub("", repr(exc))
            raise UndecodableRecord(f"Avro body does not match schema id {schema_id}: {detail}") from exc
        if not isinstance(record, dict):
            raise UndecodableRecord(f"schema id {schema_id} is not a record schema")
        if buf.tell() != len(value):
            raise UndecodableRecord(
                f"{len(value) - buf.tell()} trailing bytes after the Avro body (schema id {schema_id})"
            )
        return record
