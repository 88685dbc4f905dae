"""Storage and rules of Highwater's schema registry: subjects, versions, global ids, compatibility.

The registry speaks the Confluent REST API (see :mod:`schemas.registry_server`); this module holds its
state in one SQLite file and enforces the rules a Confluent registry enforces:

- Schema ids are global: the same schema registered under two subjects has one id. Schemas are
  identified by a *normalized* form: the parsed schema written back as compact JSON with sorted keys.
  That ignores whitespace and key order but, unlike Avro's Parsing Canonical Form, keeps defaults,
  ``doc``, aliases and logical types: two schemas that differ only in a field default resolve data
  differently, so they must not share an id.
- Each subject has versions 1, 2, ...; registering a schema the subject already has returns its
  existing version instead of adding one.
- A new version must be compatible with earlier ones at the subject's level (or the global level,
  default ``BACKWARD``), decided by Apache Avro's reader/writer compatibility checker.
- Deleting is soft by default: deleted versions keep their numbers and their schema ids stay
  resolvable (records in the log still name them). ``permanent=True`` after a soft delete removes
  the version rows; the schema text stays under its id for the same reason.

Only AVRO schemas without references are accepted.

Example:
    >>> store = RegistryStore(Path("/tmp/registry"))  # doctest: +SKIP
    >>> store.register("t-value", '{"type": "string"}').schema_id  # doctest: +SKIP
    1
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import avro.errors
import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

COMPATIBILITY_LEVELS = frozenset(
    {
        "NONE",
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
    }
)
DEFAULT_COMPATIBILITY = "BACKWARD"
SUPPORTED_TYPES = ("AVRO",)
_GLOBAL = ""  # config row of the global compatibility level

VersionRef = int | Literal["latest"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schemas (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schema_type TEXT NOT NULL,
    schema TEXT NOT NULL,
    normalized TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS versions (
    subject TEXT NOT NULL,
    version INTEGER NOT NULL,
    schema_id INTEGER NOT NULL REFERENCES schemas(id),
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, version)
);
CREATE INDEX IF NOT EXISTS versions_by_schema ON versions(schema_id);
CREATE TABLE IF NOT EXISTS config (
    subject TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);
"""


class RegistryError(Exception):
    """A request the registry refuses, with Confluent's HTTP status and error code.

    Example:
        >>> err = RegistryError(404, 40401, "Subject 'x' not found.")
        >>> (err.http_status, err.error_code)
        (404, 40401)
    """

    def __init__(self, http_status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.message = message


def subject_not_found(subject: str) -> RegistryError:
    """Confluent 40401."""
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: VersionRef) -> RegistryError:
    """Confluent 40402."""
    return RegistryError(404, 40402, f"Version {version} not found for subject '{subject}'.")


def schema_not_found(detail: str = "Schema not found") -> RegistryError:
    """Confluent 40403."""
    return RegistryError(404, 40403, detail)


def invalid_schema(detail: str) -> RegistryError:
    """Confluent 42201."""
    return RegistryError(422, 42201, detail)


def invalid_version(version: object) -> RegistryError:
    """Confluent 42202."""
    return RegistryError(
        422,
        42202,
        f"The specified version '{version}' is not a valid version id. "
        'Allowed values are between [1, 2^31-1] and the string "latest"',
    )


def invalid_compatibility(level: object) -> RegistryError:
    """Confluent 42203."""
    return RegistryError(
        422, 42203, f"Invalid compatibility level {level!r}; valid: {', '.join(sorted(COMPATIBILITY_LEVELS))}"
    )


@dataclass(frozen=True)
class StoredVersion:
    """One version of a subject: which schema id it points at, and the schema text."""

    subject: str
    version: int
    schema_id: int
    schema: str
    schema_type: str
    deleted: bool = False

    def to_json(self) -> dict[str, object]:
        """The Confluent JSON shape of a subject version."""
        return {
            "subject": self.subject,
            "version": self.version,
            "id": self.schema_id,
            "schemaType": self.schema_type,
            "schema": self.schema,
        }


