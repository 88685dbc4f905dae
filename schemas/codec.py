"""Parsed fastavro schemas, cached per topic and per registry schema id.

Highwater keeps timestamps as epoch milliseconds end to end, so the decoding copies of schemas drop
the ``timestamp-millis`` logical type (fastavro would otherwise build a ``datetime`` per field); the
registered schema text keeps it.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import fastavro

from schemas.catalog import CATALOG


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("logicalType") in ("timestamp-millis", "timestamp-micros"):
            return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
        return {k: _strip_logical_types(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def parse_for_decoding(schema_text: str) -> Any:
    """A fastavro parsed schema from Avro JSON text, with timestamps left as longs."""
    return fastavro.parse_schema(decoding_schema_json(schema_text))


@cache
def decode_schema(topic: str) -> Any:
    """The parsed reader schema of ``topic`` (the project's current ``.avsc``)."""
    return parse_for_decoding(CATALOG.entry(topic).text)


def decoding_schema_json(schema_text: str) -> Any:
    """The Avro JSON of ``schema_text`` as the decoders read it: timestamps left as longs."""
    return _strip_logical_types(json.loads(schema_text))
