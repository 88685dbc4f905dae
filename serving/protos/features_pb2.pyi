import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("entity", "entity_ids", "features", "as_of")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    entity: str
    entity_ids: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[str]
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, entity: _Optional[str] = ..., entity_ids: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[str]] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("as_of", "event_time_clock", "feature_names", "results")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_CLOCK_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    as_of: _timestamp_pb2.Timestamp
    event_time_clock: _timestamp_pb2.Timestamp
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    results: _containers.RepeatedCompositeFieldContainer[EntityFeatures]
    def __init__(self, as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_time_clock: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feature_names: _Optional[_Iterable[str]] = ..., results: _Optional[_Iterable[_Union[EntityFeatures, _Mapping]]] = ...) -> None: ...

class EntityFeatures(_message.Message):
    __slots__ = ("entity_id", "values")
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    entity_id: str
    values: _containers.RepeatedCompositeFieldContainer[FeatureValue]
    def __init__(self, entity_id: _Optional[str] = ..., values: _Optional[_Iterable[_Union[FeatureValue, _Mapping]]] = ...) -> None: ...

class FeatureValue(_message.Message):
    __slots__ = ("int64_value", "double_value", "latest_event_time")
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    LATEST_EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    int64_value: int
    double_value: float
    latest_event_time: _timestamp_pb2.Timestamp
    def __init__(self, int64_value: _Optional[int] = ..., double_value: _Optional[float] = ..., latest_event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
