"""Python client of ``highwater.v1.ScoringService``: transactions as dicts in, plain Python values out.

A transaction is a mapping with the Transaction event's fields (``schemas/avro/transaction.avsc``);
``event_time`` may be epoch milliseconds or a datetime (naive = UTC). Feature values come back as ``int``,
``float`` or ``None`` (null, distinct from 0), as :class:`serving.client.FeatureClient` gives them. gRPC
errors are raised as :class:`ScoringServiceError` with the status code and the server's message.

Example:
    >>> with ScoringClient("127.0.0.1:50051") as client:                                 # doctest: +SKIP
    ...     score = client.score({"transaction_id": "t1", "card_id": "c1", "customer_id": "u1",
    ...                           "merchant_id": "m1", "amount": 12.5, "currency": "EUR",
    ...                           "event_time": 1772409600000})
    >>> score.fraud_probability, score.model_version, score.features["card_txn_count_1h"]  # doctest: +SKIP
    (0.0132, '3', 4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.client import FeatureScalar, FeatureServiceError, GrpcClient, feature_value
from serving.protos import scoring_pb2, scoring_pb2_grpc
from serving.timeconv import ms_to_timestamp, to_ms

_REQUIRED = ("transaction_id", "card_id", "customer_id", "merchant_id", "amount", "currency")
_OPTIONAL = ("channel", "mcc", "latitude", "longitude")


class ScoringServiceError(FeatureServiceError):
    """A failed scoring call: ``code`` (gRPC status) and ``details`` (the server's message, naming the field).

    ``str(error)`` reads ``INVALID_ARGUMENT: transaction.amount: must be >= 0, got -1.0``.
    """


@dataclass(frozen=True)
class ScoredReason:
    """One input's push towards fraud (log-odds); ``value`` is its source's value as text, None if null."""

    feature: str
    value: str | None
    contribution: float
    source: str


@dataclass(frozen=True)
class Score:
    """A transaction's score: probability, model version, the features it read and the top reasons."""

    transaction_id: str
    fraud_probability: float
    model_version: str
    features: dict[str, FeatureScalar]
    """Card then merchant features as of the transaction's event_time, the transaction included."""
    latest_event_times_ms: dict[str, int | None]
    reasons: tuple[ScoredReason, ...]


class ScoringClient(GrpcClient):
    """A reusable connection to a ScoringService at ``target`` (``host:port``); see the module docstring
    and :class:`serving.client.GrpcClient`."""

    error_class = ScoringServiceError

    def __init__(self, target: str, *, timeout_s: float = 10.0, wait_for_ready: bool = False) -> None:
        super().__init__(target, timeout_s=timeout_s, wait_for_ready=wait_for_ready)
        self._stub = scoring_pb2_grpc.ScoringServiceStub(self.channel)

    def score(self, transaction: Mapping[str, Any]) -> Score:
        """Score one transaction; raises :class:`ScoringServiceError`."""
        request = scoring_pb2.ScoreRequest(transaction=transaction_message(transaction))
        return score_of(self._call(self._stub.Score, request))

    def score_batch(self, transactions: Sequence[Mapping[str, Any]]) -> list[Score]:
        """Score up to 1000 transactions in one call (each as :meth:`score` alone); in request order."""
        request = scoring_pb2.ScoreBatchRequest(transactions=[transaction_message(t) for t in transactions])
        return [score_of(result) for result in self._call(self._stub.ScoreBatch, request).results]


def transaction_message(transaction: Mapping[str, Any]) -> scoring_pb2.Transaction:
    """The ``Transaction`` message of a dict of event fields (absent or None fields left unset).

    Example:
        >>> message = transaction_message({"transaction_id": "t1", "amount": 2.5, "event_time": 1000,
        ...                                "channel": None})
        >>> message.amount, message.event_time.seconds, message.HasField("channel")
        (2.5, 1, False)
    """
    message = scoring_pb2.Transaction()
    for name in (*_REQUIRED, *_OPTIONAL):
        value = transaction.get(name)
        if value is not None:
            setattr(message, name, value)
    event_time = transaction.get("event_time")
    if event_time is not None:
        message.event_time.CopyFrom(ms_to_timestamp(to_ms(event_time)))
    return message


def score_of(response: scoring_pb2.ScoreResponse) -> Score:
    """The plain-values view of a ``ScoreResponse``.

    Example:
        >>> score_of(scoring_pb2.ScoreResponse(transaction_id="t1", model_version="2")).model_version
        '2'
    """
    features: dict[str, FeatureScalar] = {}
    times: dict[str, int | None] = {}
    for feature in response.features:
        features[feature.name], times[feature.name] = feature_value(feature.value)
    reasons = tuple(
        ScoredReason(r.feature, r.value if r.HasField("value") else None, r.contribution, r.source)
        for r in response.top_reasons
    )
    return Score(
        response.transaction_id, response.fraud_probability, response.model_version, features, times, reasons
    )
