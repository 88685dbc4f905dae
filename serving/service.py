"""The ``highwater.v1.FeatureService`` servicer: validates a request, reads the online store, answers.

Validation happens before the store is touched and every rejection names the offending field, so a
caller can fix the request from the message alone:

* ``INVALID_ARGUMENT``: unknown entity; unknown feature or a feature of another entity; no ids, more than
  :data:`MAX_ENTITY_IDS` ids, or an empty id; a malformed ``as_of``.
* ``FAILED_PRECONDITION``: ``as_of`` older than the event-time clock minus the store's retention (the
  store no longer holds every event such an answer needs), or no ``as_of`` while the pipeline has not
  applied anything yet (there is no clock to default to), or a feature the generation being served was
  created without (defined after it: it is served once a replay that holds it is promoted).
* ``UNAVAILABLE``: the store cannot be reached (e.g. Redis is down); ``INTERNAL`` for any other store
  failure. Neither leaks a traceback to the caller; both are logged.

Log records carry OpenTelemetry RPC attribute names (``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``) as ``extra`` fields.

Example:
    >>> servicer = FeatureServicer(RedisOnlineStore.from_settings(settings))        # doctest: +SKIP
    >>> features_pb2_grpc.add_FeatureServiceServicer_to_server(servicer, server)    # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
import redis

from serving.protos import features_pb2, features_pb2_grpc
from serving.timeconv import format_duration_ms, format_ms, ms_to_timestamp, timestamp_to_ms
from sinks.online import AsOfTooOldError, FeatureNotHeldError, FeatureValue, NoClockError, OnlineStore
from streams.features import REGISTRY, Feature, FeatureRegistry

SERVICE_NAME = "highwater.v1.FeatureService"
MAX_ENTITY_IDS = 1000

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RequestError(Exception):
    """A request the service refuses, with the gRPC status code and the message the caller sees."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def rpc_attributes(method: str, code: grpc.StatusCode, service: str = SERVICE_NAME) -> dict[str, object]:
    """OpenTelemetry RPC attributes of a call's log record (``extra=``), shared by Highwater's servicers."""
    return {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": method,
        "rpc.grpc.status_code": code.value[0],
    }


def refuse(
    context: grpc.ServicerContext, method: str, error: RequestError, service: str = SERVICE_NAME
) -> None:
    """Log a refused call and end it with ``error``'s status code and message (the caller sees no more)."""
    logger.info("%s refused: %s", method, error.message, extra=rpc_attributes(method, error.code, service))
    # A non-OK code makes gRPC send the status and drop the (empty) response.
    context.set_code(error.code)
    context.set_details(error.message)


def too_old_details(field: str, error: AsOfTooOldError) -> str:
    """The message of a time older than the clock minus the retention, naming ``field``."""
    as_of_ms, clock_ms, retention_ms = error.as_of_ms, error.clock_ms, error.retention_ms
    return (
        f"{field}: {format_ms(as_of_ms)} is older than the event-time clock {format_ms(clock_ms)} "
        f"minus the online retention {format_duration_ms(retention_ms)} ({retention_ms} ms); "
        f"the earliest servable {field} is {format_ms(clock_ms - retention_ms)}"
    )


def store_failure(what: str, error: Exception, method: str, service: str = SERVICE_NAME) -> RequestError:
    """Log a failed online-store call and the refusal it becomes: UNAVAILABLE when the store cannot be
    reached, INTERNAL otherwise (the message names the error, never a traceback)."""
    if isinstance(error, redis.ConnectionError | redis.TimeoutError | ConnectionError | TimeoutError):
        logger.warning(
            "online store unavailable while trying to %s: %s",
            what,
            error,
            extra=rpc_attributes(method, grpc.StatusCode.UNAVAILABLE, service),
        )
        return RequestError(
            grpc.StatusCode.UNAVAILABLE, f"online store unavailable: could not {what}: {error}"
        )
    logger.error(
        "online store failed while trying to %s",
        what,
        exc_info=error,
        extra=rpc_attributes(method, grpc.StatusCode.INTERNAL, service),
    )
    return RequestError(
        grpc.StatusCode.INTERNAL, f"online store failed: could not {what}: {type(error).__name__}: {error}"
    )


