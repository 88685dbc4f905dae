"""Decode a batch of Confluent-framed Avro values into columns at once, with the same outcome per record
as :meth:`schemas.serde.AvroSerde.decode`.

The values of a batch written with one schema are concatenated, framing and all, into a single block of
an Avro object container, which polars reads in Rust: about 0.6 µs per transaction against 10-17 µs for
fastavro's per-record reader. The block's schema is the writer's with a first field of type ``fixed(5)``
that takes each value's 5-byte Confluent framing, so the values are joined as they are, with no copy
per record. A block has no per-record boundaries, so a corrupt body (truncated, or with trailing bytes)
could shift the records after it and still decode. Each record's encoded length is therefore recomputed
from its decoded values and compared with its value's length: when they agree for every record, each
record was read from exactly its own bytes (by induction from the first one).

Sorting values by schema id is vectorized for the usual batch, whose values all start with the same
framing; a batch that mixes schema ids or has framing errors is sorted value by value.

Anything the block read cannot prove goes through ``AvroSerde.decode`` one record at a time, which gives
each record its exact result or error: framing errors, unknown schema ids, writer schemas that must be
resolved to the reader schema (during a schema migration), field types this module does not size, a
block polars refuses (invalid UTF-8, say) and any length mismatch.

Example:
    >>> decoder = BatchDecoder(AvroSerde(settings.schema_registry_url))       # doctest: +SKIP
    >>> batch = decoder.decode("transactions", [m.value() for m in messages])  # doctest: +SKIP
    >>> batch.frame["amount"].sum(), batch.errors                              # doctest: +SKIP
    (1234.5, {17: UndecodableRecord('magic byte is 1, ...')})
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import polars as pl

from schemas.catalog import CATALOG, SchemaCatalog
from schemas.codec import decoding_schema_json
from schemas.serde import MAGIC_BYTE, AvroSerde, SerdeError

ROW = "_row"
"""Column of :attr:`DecodedBatch.frame`: the record's position in the decoded batch."""

_HEADER_SIZE = 5
_HEADER_FIELD = "_confluent_framing"
_SYNC = b"highwater-block!"  # any 16 bytes: the marker closing the container's one block
_POLARS_TYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "bytes": pl.Binary(),
    "long": pl.Int64(),
    "int": pl.Int32(),
    "double": pl.Float64(),
    "float": pl.Float32(),
    "boolean": pl.Boolean(),
}
_FIXED_SIZES = {"double": 8, "float": 4, "boolean": 1}


@dataclass(frozen=True)
class _Field:
    """A top-level record field of a primitive type, possibly nullable (a union with null)."""

    name: str
    base: str
    nullable: bool


def _fields(schema_json: Any) -> list[_Field] | None:
    """The record's fields when every one is primitive or a union of null and one primitive; else None."""
    if not isinstance(schema_json, dict) or schema_json.get("type") != "record":
        return None
    out = []
    for field in schema_json["fields"]:
        kind = field["type"]
        branches = kind if isinstance(kind, list) else [kind]
        bases = [b["type"] if isinstance(b, dict) else b for b in branches]
        others = [b for b in bases if b != "null"]
        if len(others) != 1 or others[0] not in _POLARS_TYPES or len(bases) > 2:
            return None
        out.append(_Field(field["name"], others[0], nullable=len(bases) == 2))
    return out


def polars_schema(topic: str, catalog: SchemaCatalog = CATALOG) -> pl.Schema:
    """The frame schema of ``topic``'s events: its reader schema's fields as polars types.

    Example:
        >>> polars_schema("fraud-labels")["is_fraud"]
        Boolean
    """
    fields = _fields(decoding_schema_json(catalog.entry(topic).text))
    if fields is None:
        raise TypeError(f"{topic}: batch decoding needs a record of primitive (or nullable primitive) fields")
    return pl.Schema({f.name: _POLARS_TYPES[f.base] for f in fields})


