import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from serving.protos import features_pb2 as _features_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Transaction(_message.Message):
    __slots__ = ("transaction_id", "card_id", "customer_id", "merchant_id", "amount", "currency", "event_time", "channel", "mcc", "latitude", "longitude")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MCC_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    card_id: str
    customer_id: str
    merchant_id: str
    amount: float
    currency: str
    event_time: _timestamp_pb2.Timestamp
    channel: str
    mcc: str
    latitude: float
    longitude: float
    def __init__(self, transaction_id: _Optional[str] = ..., card_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., amount: _Optional[float] = ..., currency: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., channel: _Optional[str] = ..., mcc: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("transaction",)
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("transaction_id", "fraud_probability", "model_version", "features", "top_reasons")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAUD_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TOP_REASONS_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    fraud_probability: float
    model_version: str
    features: _containers.RepeatedCompositeFieldContainer[ScoredFeature]
    top_reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    def __init__(self, transaction_id: _Optional[str] = ..., fraud_probability: _Optional[float] = ..., model_version: _Optional[str] = ..., features: _Optional[_Iterable[_Union[ScoredFeature, _Mapping]]] = ..., top_reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ...) -> None: ...

class ScoredFeature(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: _features_pb2.FeatureValue
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[_features_pb2.FeatureValue, _Mapping]] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("feature", "value", "contribution", "source")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: str
    contribution: float
    source: str
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[str] = ..., contribution: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResponse, _Mapping]]] = ...) -> None: ...
