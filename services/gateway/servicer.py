"""EmbeddingService servicer: protobuf <-> the transport-free core, nothing else.

Errors raised by the core are `QAnchorError`s; the error-mapping interceptor (services.common.interceptors) turns
them into statuses. The caller's deadline becomes the core's time budget.
"""
from __future__ import annotations

from typing import Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.proto.qanchor.v1 import embedding_pb2 as pb
from services.common.proto.qanchor.v1 import embedding_pb2_grpc
from services.gateway.core import EmbeddingItem, GatewayCore, ItemError, ItemResult, Timing

SERVICE_NAME = "qanchor.v1.EmbeddingService"


def embedding_to_proto(item: EmbeddingItem) -> pb.Embedding:
    ts = Timestamp()
    if item.feature_timestamp:
        # Microseconds: float seconds hold ~0.2 us at today's epoch, nanoseconds would invent digits.
        ts.FromMicroseconds(round(item.feature_timestamp * 1_000_000))
    return pb.Embedding(
        user_id=item.user_id, scenario=item.scenario, values=item.values.tolist(), dim=int(item.values.shape[0]),
        model_version=item.model_version, prompt_version=item.prompt_version, arm=item.arm,
        feature_version=item.feature_version, feature_timestamp=ts if item.feature_timestamp else None,
        cache_hit=item.cache_hit, fallback=item.fallback,
    )


def results_to_proto(results: Sequence[ItemResult]) -> list[pb.EmbeddingResult]:
    out = []
    for r in results:
        if isinstance(r, ItemError):
            out.append(pb.EmbeddingResult(error=pb.ItemError(code=r.code.value[0], message=r.message)))
        else:
            out.append(pb.EmbeddingResult(embedding=embedding_to_proto(r)))
    return out


def timing_to_proto(t: Timing) -> pb.Timing:
    return pb.Timing(total_ms=t.total_ms, features_ms=t.features_ms, model_ms=t.model_ms)


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    def GetEmbedding(self, request: pb.GetEmbeddingRequest, context: grpc.ServicerContext) -> pb.GetEmbeddingResponse:
        item, timing = self.core.get_embedding(request.user_id, request.scenario, context.time_remaining())
        return pb.GetEmbeddingResponse(embedding=embedding_to_proto(item), timing=timing_to_proto(timing))

    def BatchGetEmbeddings(self, request: pb.BatchGetEmbeddingsRequest,
                           context: grpc.ServicerContext) -> pb.BatchGetEmbeddingsResponse:
        pairs = [(i.user_id, i.scenario) for i in request.items]
        results, timing = self.core.batch_get(pairs, context.time_remaining())
        return pb.BatchGetEmbeddingsResponse(results=results_to_proto(results), timing=timing_to_proto(timing))

    def GetUserEmbeddings(self, request: pb.GetUserEmbeddingsRequest,
                          context: grpc.ServicerContext) -> pb.GetUserEmbeddingsResponse:
        results, timing = self.core.get_user_embeddings(request.user_id, list(request.scenarios),
                                                        context.time_remaining())
        return pb.GetUserEmbeddingsResponse(results=results_to_proto(results), timing=timing_to_proto(timing))
