"""Python client of ``highwater.v1.FeatureService``: plain Python values in, plain Python values out.

:class:`FeatureClient` keeps one channel for its lifetime (use it as a context manager, or call
:meth:`FeatureClient.close`). Values come back as ``int`` (counts, distinct counts), ``float`` (everything
else) or ``None`` for null, which stays distinct from 0. gRPC errors are raised as
:class:`FeatureServiceError` carrying the status code and the server's message.

Example:
    >>> with FeatureClient("127.0.0.1:50051") as client:                                 # doctest: +SKIP
    ...     got = client.get_online_features("card", ["card-1"], ["card_txn_count_1h"])
    >>> got.to_dict()                                                                    # doctest: +SKIP
    {'card-1': {'card_txn_count_1h': 3}}
    >>> got.as_of, got.event_time_clock                                                  # doctest: +SKIP
    (datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc), ...)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar

import grpc

from serving.protos import features_pb2, features_pb2_grpc
from serving.timeconv import ms_to_datetime, ms_to_timestamp, timestamp_to_ms, to_ms

T = TypeVar("T")

FeatureScalar = int | float | None


class FeatureServiceError(Exception):
    """A failed call: ``code`` is the gRPC status code, ``details`` the server's message.

    ``str(error)`` reads ``INVALID_ARGUMENT: entity: unknown entity 'x'; known: card, merchant``.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class EntityFeatureValues:
    """One entity id's features: value (None = null) and latest contributing event time (ms) by name."""

    entity_id: str
    values: dict[str, FeatureScalar]
    latest_event_times_ms: dict[str, int | None]

    def latest_event_time(self, feature: str) -> datetime | None:
        """The newest event that contributed to ``feature``, as a UTC datetime (None if none did)."""
        ms = self.latest_event_times_ms[feature]
        return None if ms is None else ms_to_datetime(ms)


@dataclass(frozen=True)
class OnlineFeatures:
    """A ``GetOnlineFeatures`` answer: the times it was computed at and one row per requested id."""

    entity: str
    as_of_ms: int
    event_time_clock_ms: int | None
    feature_names: tuple[str, ...]
    rows: tuple[EntityFeatureValues, ...]

    @property
    def as_of(self) -> datetime:
        """The as-of time used (the request's, or the pipeline clock), UTC."""
        return ms_to_datetime(self.as_of_ms)

    @property
    def event_time_clock(self) -> datetime | None:
        """The pipeline's event-time clock when served, UTC (None before anything was applied)."""
        return None if self.event_time_clock_ms is None else ms_to_datetime(self.event_time_clock_ms)

    def to_dict(self) -> dict[str, dict[str, FeatureScalar]]:
        """``{entity_id: {feature: value}}`` (a repeated id keeps its last row; they are equal anyway)."""
        return {row.entity_id: dict(row.values) for row in self.rows}

    def value(self, entity_id: str, feature: str) -> FeatureScalar:
        """One value; KeyError if the id or the feature was not in the answer."""
        for row in self.rows:
            if row.entity_id == entity_id:
                return row.values[feature]
        raise KeyError(entity_id)


class GrpcClient:
    """A reusable insecure channel to ``target`` (``host:port``) and how its calls are made.

    ``timeout_s`` bounds each call; ``wait_for_ready`` makes a call wait (within that timeout) for a
    server that is still starting instead of failing at once with UNAVAILABLE. Subclasses make the
    service's stub from :attr:`channel` and call it through :meth:`_call`.
    """

    error_class: type[FeatureServiceError] = FeatureServiceError

    def __init__(self, target: str, *, timeout_s: float = 10.0, wait_for_ready: bool = False) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.wait_for_ready = wait_for_ready
        self.channel = grpc.insecure_channel(target)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards."""
        self.channel.close()

    def _call(self, method: Callable[..., T], request: object) -> T:
        """``method(request)`` with the client's timeout; a gRPC error becomes :attr:`error_class`."""
        try:
            return method(request, timeout=self.timeout_s, wait_for_ready=self.wait_for_ready)
        except grpc.RpcError as error:
            raise self.error_class(error.code(), error.details() or "") from None


class FeatureClient(GrpcClient):
    """A reusable connection to a FeatureService at ``target`` (``host:port``); see :class:`GrpcClient`."""

    def __init__(self, target: str, *, timeout_s: float = 10.0, wait_for_ready: bool = False) -> None:
        super().__init__(target, timeout_s=timeout_s, wait_for_ready=wait_for_ready)
        self._stub = features_pb2_grpc.FeatureServiceStub(self.channel)

    def get_online_features(
        self,
        entity: str,
        entity_ids: Sequence[str],
        features: Sequence[str] = (),
        as_of: datetime | int | None = None,
    ) -> OnlineFeatures:
        """Features of ``entity_ids`` as of ``as_of`` (a datetime, naive = UTC, or epoch ms; None = clock).

        ``features`` empty means all of the entity's features. Raises :class:`FeatureServiceError`.
        """
        if isinstance(entity_ids, str):
            raise TypeError("entity_ids must be a sequence of ids, not one string")
        request = features_pb2.GetOnlineFeaturesRequest(
            entity=entity, entity_ids=list(entity_ids), features=list(features)
        )
        if as_of is not None:
            request.as_of.CopyFrom(ms_to_timestamp(to_ms(as_of)))
        return _from_response(entity, self._call(self._stub.GetOnlineFeatures, request))


def feature_value(value: features_pb2.FeatureValue) -> tuple[FeatureScalar, int | None]:
    """A ``FeatureValue`` message as (value: int, float or None for null; latest event time in ms or None).

    Example:
        >>> feature_value(features_pb2.FeatureValue(int64_value=3))
        (3, None)
    """
    kind = value.WhichOneof("value")
    scalar = (
        value.int64_value if kind == "int64_value" else value.double_value if kind == "double_value" else None
    )
    latest = timestamp_to_ms(value.latest_event_time) if value.HasField("latest_event_time") else None
    return scalar, latest


def _from_response(entity: str, response: features_pb2.GetOnlineFeaturesResponse) -> OnlineFeatures:
    names = tuple(response.feature_names)
    rows = []
    for result in response.results:
        values: dict[str, FeatureScalar] = {}
        times: dict[str, int | None] = {}
        for name, value in zip(names, result.values, strict=True):
            values[name], times[name] = feature_value(value)
        rows.append(EntityFeatureValues(result.entity_id, values, times))
    clock = timestamp_to_ms(response.event_time_clock) if response.HasField("event_time_clock") else None
    return OnlineFeatures(entity, timestamp_to_ms(response.as_of), clock, names, tuple(rows))
