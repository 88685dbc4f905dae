"""The model store on Redis: every process that reaches the server sees the same versions and live pointer.

Keys, under a prefix (default ``hw:models``):

* ``{prefix}:seq``: the last version number handed out (``INCR``, so concurrent savers never collide);
* ``{prefix}:version:{v}:meta`` (JSON, :func:`sinks.model_meta.encode_meta`), ``...:model``, ``...:state``
  (absent when the version has no state): one version, written in one ``MULTI``/``EXEC`` together with
  its index entries, so a saver that dies mid-save leaves nothing but an unused number;
* ``{prefix}:versions`` and ``{prefix}:lineage:{lineage}``: sorted sets of versions scored by number
  (every version, and one lineage's);
* ``{prefix}:live`` (the live version), ``{prefix}:history`` (a list: the versions it replaced, newest
  last) and ``{prefix}:ever-live`` (a set: every version that was ever live, which ``drop_lineage``
  keeps). ``promote`` and ``rollback`` are Lua scripts, so two operators never interleave.

Versions are immutable and a version that was ever live is never deleted, so whatever the live pointer
or the history names can always be loaded.

Example:
    >>> store = RedisModelStore.from_url("redis://127.0.0.1:16379/0")      # doctest: +SKIP
    >>> v = store.save(b"model", b"state", {"transactions": {0: 120}}, {"auc": 0.97})  # doctest: +SKIP
    >>> store.promote(v.version) == store.live()                            # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any

import redis

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

DEFAULT_PREFIX = "hw:models"

# KEYS: live, history, ever-live, the version's meta. ARGV: version.
# Returns {0} for an unknown version, else {1, the version live before ('' if none)}.
_PROMOTE = r"""
if redis.call('EXISTS', KEYS[4]) == 0 then return {0} end
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then return {1, current} end
if current then redis.call('RPUSH', KEYS[2], current) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return {1, current or ''}
"""

# KEYS: live, history. Returns {0} with nothing live, {1, live} when the history is empty, else
# {2, the version now live}.
_ROLLBACK = r"""
local current = redis.call('GET', KEYS[1])
if not current then return {0} end
local previous = redis.call('RPOP', KEYS[2])
if not previous then return {1, current} end
redis.call('SET', KEYS[1], previous)
return {2, previous}
"""


def _bytes(reply: object) -> bytes:
    """A Redis reply as bytes (the client returns bytes; the stubs allow str too)."""
    return reply.encode() if isinstance(reply, str) else bytes(reply)  # type: ignore[call-overload]


def _text(reply: object) -> str:
    """A Redis reply as text."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class RedisModelStore:
    """:class:`sinks.model_store.ModelStore` on Redis; see the module docstring for keys and guarantees.

    ``client`` must return bytes (``decode_responses`` off): artifacts are binary.

    Example:
        >>> store = RedisModelStore(redis.Redis(port=16379), prefix="hw:models")   # doctest: +SKIP
        >>> [v.version for v in store.versions("main")]                            # doctest: +SKIP
        ['1', '2']
    """

    def __init__(
        self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, *, owns_client: bool = False
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisModelStore needs decode_responses=False: artifacts are bytes")
        self._redis = client
        self._owns_client = owns_client
        self.prefix = prefix
        self._seq = f"{prefix}:seq"
        self._all = f"{prefix}:versions"
        self._live = f"{prefix}:live"
        self._history = f"{prefix}:history"
        self._ever_live = f"{prefix}:ever-live"
        self._promote = client.register_script(_PROMOTE)
        self._rollback = client.register_script(_ROLLBACK)

    @classmethod
    def from_url(cls, url: str, prefix: str = DEFAULT_PREFIX) -> RedisModelStore:
        """A store on the Redis at ``url`` with a client of its own (closed by :meth:`close`).

        Example:
            >>> RedisModelStore.from_url("redis://127.0.0.1:16379/0", prefix="hw:models")  # doctest: +SKIP
        """
        # Timeouts turn a hung Redis into a fast error instead of a stalled learner or server.
        client = redis.Redis.from_url(url, socket_timeout=30.0, socket_connect_timeout=5.0)
        return cls(client, prefix, owns_client=True)

    def _key(self, version: str, part: str) -> str:
        return f"{self.prefix}:version:{version}:{part}"

    def _lineage(self, lineage: str) -> str:
        return f"{self.prefix}:lineage:{lineage}"

    def save(
        self,
        model: bytes,
        state: bytes | None,
        offsets: Offsets,
        metrics: dict[str, float],
        *,
        lineage: str = "main",
    ) -> ModelVersion:
        """Store a new immutable version (not live); its number comes from ``INCR``, its keys land at once."""
        check_lineage(lineage)
        number = int(self._redis.incr(self._seq))
        version = ModelVersion(
            version=str(number),
            lineage=lineage,
            created_at_ms=now_ms(),
            offsets=normalize_offsets(offsets),
            metrics={str(k): float(v) for k, v in metrics.items()},
            size_bytes=len(model),
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._key(version.version, "model"), bytes(model))
        if state is not None:
            pipe.set(self._key(version.version, "state"), bytes(state))
        pipe.set(self._key(version.version, "meta"), encode_meta(version))
        pipe.zadd(self._lineage(lineage), {version.version: number})
        pipe.zadd(self._all, {version.version: number})
        pipe.execute()
        return version

    def load(self, version: str) -> bytes:
        """The model artifact of ``version``; ModelStoreError if there is no such version."""
        check_version(version)
        data = self._redis.get(self._key(version, "model"))
        if data is None:
            raise unknown_version(version)
        return _bytes(data)

    def load_state(self, version: str) -> bytes | None:
        """The job state saved with ``version`` (None if it had none); ModelStoreError if unknown."""
        check_version(version)
        meta, state = self._redis.mget([self._key(version, "meta"), self._key(version, "state")])
        if meta is None:
            raise unknown_version(version)
        return None if state is None else _bytes(state)

    def get(self, version: str) -> ModelVersion:
        """The description of ``version``; ModelStoreError if unknown."""
        check_version(version)
        meta = self._redis.get(self._key(version, "meta"))
        if meta is None:
            raise unknown_version(version)
        return decode_meta(meta)

    def _describe(self, versions: list[Any]) -> list[ModelVersion]:
        """The descriptions of ``versions`` in order, without those dropped since they were listed."""
        if not versions:
            return []
        metas = self._redis.mget([self._key(_text(v), "meta") for v in versions])
        return [decode_meta(meta) for meta in metas if meta is not None]

    def versions(self, lineage: str | None = None) -> list[ModelVersion]:
        """Every version (of ``lineage`` if given), oldest first."""
        index = self._all if lineage is None else self._lineage(lineage)
        return self._describe(self._redis.zrange(index, 0, -1))

    def latest(self, lineage: str) -> ModelVersion | None:
        """The newest version of ``lineage`` (where its learner job resumes), None if it has none."""
        found = self._describe(self._redis.zrange(self._lineage(lineage), -1, -1))
        return found[0] if found else None

    def live(self) -> ModelVersion | None:
        """The live version, None before any promotion."""
        version = self._redis.get(self._live)
        return None if version is None else self.get(_text(version))

    def promote(self, version: str) -> ModelVersion:
        """Make ``version`` live, pushing the one it replaces onto the history (atomic, one script).

        Promoting the version that is already live changes nothing.
        """
        check_version(version)
        keys = [self._live, self._history, self._ever_live, self._key(version, "meta")]
        if self._promote(keys=keys, args=[version])[0] == 0:
            raise unknown_version(version)
        return self.get(version)

    def rollback(self) -> ModelVersion:
        """Make the version live before the current one live again (atomic, one script)."""
        result = self._rollback(keys=[self._live, self._history])
        if result[0] == 0:
            raise ModelStoreError("nothing to roll back: no model version was ever promoted")
        if result[0] == 1:
            raise ModelStoreError(
                f"nothing to roll back to: version {result[1].decode()} is the first version promoted"
            )
        return self.get(result[1].decode())

    def drop_lineage(self, lineage: str) -> int:
        """Delete every version of ``lineage`` that is not live and was never live; returns how many.

        Runs as WATCH/MULTI on the lineage's index and the ever-live set: a save into the lineage or a
        promotion between reading and deleting makes it start over, so it never deletes a version that
        became live meanwhile.
        """
        index = self._lineage(lineage)
        with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(index, self._ever_live)
                    members = pipe.zrange(index, 0, -1)
                    kept = pipe.smembers(self._ever_live)
                    doomed = [_text(m) for m in members if m not in kept]
                    pipe.multi()
                    if doomed:
                        parts = ("meta", "model", "state")
                        pipe.delete(*(self._key(v, part) for v in doomed for part in parts))
                        pipe.zrem(index, *doomed)
                        pipe.zrem(self._all, *doomed)
                    pipe.execute()
                    return len(doomed)
                except redis.WatchError:
                    continue

    def close(self) -> None:
        """Close the client if this store created it (:meth:`from_url`); a caller's client stays open."""
        if self._owns_client:
            self._redis.close()
