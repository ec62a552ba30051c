import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetEmbeddingRequest(_message.Message):
    __slots__ = ("user_id", "scenario")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    scenario: str
    def __init__(self, user_id: _Optional[str] = ..., scenario: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("user_id", "scenario", "values", "dim", "model_version", "prompt_version", "arm", "feature_version", "feature_timestamp", "cache_hit", "fallback")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    scenario: str
    values: _containers.RepeatedScalarFieldContainer[float]
    dim: int
    model_version: str
    prompt_version: str
    arm: str
    feature_version: int
    feature_timestamp: _timestamp_pb2.Timestamp
    cache_hit: bool
    fallback: bool
    def __init__(self, user_id: _Optional[str] = ..., scenario: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., dim: _Optional[int] = ..., model_version: _Optional[str] = ..., prompt_version: _Optional[str] = ..., arm: _Optional[str] = ..., feature_version: _Optional[int] = ..., feature_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., fallback: _Optional[bool] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("total_ms", "features_ms", "model_ms")
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MS_FIELD_NUMBER: _ClassVar[int]
    total_ms: float
    features_ms: float
    model_ms: float
    def __init__(self, total_ms: _Optional[float] = ..., features_ms: _Optional[float] = ..., model_ms: _Optional[float] = ...) -> None: ...

class GetEmbeddingResponse(_message.Message):
    __slots__ = ("embedding", "timing")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    embedding: Embedding
    timing: Timing
    def __init__(self, embedding: _Optional[_Union[Embedding, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class EmbeddingResult(_message.Message):
    __slots__ = ("embedding", "error")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    embedding: Embedding
    error: ItemError
    def __init__(self, embedding: _Optional[_Union[Embedding, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class BatchGetEmbeddingsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[GetEmbeddingRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[GetEmbeddingRequest, _Mapping]]] = ...) -> None: ...

class BatchGetEmbeddingsResponse(_message.Message):
    __slots__ = ("results", "timing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EmbeddingResult]
    timing: Timing
    def __init__(self, results: _Optional[_Iterable[_Union[EmbeddingResult, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class GetUserEmbeddingsRequest(_message.Message):
    __slots__ = ("user_id", "scenarios")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCENARIOS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    scenarios: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., scenarios: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUserEmbeddingsResponse(_message.Message):
    __slots__ = ("results", "timing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EmbeddingResult]
    timing: Timing
    def __init__(self, results: _Optional[_Iterable[_Union[EmbeddingResult, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...
