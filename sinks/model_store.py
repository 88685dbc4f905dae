"""The model store: versioned fraud-model checkpoints, which one is live, and the way back.

A *version* is one checkpoint of the learner job: the model artifact (what scoring loads), the job state
needed to resume learning exactly where it stopped (held labels, kept inputs, watermarks), the input
offsets the checkpoint has consumed (``topic -> partition -> next offset``) and the model's metrics at
that point (e.g. progressive ROC AUC). Versions belong to a *lineage*: the live learner writes ``main``,
a replay writes its own, so rebuilding a model from the log never touches the versions being served.

One version is *live*: what the gRPC server and the scoring app score with. ``promote`` makes a version
live and remembers the one it replaced; ``rollback`` goes back to the version live before the current
one (repeatedly, along the promotion history). Versions are immutable once saved.

Implementations (one contract suite, ``tests/test_model_store.py``, runs against each):
:class:`sinks.redis_model_store.RedisModelStore` (shared by every process through the Redis server) and
:class:`sinks.file_model_store.FileModelStore` (a directory, e.g. a mounted volume).
:func:`model_store_from_settings` picks one by ``model.store``.

Example:
    >>> store = model_store_from_settings(settings)                              # doctest: +SKIP
    >>> v = store.save(model_bytes, state_bytes, {"transactions": {0: 120}}, {"auc": 0.97})  # doctest: +SKIP
    >>> store.promote(v.version).version == store.live().version                 # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from highwater.settings import Settings

Offsets = dict[str, dict[int, int]]
"""Input positions a checkpoint has consumed: topic -> partition -> next offset to read."""


class ModelStoreError(ValueError):
    """A request the store cannot carry out (unknown version, nothing to roll back to); the message
    names the version or the reason."""


@dataclass(frozen=True)
class ModelVersion:
    """One saved checkpoint's description (not its bytes: see :meth:`ModelStore.load`)."""

    version: str
    """Store-assigned, increasing in save order across lineages: ``"1"``, ``"2"``, ..."""
    lineage: str
    created_at_ms: int
    offsets: Offsets
    metrics: dict[str, float] = field(default_factory=dict)
    size_bytes: int = 0
    """Size of the model artifact."""


class ModelStore(Protocol):
    """Versioned model checkpoints with a live pointer (see the module docstring)."""

    def save(
        self,
        model: bytes,
        state: bytes | None,
        offsets: Offsets,
        metrics: dict[str, float],
        *,
        lineage: str = "main",
    ) -> ModelVersion:
        """Store a new immutable version and return its description; does not make it live."""
        ...

    def load(self, version: str) -> bytes:
        """The model artifact of ``version``; ModelStoreError if there is no such version."""
        ...

    def load_state(self, version: str) -> bytes | None:
        """The job state saved with ``version`` (None if it had none); ModelStoreError if unknown."""
        ...

    def get(self, version: str) -> ModelVersion:
        """The description of ``version``; ModelStoreError if unknown."""
        ...

    def versions(self, lineage: str | None = None) -> list[ModelVersion]:
        """Every version (of ``lineage`` if given), oldest first."""
        ...

    def latest(self, lineage: str) -> ModelVersion | None:
        """The newest version of ``lineage`` (where its learner job resumes), None if it has none."""
        ...

    def live(self) -> ModelVersion | None:
        """The live version, None before any promotion."""
        ...

    def promote(self, version: str) -> ModelVersion:
        """Make ``version`` live (remembering the one it replaces); ModelStoreError if unknown."""
        ...

    def rollback(self) -> ModelVersion:
        """Make the previously live version live again; ModelStoreError if there is none."""
        ...

    def drop_lineage(self, lineage: str) -> int:
        """Delete every version of ``lineage`` that is not live and was never live; returns how many."""
        ...

    def close(self) -> None:
        """Release connections or handles."""
        ...


def model_store_from_settings(settings: Settings) -> ModelStore:
    """The store ``model.store`` names: ``redis`` (at ``redis_url``) or ``file`` (``model.directory``)."""
    if settings.model.store == "file":
        from sinks.file_model_store import FileModelStore

        return FileModelStore(settings.model.directory)
    from sinks.redis_model_store import RedisModelStore

    return RedisModelStore.from_url(settings.redis_url)