@dataclass(frozen=True)
class ParsedSchema:
    """A submitted schema after validation: its original text, parsed form and identity key."""

    text: str
    schema_type: str
    parsed: avro.schema.Schema
    normalized: str


def parse_schema(text: object, schema_type: object = "AVRO", references: object = None) -> ParsedSchema:
    """Validate a submitted schema; RegistryError 42201 when it is not a usable Avro schema.

    Example:
        >>> parse_schema('{"type": "string"}').normalized
        '"string"'
    """
    kind = "AVRO" if schema_type is None else str(schema_type).upper()
    if kind not in SUPPORTED_TYPES:
        raise invalid_schema(f"Schema type {schema_type} is not supported; this registry stores AVRO only")
    if references:
        raise invalid_schema("Schema references are not supported by this registry")
    if not isinstance(text, str) or not text.strip():
        raise invalid_schema("Empty schema: the request needs a non-empty 'schema' string")
    try:
        parsed = avro.schema.parse(text)
    except (avro.errors.AvroException, ValueError, TypeError) as exc:
        raise invalid_schema(f"Invalid schema {text}: {exc}") from exc
    normalized = json.dumps(parsed.to_json(), sort_keys=True, separators=(",", ":"))
    return ParsedSchema(text=text, schema_type=kind, parsed=parsed, normalized=normalized)


def incompatibilities(reader: avro.schema.Schema, writer: avro.schema.Schema, role: str) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader``; empty when it can."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = ", ".join(sorted({i.value for i in result.incompatibilities})) or "incompatible"
    where = ", ".join(sorted(result.locations))
    what = ", ".join(sorted(result.messages))
    return [f"{role}: {kinds} at {where} ({what})"]


