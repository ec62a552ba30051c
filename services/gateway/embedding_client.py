"""A small Python client of EmbeddingService (CLI, benchmarks, tests, downstream services).

    with EmbeddingClient("127.0.0.1:19051", token="...") as c:
        emb = c.get_embedding("alice", "concert_ads").embedding
        vec = np.asarray(emb.values, dtype=np.float32)

Server errors come back as `services.common.errors` exceptions (the same classes the server raised), so callers
branch on types (`Unavailable` -> retry) rather than on status codes.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import grpc

from services.common.grpc_client import ClientTls, open_channel, unary_call
from services.common.proto.qanchor.v1 import embedding_pb2 as pb
from services.common.proto.qanchor.v1 import embedding_pb2_grpc as pb_grpc

T = TypeVar("T")


class EmbeddingClient:
    def __init__(self, target: str, *, token: str | None = None, timeout_s: float = 2.0,
                 channel: grpc.Channel | None = None, max_message_bytes: int = 16 * 1024 * 1024,
                 tls: ClientTls | None = None) -> None:
        self.target = target
        self._channel = channel or open_channel(target, tls, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ])
        self._owns_channel = channel is None
        self.stub = pb_grpc.EmbeddingServiceStub(self._channel)
        self.token = token
        # Default per-call deadline; the gateway gives the model whatever is left of it.
        self.timeout_s = timeout_s

    def __enter__(self) -> "EmbeddingClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None,
              request_id: str | None) -> T:
        return unary_call(method, request, token=self.token, request_id=request_id,
                          timeout_s=timeout_s if timeout_s is not None else self.timeout_s)

    def get_embedding(self, user_id: str, scenario: str, *, timeout_s: float | None = None,
                      request_id: str | None = None) -> pb.GetEmbeddingResponse:
        return self._call(self.stub.GetEmbedding, pb.GetEmbeddingRequest(user_id=user_id, scenario=scenario),
                          timeout_s, request_id)

    def get_user_embeddings(self, user_id: str, scenarios: Sequence[str], *, timeout_s: float | None = None,
                            request_id: str | None = None) -> pb.GetUserEmbeddingsResponse:
        """One user, many scenarios: the user's prefix is computed once. Per-scenario errors are in results."""
        return self._call(self.stub.GetUserEmbeddings,
                          pb.GetUserEmbeddingsRequest(user_id=user_id, scenarios=list(scenarios)),
                          timeout_s, request_id)

    def batch_get(self, items: Sequence[tuple[str, str]], *, timeout_s: float | None = None,
                  request_id: str | None = None) -> pb.BatchGetEmbeddingsResponse:
        """(user_id, scenario) pairs; results in the same order, each an embedding or an ItemError."""
        request = pb.BatchGetEmbeddingsRequest(
            items=[pb.GetEmbeddingRequest(user_id=u, scenario=s) for u, s in items])
        return self._call(self.stub.BatchGetEmbeddings, request, timeout_s, request_id)
