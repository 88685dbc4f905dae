"""The ``highwater.v1.ScoringService`` servicer: a transaction in, its fraud score and why out.

It turns the request into the Transaction event's fields, lets :class:`streams.scorer.Scorer` score it
(features as of ``event_time`` with the transaction included, the live model version), and answers.
Every rejection names the offending field, with its path in the request:

* ``INVALID_ARGUMENT``: ``transaction: required`` (no transaction); ``transaction.event_time: required``
  or nanos out of range; any value the Transaction event refuses, e.g. ``transaction.amount: must be
  >= 0, got -1.0`` (in a batch ``transactions[3].amount: ...``); ``transactions: ...`` for an empty batch
  or one over :data:`MAX_BATCH`.
* ``FAILED_PRECONDITION``: ``transaction.event_time`` older than the event-time clock minus the online
  retention, or further behind the times the live model scored than its label history reaches; a
  feature the served generation lacks after a promotion (as FeatureService says it).
* ``UNAVAILABLE``: the online store cannot be reached; ``INTERNAL``: anything else. Neither sends a
  traceback; both are logged.

Log records carry the OpenTelemetry RPC attributes (``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``), through the helpers :mod:`serving.service` shares.

Example:
    >>> servicer = ScoringServicer(Scorer.from_settings(settings))                 # doctest: +SKIP
    >>> scoring_pb2_grpc.add_ScoringServiceServicer_to_server(servicer, server)    # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from serving.protos import scoring_pb2, scoring_pb2_grpc
from serving.service import (
    RequestError,
    fill_value,
    refuse,
    rpc_attributes,
    store_failure,
    too_old_details,
)
from serving.timeconv import timestamp_to_ms
from sinks.online import FeatureNotHeldError
from streams.features import REGISTRY, FeatureRegistry
from streams.scorer import (
    EventTimeTooOldError,
    InvalidTransactionError,
    ModelHorizonError,
    Scorer,
    ScoreResult,
)

SERVICE_NAME = "highwater.v1.ScoringService"
MAX_BATCH = 1000
"""Most transactions one ScoreBatch call may carry."""

logger = logging.getLogger(__name__)

R = TypeVar("R")
_OPTIONAL_FIELDS = ("channel", "mcc", "latitude", "longitude")


class ScoringServicer(scoring_pb2_grpc.ScoringServiceServicer):
    """Serves ``Score`` and ``ScoreBatch`` with a :class:`~streams.scorer.Scorer` (shared by all threads)."""

    def __init__(self, scorer: Scorer, registry: FeatureRegistry = REGISTRY) -> None:
        self._scorer = scorer
        self._features = {f.name: f for f in registry.all_features()}

    def Score(
        self, request: scoring_pb2.ScoreRequest, context: grpc.ServicerContext
    ) -> scoring_pb2.ScoreResponse:
        """Score one transaction, or end the call with a status naming the field."""

        def call() -> scoring_pb2.ScoreResponse:
            if not request.HasField("transaction"):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "transaction: required")
            record = transaction_record(request.transaction, "transaction")
            result = self._scored("Score", lambda: [self._scorer.score(record)], ["transaction"])[0]
            return self._response(result)

        return self._run("Score", context, call, scoring_pb2.ScoreResponse)

    def ScoreBatch(
        self, request: scoring_pb2.ScoreBatchRequest, context: grpc.ServicerContext
    ) -> scoring_pb2.ScoreBatchResponse:
        """Score every transaction of the batch (each as Score alone would), or fail the call."""

        def call() -> scoring_pb2.ScoreBatchResponse:
            count = len(request.transactions)
            if not 1 <= count <= MAX_BATCH:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"transactions: expected 1 to {MAX_BATCH} transactions, got {count}",
                )
            paths = [f"transactions[{i}]" for i in range(count)]
            records = [
                transaction_record(t, path) for t, path in zip(request.transactions, paths, strict=True)
            ]
            results = self._scored("ScoreBatch", lambda: self._scorer.score_batch(records), paths)
            return scoring_pb2.ScoreBatchResponse(results=[self._response(r) for r in results])

        return self._run("ScoreBatch", context, call, scoring_pb2.ScoreBatchResponse)

    # --- plumbing -----------------------------------------------------------------------------------
    @staticmethod
    def _run(method: str, context: grpc.ServicerContext, call: Callable[[], R], empty: Callable[[], R]) -> R:
        try:
            return call()
        except RequestError as error:
            refuse(context, method, error, SERVICE_NAME)
        except Exception as error:  # a bug: the caller gets its kind, the log gets the traceback
            logger.error(
                "%s failed",
                method,
                exc_info=error,
                extra=rpc_attributes(method, grpc.StatusCode.INTERNAL, SERVICE_NAME),
            )
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details(f"scoring failed: {type(error).__name__}: {error}")
        return empty()

    def _scored(
        self, method: str, score: Callable[[], list[ScoreResult]], paths: Sequence[str]
    ) -> list[ScoreResult]:
        """Run ``score``, turning the scorer's refusals into statuses naming ``paths[index].field``."""

        def path(index: int | None) -> str:
            return paths[0] if index is None else paths[index]

        try:
            return score()
        except InvalidTransactionError as error:
            prefix = path(error.index)
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "; ".join(f"{prefix}.{field}: {message}" for field, message in error.problems),
            ) from None
        except EventTimeTooOldError as error:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, too_old_details(f"{path(error.index)}.event_time", error)
            ) from None
        except ModelHorizonError as error:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{path(error.index)}.event_time: the live model cannot score this far back: {error}",
            ) from None
        except FeatureNotHeldError as error:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"features: {error.feature!r} is not held by generation {error.generation!r}, the one "
                f"being served: {error.reason}",
            ) from None
        except Exception as error:
            raise store_failure(
                f"read features for {len(paths)} transaction(s)", error, method, SERVICE_NAME
            ) from error

    def _response(self, result: ScoreResult) -> scoring_pb2.ScoreResponse:
        response = scoring_pb2.ScoreResponse(
            transaction_id=result.transaction_id,
            fraud_probability=result.fraud_probability,
            model_version=result.model_version,
        )
        for name, value in result.features.items():
            scored = response.features.add(name=name)
            fill_value(scored.value, self._features[name], value)
        for reason in result.reasons:
            added = response.top_reasons.add(
                feature=reason.feature, contribution=reason.contribution, source=reason.source
            )
            if reason.value is not None:
                added.value = value_text(reason.value)
        return response


