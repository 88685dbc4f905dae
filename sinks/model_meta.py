"""What both model stores share: a version's metadata as JSON, and checks of names and versions.

Both :class:`sinks.redis_model_store.RedisModelStore` and :class:`sinks.file_model_store.FileModelStore`
keep a version's description (:class:`sinks.model_store.ModelVersion`) as the same JSON document, so a
version reads back identically from either. JSON object keys are strings, so partitions are written as
strings and come back as ints.

Example:
    >>> v = ModelVersion("3", "main", 1_700_000_000_000, {"transactions": {0: 120}}, {"auc": 0.97}, 42)
    >>> decode_meta(encode_meta(v)) == v
    True
    >>> check_version("x")
    Traceback (most recent call last):
    ...
    sinks.model_store.ModelStoreError: unknown model version 'x'
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping

from highwater.settings import GENERATION_PATTERN
from sinks.model_store import ModelStoreError, ModelVersion, Offsets

_VERSION = re.compile(r"^[1-9][0-9]*$")


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch (a version's ``created_at_ms``)."""
    return time.time_ns() // 1_000_000


def unknown_version(version: str) -> ModelStoreError:
    """The error for a version the store does not hold."""
    return ModelStoreError(f"unknown model version {version!r}")


def check_version(version: str) -> int:
    """``version`` as an int; the unknown-version error when it cannot be a store-assigned version.

    Store-assigned versions are positive integers written in decimal without leading zeros, so anything
    else (``"01"``, ``"v3"``, ``"../x"``) is unknown without looking, and never reaches a key or a path.
    """
    if not isinstance(version, str) or not _VERSION.match(version):
        raise unknown_version(str(version))
    return int(version)


def check_lineage(lineage: str) -> str:
    """``lineage`` if it is a valid lineage name (as a generation name: it becomes part of keys)."""
    if not isinstance(lineage, str) or not re.match(GENERATION_PATTERN, lineage):
        raise ModelStoreError(f"invalid lineage name {lineage!r}: use lowercase letters, digits, _ and -")
    return lineage


def normalize_offsets(offsets: Mapping[str, Mapping[int, int]]) -> Offsets:
    """A plain ``topic -> partition -> offset`` copy with int partitions and offsets."""
    return {str(topic): {int(p): int(o) for p, o in parts.items()} for topic, parts in offsets.items()}


def encode_meta(version: ModelVersion) -> str:
    """``version`` as a JSON document (what the stores keep next to the bytes)."""
    return json.dumps(
        {
            "version": version.version,
            "lineage": version.lineage,
            "created_at_ms": version.created_at_ms,
            "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in version.offsets.items()},
            "metrics": version.metrics,
            "size_bytes": version.size_bytes,
        },
        sort_keys=True,
    )


def decode_meta(data: str | bytes) -> ModelVersion:
    """The :class:`ModelVersion` a document from :func:`encode_meta` describes."""
    doc = json.loads(data)
    return ModelVersion(
        version=str(doc["version"]),
        lineage=str(doc["lineage"]),
        created_at_ms=int(doc["created_at_ms"]),
        offsets=normalize_offsets(doc["offsets"]),
        metrics={str(k): float(v) for k, v in doc["metrics"].items()},
        size_bytes=int(doc["size_bytes"]),
    )