class RegistryStore:
    """Subjects, versions and configs in ``<data_dir>/registry.sqlite3``; safe to share across threads."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "registry.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._register_lock = threading.Lock()

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- reading ------------------------------------------------------------------------------------
    def _rows(self, sql: str, *args: object) -> list[Any]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def schema_by_id(self, schema_id: int) -> tuple[str, str]:
        """``(schema text, schema type)`` of a global id; 40403 if unknown."""
        rows = self._rows("SELECT schema, schema_type FROM schemas WHERE id = ?", schema_id)
        if not rows:
            raise schema_not_found(f"Schema {schema_id} not found")
        text, kind = rows[0]
        return str(text), str(kind)

    def versions_of_id(self, schema_id: int, deleted: bool = False) -> list[tuple[str, int]]:
        """``(subject, version)`` pairs that use a schema id; 40403 if the id is unknown."""
        self.schema_by_id(schema_id)
        rows = self._rows(
            "SELECT subject, version FROM versions WHERE schema_id = ? AND (deleted = 0 OR ?) "
            "ORDER BY subject, version",
            schema_id,
            deleted,
        )
        return [(str(s), int(v)) for s, v in rows]

    def subjects(self, deleted: bool = False, deleted_only: bool = False, prefix: str = "") -> list[str]:
        """Subjects with at least one live version (or soft-deleted ones, when asked)."""
        rows = self._rows(
            "SELECT subject, MIN(deleted) FROM versions WHERE subject LIKE ? ESCAPE '\\' GROUP BY subject "
            "ORDER BY subject",
            prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",
        )
        out = []
        for subject, all_deleted in rows:
            is_deleted = bool(all_deleted)
            if (deleted_only and is_deleted) or (not deleted_only and (deleted or not is_deleted)):
                out.append(str(subject))
        return out

    def versions(
        self, subject: str, deleted: bool = False, deleted_only: bool = False
    ) -> list[StoredVersion]:
        """The versions of ``subject``, oldest first; 40401 if it has none to show."""
        rows = self._rows(
            "SELECT v.version, v.schema_id, s.schema, s.schema_type, v.deleted FROM versions v "
            "JOIN schemas s ON s.id = v.schema_id WHERE v.subject = ? ORDER BY v.version",
            subject,
        )
        found = [StoredVersion(subject, int(v), int(i), str(t), str(k), bool(d)) for v, i, t, k, d in rows]
        if deleted_only:
            shown = [v for v in found if v.deleted]
        else:
            shown = [v for v in found if deleted or not v.deleted]
        if not shown and not (deleted_only and found):
            raise subject_not_found(subject)
        return shown

    def version(self, subject: str, ref: VersionRef, deleted: bool = False) -> StoredVersion:
        """One version (a number or ``"latest"``); 40401 / 40402 when missing."""
        versions = self.versions(subject, deleted=deleted)
        if ref == "latest":
            live = [v for v in versions if not v.deleted] or versions
            return live[-1]
        for v in versions:
            if v.version == ref:
                return v
        raise version_not_found(subject, ref)

    def lookup(self, subject: str, schema: ParsedSchema, deleted: bool = False) -> StoredVersion:
        """The version of ``subject`` holding ``schema``; 40401 / 40403 when missing."""
        versions = {v.version: v for v in self.versions(subject, deleted=deleted)}
        rows = self._rows(
            "SELECT v.version FROM versions v JOIN schemas s ON s.id = v.schema_id "
            "WHERE v.subject = ? AND s.normalized = ? ORDER BY v.version DESC",
            subject,
            schema.normalized,
        )
        for (number,) in rows:
            if number in versions:
                return versions[number]
        raise schema_not_found()

    # --- compatibility ------------------------------------------------------------------------------
    def compatibility(self, subject: str | None = None, default_to_global: bool = True) -> str:
        """The level of ``subject`` (or the global one); 40408 if the subject has none and no fallback."""
        if subject is not None:
            rows = self._rows("SELECT compatibility FROM config WHERE subject = ?", subject)
            if rows:
                return str(rows[0][0])
            if not default_to_global:
                raise RegistryError(
                    404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured"
                )
        rows = self._rows("SELECT compatibility FROM config WHERE subject = ?", _GLOBAL)
        return str(rows[0][0]) if rows else DEFAULT_COMPATIBILITY

    def set_compatibility(self, level: object, subject: str | None = None) -> str:
        """Set the level of ``subject`` (or the global one); 42203 for an unknown level."""
        if not isinstance(level, str) or level.upper() not in COMPATIBILITY_LEVELS:
            raise invalid_compatibility(level)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO config(subject, compatibility) VALUES (?, ?) "
                "ON CONFLICT(subject) DO UPDATE SET compatibility = excluded.compatibility",
                (subject if subject is not None else _GLOBAL, level.upper()),
            )
        return level.upper()

    def delete_compatibility(self, subject: str | None = None) -> str:
        """Drop the level of ``subject`` (it falls back to the global one), or reset the global level to
        the default when ``subject`` is None; returns the level it had."""
        previous = self.compatibility(subject, default_to_global=subject is None)
        with self._transaction() as db:
            db.execute("DELETE FROM config WHERE subject = ?", (subject if subject is not None else _GLOBAL,))
        return previous

    def check(self, subject: str, schema: ParsedSchema, against: VersionRef | None = None) -> list[str]:
        """Why ``schema`` may not follow the subject's versions at its level; empty when it may.

        ``against`` None means "as registration would check": the latest live version, or all live
        versions for a ``*_TRANSITIVE`` level. A number or ``"latest"`` checks that one version.
        """
        level = self.compatibility(subject)
        if level == "NONE":
            return []
        try:
            live = [v for v in self.versions(subject) if not v.deleted]
        except RegistryError:
            if against is None:
                return []
            raise
        if against is not None:
            previous = [self.version(subject, against)]
        elif level.endswith("_TRANSITIVE"):
            previous = live
        else:
            previous = live[-1:]
        problems: list[str] = []
        for old in previous:
            old_parsed = parse_schema(old.schema, old.schema_type).parsed
            label = f"version {old.version}"
            if level.startswith(("BACKWARD", "FULL")):
                problems += incompatibilities(schema.parsed, old_parsed, f"new schema cannot read {label}")
            if level.startswith(("FORWARD", "FULL")):
                problems += incompatibilities(old_parsed, schema.parsed, f"{label} cannot read new schema")
        return problems

    # --- writing ------------------------------------------------------------------------------------
    def register(self, subject: str, schema: ParsedSchema) -> StoredVersion:
        """Add ``schema`` as the next version of ``subject``, or return the version that has it.

        Raises RegistryError 409 when the schema breaks the subject's compatibility level.
        """
        # One registration at a time: the lookup, the compatibility check and the insert must see the
        # same state. (``_lock`` guards single statements and is taken inside.)
        with self._register_lock:
            return self._register(subject, schema)

    def _register(self, subject: str, schema: ParsedSchema) -> StoredVersion:
        try:
            return self.lookup(subject, schema)
        except RegistryError as exc:
            if exc.error_code not in (40401, 40403):
                raise
        problems = self.check(subject, schema)
        if problems:
            level = self.compatibility(subject)
            raise RegistryError(
                409,
                409,
                f"Schema being registered is incompatible with an earlier schema for subject '{subject}' "
                f"(compatibility {level}): {'; '.join(problems)}",
            )
        with self._transaction() as db:
            row = db.execute("SELECT id FROM schemas WHERE normalized = ?", (schema.normalized,)).fetchone()
            if row is None:
                cursor = db.execute(
                    "INSERT INTO schemas(schema_type, schema, normalized) VALUES (?, ?, ?)",
                    (schema.schema_type, schema.text, schema.normalized),
                )
                schema_id = int(cursor.lastrowid or 0)
            else:
                schema_id = int(row[0])
            (last,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM versions WHERE subject = ?", (subject,)
            ).fetchone()
            version = int(last) + 1
            db.execute(
                "INSERT INTO versions(subject, version, schema_id) VALUES (?, ?, ?)",
                (subject, version, schema_id),
            )
            (text,) = db.execute("SELECT schema FROM schemas WHERE id = ?", (schema_id,)).fetchone()
        return StoredVersion(subject, version, schema_id, str(text), schema.schema_type)

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        """Soft-delete every version of ``subject`` (or remove them, after a soft delete); the versions."""
        versions = self.versions(subject, deleted=True)
        live = [v.version for v in versions if not v.deleted]
        if permanent:
            if live:
                raise RegistryError(
                    404, 40405, f"Subject '{subject}' was not deleted first before being permanently deleted"
                )
            with self._transaction() as db:
                db.execute("DELETE FROM versions WHERE subject = ?", (subject,))
                db.execute("DELETE FROM config WHERE subject = ?", (subject,))
            return [v.version for v in versions]
        if not live:
            raise RegistryError(
                404, 40404, f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
            )
        with self._transaction() as db:
            db.execute("UPDATE versions SET deleted = 1 WHERE subject = ?", (subject,))
        return live

    def delete_version(self, subject: str, ref: VersionRef, permanent: bool = False) -> int:
        """Soft-delete one version (or remove it, after a soft delete); returns its number."""
        target = self.version(subject, ref, deleted=permanent)
        if permanent and not target.deleted:
            raise RegistryError(
                404,
                40407,
                f"Subject '{subject}' Version {target.version} was not deleted first before being "
                "permanently deleted",
            )
        if not permanent and target.deleted:
            raise RegistryError(
                404,
                40406,
                f"Subject '{subject}' Version {target.version} was soft deleted. "
                "Set permanent=true to delete permanently",
            )
        with self._transaction() as db:
            if permanent:
                db.execute(
                    "DELETE FROM versions WHERE subject = ? AND version = ?", (subject, target.version)
                )
            else:
                db.execute(
                    "UPDATE versions SET deleted = 1 WHERE subject = ? AND version = ?",
                    (subject, target.version),
                )
        return target.version