def transaction_record(message: scoring_pb2.Transaction, path: str) -> dict[str, Any]:
    """The Transaction event's fields of ``message`` (``event_time`` in epoch ms, unset optionals None).

    Raises :class:`RequestError` naming ``path.event_time`` when it is unset or malformed; every other
    check is the scorer's (the event's own validation).

    Example:
        >>> message = scoring_pb2.Transaction(transaction_id="t1", amount=2.5)
        >>> message.event_time.FromMilliseconds(1_772_409_600_000)
        >>> record = transaction_record(message, "transaction")
        >>> record["event_time"], record["amount"], record["channel"]
        (1772409600000, 2.5, None)
    """
    if not message.HasField("event_time"):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{path}.event_time: required")
    if not 0 <= message.event_time.nanos < 1_000_000_000:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{path}.event_time: nanos must be in [0, 999999999], got {message.event_time.nanos}",
        )
    record: dict[str, Any] = {
        "transaction_id": message.transaction_id,
        "card_id": message.card_id,
        "customer_id": message.customer_id,
        "merchant_id": message.merchant_id,
        "amount": message.amount,
        "currency": message.currency,
        "event_time": timestamp_to_ms(message.event_time),
    }
    for name in _OPTIONAL_FIELDS:
        record[name] = getattr(message, name) if message.HasField(name) else None
    return record


def value_text(value: Any) -> str:
    """A reason's input value as text: floats by ``repr`` (exact round trip), others by ``str``.

    Example:
        >>> value_text(0.1), value_text(3), value_text("5411"), value_text(float("nan"))
        ('0.1', '3', '5411', 'nan')
    """
    return repr(value) if isinstance(value, float) else str(value)
