"""The model store in a directory (a local disk or a mounted volume shared by the processes that use it).

Layout::

    {directory}/
        .lock                  # flock'ed around version allocation and every pointer change
        sequence               # the last version number handed out
        pointer.json           # {"live": "3", "history": ["1", "2"], "ever_live": ["1", "2", "3"]}
        versions/
            1/meta.json        # the description (sinks.model_meta.encode_meta)
            1/model.bin
            1/state.bin        # only when the version has state
            .partial-4-<hex>/  # a save in progress (or one that crashed): never listed

Every file is written to a temporary name, flushed to disk and ``os.replace``d into place; a version is
written whole into a ``.partial-*`` directory and renamed to its number in one step, so a crash
mid-save leaves nothing a reader lists or loads (only a ``.partial-*`` directory to delete by hand).
A dropped version is renamed away first and deleted after, for the same reason. Readers take no lock:
they only ever see complete files.

Example:
    >>> store = FileModelStore("/var/lib/highwater/models")                     # doctest: +SKIP
    >>> v = store.save(b"model", None, {"transactions": {0: 120}}, {"auc": 0.97})  # doctest: +SKIP
    >>> store.promote(v.version).version                                        # doctest: +SKIP
    '1'
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sinks.model_meta import (
    check_lineage,
    check_version,
    decode_meta,
    encode_meta,
    normalize_offsets,
    now_ms,
    unknown_version,
)
from sinks.model_store import ModelStoreError, ModelVersion, Offsets


@dataclass
class _Pointer:
    """The content of ``pointer.json``: live version, the versions it replaced (newest last), and
    every version ever live (which ``drop_lineage`` keeps)."""

    live: str | None = None
    history: list[str] = field(default_factory=list)
    ever_live: list[str] = field(default_factory=list)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old content or the new, never a part."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileModelStore:
    """:class:`sinks.model_store.ModelStore` in a directory; see the module docstring for the layout.

    Safe for several threads and processes on one machine (``flock``). On a network file system it is
    as safe as that system's ``flock`` and ``rename``.

    Example:
        >>> store = FileModelStore(tmp_path)                                   # doctest: +SKIP
        >>> store.latest("main") is None                                       # doctest: +SKIP
        True
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._versions = self.directory / "versions"
        self._versions.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.directory / ".lock"
        self._sequence = self.directory / "sequence"
        self._pointer_path = self.directory / "pointer.json"
        # Versions are immutable, so a description once read stays true (until the version is dropped,
        # which the directory listing tells).
        self._meta_cache: dict[str, ModelVersion] = {}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across threads and processes: each call opens its own descriptor to lock."""
        with open(self._lock_path, "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def _dir(self, version: str) -> Path:
        check_version(version)
        return self._versions / version

    def _read_pointer(self) -> _Pointer:
        try:
            doc = json.loads(self._pointer_path.read_bytes())
        except FileNotFoundError:
            return _Pointer()
        return _Pointer(doc["live"], list(doc["history"]), list(doc["ever_live"]))

    def _write_pointer(self, pointer: _Pointer) -> None:
        doc = {"live": pointer.live, "history": pointer.history, "ever_live": pointer.ever_live}
        _write_atomic(self._pointer_path, json.dumps(doc).encode())

    def _allocate(self) -> int:
        with self._locked():
            try:
                last = int(self._sequence.read_text())
            except FileNotFoundError:
                last = 0
            _write_atomic(self._sequence, str(last + 1).encode())
            return last + 1

    def save(
        self,
        model: bytes,
        state: bytes | None,
        offsets: Offsets,
        metrics: dict[str, float],
        *,
        lineage: str = "main",
    ) -> ModelVersion:
        """Store a new immutable version (not live): written whole, then renamed to its number."""
        check_lineage(lineage)
        number = self._allocate()
        version = ModelVersion(
            version=str(number),
            lineage=lineage,
            created_at_ms=now_ms(),
            offsets=normalize_offsets(offsets),
            metrics={str(k): float(v) for k, v in metrics.items()},
            size_bytes=len(model),
        )
        partial = self._versions / f".partial-{number}-{uuid.uuid4().hex}"
        partial.mkdir()
        try:
            files = {"model.bin": bytes(model), "meta.json": encode_meta(version).encode()}
            if state is not None:
                files["state.bin"] = bytes(state)
            for name, data in files.items():
                with open(partial / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(partial)
            os.rename(partial, self._versions / version.version)
            _fsync_dir(self._versions)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self._meta_cache[version.version] = version
        return version

    def _read(self, version: str, name: str) -> bytes:
        try:
            return (self._dir(version) / name).read_bytes()
        except FileNotFoundError:
            raise unknown_version(version) from None

    def load(self, version: str) -> bytes:
        """The model artifact of ``version``; ModelStoreError if there is no such version."""
        return self._read(version, "model.bin")

    def load_state(self, version: str) -> bytes | None:
        """The job state saved with ``version`` (None if it had none); ModelStoreError if unknown."""
        directory = self._dir(version)
        try:
            return (directory / "state.bin").read_bytes()
        except FileNotFoundError:
            if not directory.is_dir():
                raise unknown_version(version) from None
            return None

    def get(self, version: str) -> ModelVersion:
        """The description of ``version``; ModelStoreError if unknown."""
        if not self._dir(version).is_dir():
            raise unknown_version(version)
        cached = self._meta_cache.get(version)
        if cached is None:
            cached = self._meta_cache[version] = decode_meta(self._read(version, "meta.json"))
        return cached

    def versions(self, lineage: str | None = None) -> list[ModelVersion]:
        """Every version (of ``lineage`` if given), oldest first."""
        found = []
        for number in sorted(int(p.name) for p in self._versions.iterdir() if p.name.isdigit()):
            try:
                version = self.get(str(number))
            except ModelStoreError:  # dropped since the listing
                continue
            if lineage is None or version.lineage == lineage:
                found.append(version)
        return found

    def latest(self, lineage: str) -> ModelVersion | None:
        """The newest version of ``lineage`` (where its learner job resumes), None if it has none."""
        found = self.versions(lineage)
        return found[-1] if found else None

    def live(self) -> ModelVersion | None:
        """The live version, None before any promotion."""
        live = self._read_pointer().live
        return None if live is None else self.get(live)

    def promote(self, version: str) -> ModelVersion:
        """Make ``version`` live, remembering the one it replaces; a no-op if it is live already."""
        with self._locked():
            described = self.get(version)
            pointer = self._read_pointer()
            if pointer.live != version:
                if pointer.live is not None:
                    pointer.history.append(pointer.live)
                pointer.live = version
                if version not in pointer.ever_live:
                    pointer.ever_live.append(version)
                self._write_pointer(pointer)
        return described

    def rollback(self) -> ModelVersion:
        """Make the version live before the current one live again."""
        with self._locked():
            pointer = self._read_pointer()
            if pointer.live is None:
                raise ModelStoreError("nothing to roll back: no model version was ever promoted")
            if not pointer.history:
                raise ModelStoreError(
                    f"nothing to roll back to: version {pointer.live} is the first version promoted"
                )
            pointer.live = pointer.history.pop()
            self._write_pointer(pointer)
            return self.get(pointer.live)

    def drop_lineage(self, lineage: str) -> int:
        """Delete every version of ``lineage`` that is not live and was never live; returns how many."""
        with self._locked():
            kept = set(self._read_pointer().ever_live)
            doomed = [v.version for v in self.versions(lineage) if v.version not in kept]
            for version in doomed:
                # Renamed away first: readers see the version whole or not at all.
                gone = self._versions / f".dropped-{version}-{uuid.uuid4().hex}"
                os.rename(self._versions / version, gone)
                shutil.rmtree(gone)
                self._meta_cache.pop(version, None)
        return len(doomed)

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""