_VARINT_BOUNDS = np.array([1 << (7 * k) for k in range(1, 10)], np.uint64)


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of each int64 as an Avro zig-zag varint."""
    zigzag = ((values << 1) ^ (values >> 63)).view(np.uint64)
    return np.searchsorted(_VARINT_BOUNDS, zigzag, side="right").astype(np.int64) + 1


def _zigzag_varint(value: int) -> bytes:
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while encoded > 0x7F:
        out.append((encoded & 0x7F) | 0x80)
        encoded >>= 7
    out.append(encoded)
    return bytes(out)


def _avro_string(text: str) -> bytes:
    data = text.encode()
    return _zigzag_varint(len(data)) + data


def _size_inputs(fields: Sequence[_Field]) -> list[pl.Expr]:
    """What :func:`encoded_sizes` reads of a frame: lengths of text and bytes, longs, null flags."""
    exprs = []
    for field in fields:
        column = pl.col(field.name)
        if field.base == "string":
            exprs.append(column.str.len_bytes().cast(pl.Int64()).fill_null(0).alias(field.name))
        elif field.base == "bytes":
            exprs.append(column.bin.size().cast(pl.Int64()).fill_null(0).alias(field.name))
        elif field.base in ("long", "int"):
            exprs.append(column.cast(pl.Int64()).fill_null(0).alias(field.name))
        if field.nullable:
            exprs.append(column.is_null().alias(f"{field.name}:null"))
    return exprs


def encoded_sizes(
    frame: pl.DataFrame, fields: Sequence[_Field], inputs: list[pl.Expr] | None = None
) -> np.ndarray:
    """Each row's length in Avro binary encoding under ``fields`` (the writer schema's).

    ``inputs``: :func:`_size_inputs` of ``fields``, when the caller keeps them. One select, then numpy:
    on batches of a few thousand rows polars' cost per call, not the arithmetic, is what counts.
    """
    columns = frame.select(inputs if inputs is not None else _size_inputs(fields))
    total = np.zeros(frame.height, np.int64)
    for field in fields:
        if field.base in _FIXED_SIZES:
            size: np.ndarray | int = _FIXED_SIZES[field.base]
        else:
            values = columns.get_column(field.name).to_numpy()
            size = _varint_sizes(values) + (values if field.base in ("string", "bytes") else 0)
        if field.nullable:  # the union's branch index (one byte), then the value unless it is null
            total += np.where(columns.get_column(f"{field.name}:null").to_numpy(), 1, size + 1)
        else:
            total += size
    return total


_Block = tuple[bytes, list["_Field"], list[pl.Expr]]


@dataclass
class DecodedBatch:
    """The records of a batch that decoded (``frame``, in batch order, with :data:`ROW`) and the errors
    of those that did not (``errors``: batch position -> the error ``AvroSerde.decode`` raises).
    ``one_by_one``: how many records the block read could not take (decoded record by record)."""

    frame: pl.DataFrame
    errors: dict[int, SerdeError]
    one_by_one: int = 0


class BatchDecoder:
    """Decodes batches of one topic's values into polars frames (see the module docstring)."""

    def __init__(self, serde: AvroSerde, catalog: SchemaCatalog = CATALOG) -> None:
        self._serde = serde
        self._catalog = catalog
        self._schemas: dict[str, pl.Schema] = {}
        # (schema id, topic) -> (container header, writer fields, their size inputs) when its values can be
        # read as a block, else None
        self._blocks: dict[tuple[int, str], _Block | None] = {}

    def decode(self, topic: str, values: Sequence[bytes | None]) -> DecodedBatch:
        """Decode ``values`` (Confluent-framed Avro of ``topic``)."""
        schema = self._schemas.get(topic)
        if schema is None:
            schema = self._schemas[topic] = polars_schema(topic, self._catalog)
        errors: dict[int, SerdeError] = {}
        groups: Mapping[int, Sequence[int]]
        sizes: np.ndarray | None = None  # set when the one group is the whole batch
        column = pl.Series(values, dtype=pl.Binary)
        framing = _framing(values[0]) if values else None
        if framing is not None and not column.null_count() and column.bin.starts_with(framing).all():
            groups = {int.from_bytes(framing[1:], "big"): range(len(values))}
            sizes = column.bin.size().cast(pl.Int64).to_numpy()
        else:
            groups = self._groups(topic, values, errors)
        frames: list[pl.DataFrame] = []
        one_by_one = len(errors)
        for schema_id, rows in groups.items():
            frame = self._read_block(topic, schema_id, rows, values, schema, sizes)
            if frame is None:
                frame = self._read_one_by_one(topic, rows, values, schema, errors)
                one_by_one += len(rows)
            frames.append(frame)
        if not frames:
            frame = pl.DataFrame(schema={**dict(schema), ROW: pl.UInt32()})
        elif len(frames) == 1:
            frame = frames[0]
        else:
            frame = pl.concat(frames).sort(ROW)
        return DecodedBatch(frame, errors, one_by_one)

    def _groups(
        self, topic: str, values: Sequence[bytes | None], errors: dict[int, SerdeError]
    ) -> dict[int, list[int]]:
        """The rows of ``values`` by schema id, one value at a time; framing errors go to ``errors``."""
        groups: dict[int, list[int]] = {}
        for row, value in enumerate(values):
            framing = _framing(value)
            if framing is None:
                errors[row] = _serde_error(self._serde, topic, value)
                continue
            schema_id = int.from_bytes(framing[1:], "big")
            rows = groups.get(schema_id)
            if rows is None:
                groups[schema_id] = [row]
            else:
                rows.append(row)
        return groups

    def _block_layout(self, topic: str, schema_id: int) -> _Block | None:
        key = (schema_id, topic)
        if key not in self._blocks:
            layout: _Block | None = None
            try:
                resolve = self._serde.needs_resolution(schema_id, topic)
            except SerdeError:  # unknown id: the one-by-one path reports it per record
                resolve = True
            if not resolve:
                schema_json = decoding_schema_json(self._serde.writer_schema_text(schema_id))
                fields = _fields(schema_json)
                if fields is not None:
                    framed = {**schema_json, "fields": [_FRAMING_FIELD, *schema_json["fields"]]}
                    meta = (
                        _zigzag_varint(2)
                        + _avro_string("avro.schema")
                        + _avro_string(json.dumps(framed))
                        + _avro_string("avro.codec")
                        + _avro_string("null")
                        + _zigzag_varint(0)
                    )
                    layout = (b"Obj\x01" + meta + _SYNC, fields, _size_inputs(fields))
            self._blocks[key] = layout
        return self._blocks[key]

    def _read_block(
        self,
        topic: str,
        schema_id: int,
        rows: Sequence[int],
        values: Sequence[bytes | None],
        schema: pl.Schema,
        sizes: np.ndarray | None,
    ) -> pl.DataFrame | None:
        """The values at ``rows`` (all of one schema id) read as one block, or None if it cannot prove
        every record; ``sizes``: the length of every value, given only when ``rows`` are all of them."""
        layout = self._block_layout(topic, schema_id)
        if layout is None:
            return None
        header, fields, size_inputs = layout
        whole = sizes is not None
        # Rows of one schema id hold no None (a None has no framing, so no schema id).
        data = b"".join(cast("Sequence[bytes]", values if whole else [values[row] for row in rows]))
        container = header + _zigzag_varint(len(rows)) + _zigzag_varint(len(data)) + data + _SYNC
        try:
            frame = pl.read_avro(io.BytesIO(container))
        except (Exception, pl.exceptions.PanicException):  # corrupt blocks raise, or panic in Rust
            return None
        if frame.height != len(rows) or frame.columns != [_HEADER_FIELD, *schema.names()]:
            return None
        if sizes is None:
            sizes = np.fromiter((len(values[row]) for row in rows), np.int64, len(rows))  # type: ignore[arg-type]
        frame = frame.drop(_HEADER_FIELD)
        if not np.array_equal(encoded_sizes(frame, fields, size_inputs) + _HEADER_SIZE, sizes):
            return None
        positions = np.arange(len(values), dtype=np.uint32) if whole else np.asarray(rows, np.uint32)
        return frame.cast(schema).with_columns(pl.Series(ROW, positions))

    def _read_one_by_one(
        self,
        topic: str,
        rows: Sequence[int],
        values: Sequence[bytes | None],
        schema: pl.Schema,
        errors: dict[int, SerdeError],
    ) -> pl.DataFrame:
        records: list[dict[str, Any]] = []
        decoded: list[int] = []
        for row in rows:
            try:
                records.append(self._serde.decode(topic, values[row]))
            except SerdeError as exc:
                errors[row] = exc
                continue
            decoded.append(row)
        frame = pl.from_dicts(records, schema=schema) if records else pl.DataFrame(schema=schema)
        return frame.with_columns(pl.Series(ROW, decoded, pl.UInt32()))


_FRAMING_FIELD = {
    "name": _HEADER_FIELD,
    "type": {"type": "fixed", "name": "highwater_confluent_framing", "size": _HEADER_SIZE},
}
"""The block schema's first field: a value's magic byte and schema id, read as 5 opaque bytes."""


def _framing(value: bytes | None) -> bytes | None:
    """The magic byte and schema id that start ``value``, or None if it is not Confluent-framed."""
    if value is None or len(value) < _HEADER_SIZE or value[0] != MAGIC_BYTE:
        return None
    return value[:_HEADER_SIZE]


def _serde_error(serde: AvroSerde, topic: str, value: bytes | None) -> SerdeError:
    """The error ``AvroSerde.decode`` raises for a value with bad framing."""
    try:
        serde.decode(topic, value)
    except SerdeError as exc:
        return exc
    raise AssertionError("a value with bad framing decoded")  # pragma: no cover