class FeatureServicer(features_pb2_grpc.FeatureServiceServicer):
    """Serves ``GetOnlineFeatures`` from an :class:`~sinks.online.OnlineStore`.

    The servicer is stateless apart from the store, so one instance serves all threads of the server.
    """

    def __init__(self, store: OnlineStore, registry: FeatureRegistry = REGISTRY) -> None:
        self._store = store
        self._registry = registry

    def GetOnlineFeatures(
        self, request: features_pb2.GetOnlineFeaturesRequest, context: grpc.ServicerContext
    ) -> features_pb2.GetOnlineFeaturesResponse:
        """Answer one request, or end the call with a status code and a message naming the field."""
        method = "GetOnlineFeatures"
        try:
            return self.get_online_features(request)
        except RequestError as error:
            refuse(context, method, error)
            return features_pb2.GetOnlineFeaturesResponse()

    def get_online_features(
        self, request: features_pb2.GetOnlineFeaturesRequest
    ) -> features_pb2.GetOnlineFeaturesResponse:
        """The response to ``request``; raises :class:`RequestError` for anything the RPC must refuse."""
        entity = self._validate_entity(request.entity)
        entity_ids = self._validate_entity_ids(request.entity_ids)
        features = self._validate_features(entity, request.features)
        requested_as_of = self._validate_as_of(request)
        names = [f.name for f in features]
        answer = self._call_store(
            f"read {len(entity_ids)} {entity} id(s)",
            lambda: self._store.read(entity, entity_ids, names, requested_as_of),
        )
        response = features_pb2.GetOnlineFeaturesResponse(
            as_of=ms_to_timestamp(answer.as_of_ms), feature_names=names
        )
        if answer.clock_ms is not None:
            response.event_time_clock.CopyFrom(ms_to_timestamp(answer.clock_ms))
        for entity_id, row in zip(entity_ids, answer.rows, strict=True):
            result = response.results.add(entity_id=entity_id)
            for feature in features:
                fill_value(result.values.add(), feature, row[feature.name])
        return response

    # --- validation ---------------------------------------------------------------------------------
    def _validate_entity(self, entity: str) -> str:
        known = [e.name for e in self._registry.entities()]
        if entity not in known:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"entity: unknown entity {entity!r}; known: {', '.join(known)}",
            )
        return entity

    def _validate_entity_ids(self, entity_ids: Sequence[str]) -> list[str]:
        count = len(entity_ids)
        if count == 0 or count > MAX_ENTITY_IDS:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"entity_ids: expected 1 to {MAX_ENTITY_IDS} ids, got {count}",
            )
        for index, entity_id in enumerate(entity_ids):
            if not entity_id:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"entity_ids[{index}]: empty entity id")
        return list(entity_ids)

    def _validate_features(self, entity: str, names: Sequence[str]) -> list[Feature]:
        own = self._registry.features_of(entity)
        if not names:
            return own
        features: list[Feature] = []
        for index, name in enumerate(names):
            try:
                feature = self._registry.feature(name)
            except KeyError:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"features[{index}]: unknown feature {name!r}; {entity} has: "
                    + ", ".join(f.name for f in own),
                ) from None
            if feature.entity != entity:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"features[{index}]: feature {name!r} belongs to entity {feature.entity!r}, "
                    f"not {entity!r}",
                )
            features.append(feature)
        return features

    @staticmethod
    def _validate_as_of(request: features_pb2.GetOnlineFeaturesRequest) -> int | None:
        """The requested ``as_of`` in ms, or None for the pipeline's clock (resolved by the store)."""
        if not request.HasField("as_of"):
            return None
        if not 0 <= request.as_of.nanos < 1_000_000_000:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"as_of: nanos must be in [0, 999999999], got {request.as_of.nanos}",
            )
        return timestamp_to_ms(request.as_of)

    # --- store access -------------------------------------------------------------------------------
    def _call_store(self, what: str, call: Callable[[], T]) -> T:
        """Run one store call, turning its refusals into FAILED_PRECONDITION (no clock, as_of too old) and
        its failures into UNAVAILABLE (unreachable) or INTERNAL (other)."""
        try:
            return call()
        except NoClockError:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "as_of: not set, and the pipeline has no event-time clock yet (no event applied); "
                "run the stream job first or pass as_of",
            ) from None
        except AsOfTooOldError as error:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, too_old_details("as_of", error)) from None
        except FeatureNotHeldError as error:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"features: {error.feature!r} is not held by generation {error.generation!r}, the one "
                f"being served: {error.reason}; backfill it with `highwater replay --generation NEW` "
                "and `highwater generations promote NEW`",
            ) from None
        except Exception as error:
            raise store_failure(what, error, "GetOnlineFeatures") from error


def fill_value(target: features_pb2.FeatureValue, feature: Feature, value: FeatureValue) -> None:
    """Set the oneof by the feature's type (left unset for null) and the latest event time if any."""
    if value.value is not None:
        if feature.aggregation.integral:
            target.int64_value = int(value.value)
        else:
            target.double_value = float(value.value)
    if value.latest_event_time_ms is not None:
        target.latest_event_time.FromMilliseconds(value.latest_event_time_ms)
