"""Server interceptors: request id, bearer-token auth, error mapping, Prometheus metrics, load shedding.

Order matters (first is outermost): request id -> metrics -> error mapping -> load shedding -> auth.
`default_interceptors` builds that chain. Each interceptor wraps the method handler's behaviour in a context manager,
so unary and streaming RPCs are handled the same way.
"""
from __future__ import annotations

import contextlib
import enum
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from services.common.errors import PermissionDenied, QAnchorError, ResourceExhausted, Unauthenticated
from services.common.logging import request_id_var

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
_Around = Callable[[grpc.ServicerContext], contextlib.AbstractContextManager[None]]


def _wrap_handler(handler: grpc.RpcMethodHandler, around: _Around) -> grpc.RpcMethodHandler:
    """Same handler, with every invocation running inside `around(context)`."""
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            with around(context):
                return inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            with around(context):
                return inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with around(context):
                yield from inner_us(request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)
    inner_ss = handler.stream_stream

    def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        with around(context):
            yield from inner_ss(requests, context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k.lower(): v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


class _AroundInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = _metadata(handler_call_details)
        return _wrap_handler(handler, lambda ctx: self.around(method, metadata, ctx))

    def around(
        self, method: str, metadata: Mapping[str, str], context: grpc.ServicerContext
    ) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError


class RequestIdInterceptor(_AroundInterceptor):
    """Takes `x-request-id` from the caller (or makes one), exposes it to logs, returns it in trailing metadata."""

    @contextlib.contextmanager
    def around(self, method: str, metadata: Mapping[str, str], context: grpc.ServicerContext) -> Iterator[None]:
        # Cap the caller's id: it ends up in every log line of this request.
        request_id = (metadata.get(REQUEST_ID_KEY) or "")[:128] or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        try:
            yield
        finally:
            request_id_var.reset(token)


class Access(enum.Enum):
    PUBLIC = "public"  # no token (health, reflection)
    TOKEN = "token"    # the regular token, if one is configured (the admin token also works)
    ADMIN = "admin"    # the admin token, always; refused if none is configured


# Infrastructure services every orchestrator probes without credentials.
_PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AuthInterceptor(_AroundInterceptor):
    """Bearer-token auth from `authorization: Bearer <token>` metadata with a per-method policy.

    `policy` maps full method names ("/qanchor.v1.ScenarioRegistry/RegisterScenario") to an Access level;
    unlisted methods default to `default`.
    """

    def __init__(
        self, token: str | None, admin_token: str | None,
        policy: Mapping[str, Access] | None = None, default: Access = Access.TOKEN,
    ) -> None:
        self.token = token or None
        self.admin_token = admin_token or None
        self.policy = dict(policy or {})
        self.default = default

    def access_for(self, method: str) -> Access:
        if method.startswith(_PUBLIC_PREFIXES):
            return Access.PUBLIC
        return self.policy.get(method, self.default)

    @staticmethod
    def _matches(presented: str | None, expected: str | None) -> bool:
        return presented is not None and expected is not None and hmac.compare_digest(
            presented.encode(), expected.encode()
        )

    def check(self, method: str, metadata: Mapping[str, str]) -> None:
        access = self.access_for(method)
        if access is Access.PUBLIC or (access is Access.TOKEN and self.token is None):
            return
        header = metadata.get("authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else None
        if access is Access.ADMIN and self.admin_token is None:
            raise PermissionDenied(
                f"{method} is an admin RPC and this server has no admin token configured; "
                "set the service's ADMIN_TOKEN setting (e.g. REGISTRY_ADMIN_TOKEN) and retry with it"
            )
        if presented is None:
            raise Unauthenticated(f"{method} needs 'authorization: Bearer <token>' metadata")
        if self._matches(presented, self.admin_token):
            return
        if access is Access.TOKEN and self._matches(presented, self.token):
            return
        if access is Access.ADMIN and self._matches(presented, self.token):
            raise PermissionDenied(f"{method} is an admin RPC; use the admin token, not the regular one")
        raise Unauthenticated(f"the bearer token sent to {method} is not valid; check the configured token")

    @contextlib.contextmanager
    def around(self, method: str, metadata: Mapping[str, str], context: grpc.ServicerContext) -> Iterator[None]:
        self.check(method, metadata)
        yield


def _aborted(context: grpc.ServicerContext) -> bool:
    # context.abort() raises after recording a non-OK code; such an exception is already a proper status.
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK


class ErrorMappingInterceptor(_AroundInterceptor):
    """QAnchorError -> its status; anything else -> INTERNAL with the request id, logged once with traceback."""

    @contextlib.contextmanager
    def around(self, method: str, metadata: Mapping[str, str], context: grpc.ServicerContext) -> Iterator[None]:
        try:
            yield
        except QAnchorError as exc:
            if exc.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                log.error("rpc failed", exc_info=True, extra={"method": method, "code": exc.code.name})
            context.abort(exc.code, exc.message)
        except Exception:
            if _aborted(context):
                raise
            request_id = request_id_var.get() or "none"
            log.error("unhandled error in rpc", exc_info=True, extra={"method": method})
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "qanchor_grpc_requests", "gRPC requests handled, by final status code.",
            ["service", "method", "code"], registry=registry,
        )
        self.latency = Histogram(
            "qanchor_grpc_request_seconds", "gRPC handler latency in seconds.", ["service", "method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )


# One set of collectors per registry: a process may run several servers (tests) but a registry refuses
# duplicate metric names.
_METRICS: dict[int, _Metrics] = {}


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    key = id(registry)
    if key not in _METRICS:
        _METRICS[key] = _Metrics(registry)
    return _METRICS[key]


class MetricsInterceptor(_AroundInterceptor):
    """`qanchor_grpc_requests_total{service,method,code}` and `qanchor_grpc_request_seconds{service,method}`."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.metrics = _metrics_for(registry if registry is not None else REGISTRY)

    @contextlib.contextmanager
    def around(self, method: str, metadata: Mapping[str, str], context: grpc.ServicerContext) -> Iterator[None]:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
            code = context.code() or grpc.StatusCode.OK
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            short = method.rsplit("/", 1)[-1]
            self.metrics.latency.labels(self.service, short).observe(time.perf_counter() - start)
            self.metrics.requests.labels(self.service, short, code.name).inc()


class LoadSheddingInterceptor(_AroundInterceptor):
    """At most `limit` calls in flight; one more is refused at once with RESOURCE_EXHAUSTED (retryable) instead of
    queueing behind the others (a hung dependency would otherwise hold every caller, then every thread). Health
    and reflection are never refused: probes must keep answering under load."""

    EXEMPT = ("/grpc.health.v1.", "/grpc.reflection.")

    def __init__(self, limit: int, setting: str = "MAX_CONCURRENT_RPCS") -> None:
        self.limit, self.setting = limit, setting
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None

    @contextlib.contextmanager
    def around(self, method: str, metadata: Mapping[str, str], context: grpc.ServicerContext) -> Iterator[None]:
        if self._slots is None or method.startswith(self.EXEMPT):
            yield
            return
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(f"the server has {self.limit} calls in flight, its limit ({self.setting}); "
                                    "retry with backoff")
        try:
            yield
        finally:
            self._slots.release()


def default_interceptors(
    service: str, token: str | None, admin_token: str | None, policy: Mapping[str, Access] | None = None,
    registry: CollectorRegistry | None = None, max_in_flight: int = 0,
) -> list[grpc.ServerInterceptor]:
    return [
        RequestIdInterceptor(),
        MetricsInterceptor(service, registry),
        ErrorMappingInterceptor(),
        LoadSheddingInterceptor(max_in_flight, f"{service.upper()}_MAX_CONCURRENT_RPCS"),
        AuthInterceptor(token, admin_token, policy),
    ]
