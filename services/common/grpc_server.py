"""Build and run a gRPC server the same way in every service.

`create_server` wires servicers, health, reflection, interceptors and message limits and binds the port, but does
not start anything, so tests can start it on port 0. `serve` starts it, marks it SERVING, and on SIGTERM/SIGINT
flips health to NOT_SERVING (load balancers stop sending) before a graceful stop.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import Unavailable
from services.common.interceptors import Access, default_interceptors
from services.common.settings import GrpcServerSettings

log = logging.getLogger(__name__)

HEALTH_THREADS = 4


@dataclass(frozen=True)
class Servicer:
    """One service implementation and how to add it (the generated `add_XServicer_to_server`)."""

    add_to_server: Callable[[Any, grpc.Server], None]
    impl: Any
    # Full proto name, e.g. "qanchor.v1.ScenarioRegistry": used for health status and reflection.
    service_name: str


def server_options(settings: GrpcServerSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # Without this a second server silently shares the port (SO_REUSEPORT) instead of failing to bind.
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(settings: GrpcServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files (mutual TLS when a client CA is set); None = plaintext."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        if settings.tls_client_ca_file is not None:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE: mutual TLS is TLS first")
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ValueError("TLS needs both TLS_CERT_FILE and TLS_KEY_FILE (PEM files of this server)")
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file is not None else None
    return grpc.ssl_server_credentials([(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
                                       root_certificates=ca, require_client_auth=ca is not None)


def create_server(
    settings: GrpcServerSettings,
    *servicers: Servicer,
    service: str = "qanchor",
    auth_policy: Mapping[str, Access] | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] | None = None,
    health_servicer: health.HealthServicer | None = None,
) -> tuple[grpc.Server, int]:
    """Build a bound, not yet started server; returns (server, bound port).

    Interceptors default to request id -> metrics -> errors -> auth with the settings' tokens and `auth_policy`.
    Pass `health_servicer` to control readiness yourself; otherwise one is created (all services NOT_SERVING
    until `serve` or `mark_serving`).
    """
    limit = settings.resolved_max_concurrent_rpcs()
    if interceptors is None:
        interceptors = default_interceptors(
            service,
            settings.token.get_secret_value() if settings.token else None,
            settings.admin_token.get_secret_value() if settings.admin_token else None,
            auth_policy,
            max_in_flight=limit,
        )
    # Spare threads beyond the in-flight limit: health checks and reflection always find one.
    workers = settings.max_workers + (HEALTH_THREADS if limit else 0)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{service}-rpc"),
        interceptors=list(interceptors),
        options=server_options(settings),
    )
    for s in servicers:
        s.add_to_server(s.impl, server)
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *(s.service_name for s in servicers)):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    names = [s.service_name for s in servicers] + [health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)

    address = f"{settings.host}:{settings.resolved_grpc_port()}"
    credentials = server_credentials(settings)
    cause: RuntimeError | None = None
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        port, cause = 0, exc
    if not port:
        raise Unavailable(
            f"cannot bind gRPC port {address} (in use?); stop the other process or change "
            "QANCHOR_PORT_BASE / the service's GRPC_PORT setting"
        ) from cause
    server._qanchor_health = health_servicer  # type: ignore[attr-defined]  # read back by serve()/mark_serving()
    return server, port


class InsecureServer(ValueError):
    """A server about to start open to anyone; the message names the setting that fixes it."""


def require_token(settings: GrpcServerSettings) -> None:
    """Secure by default: refuse to serve regular RPCs without a token unless the development flag says so."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    if (settings.token is None or not settings.token.get_secret_value()) and not settings.allow_no_token:
        raise InsecureServer(f"{prefix}TOKEN is not set, so every regular RPC would be open to anyone who reaches "
                             f"the port. Set {prefix}TOKEN (the Helm chart and `qanchor stack up` generate one), or "
                             f"{prefix}ALLOW_NO_TOKEN=true for a development server.")
    if settings.token is None or not settings.token.get_secret_value():
        log.warning("serving without a token: every regular RPC is open (development flag ALLOW_NO_TOKEN)",
                    extra={"event": "insecure_no_token"})


def health_of(server: grpc.Server) -> health.HealthServicer:
    return server._qanchor_health  # type: ignore[attr-defined,no-any-return]


def mark_serving(server: grpc.Server, service_names: Sequence[str]) -> None:
    h = health_of(server)
    for name in ("", *service_names):
        h.set(name, health_pb2.HealthCheckResponse.SERVING)


class ReadinessMonitor:
    """Keeps the named services SERVING only while `check()` holds (e.g. the model server answers).

    The overall status ("") is left alone: it is liveness (restarting this process would not bring a dependency
    back), while a readiness probe asks for a service name and stops routing here while the dependency is down.
    Every change is logged (`event=readiness_changed`). A check that raises counts as not ready.
    """

    def __init__(self, server: grpc.Server, service_names: Sequence[str], check: Callable[[], bool],
                 interval_s: float = 5.0) -> None:
        self.server, self.service_names, self.check, self.interval_s = server, list(service_names), check, interval_s
        self.ready: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> bool:
        try:
            ok = bool(self.check())
            reason = "" if ok else "check_failed"
        except Exception as exc:  # noqa: BLE001 - any failure of the dependency check means "not ready"
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok != self.ready:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in self.service_names:
                health_of(self.server).set(name, status)
            level = logging.INFO if ok else logging.WARNING
            log.log(level, "readiness changed", extra={"event": "readiness_changed", "ready": str(ok).lower(),
                                                       "services": ",".join(self.service_names), "reason": reason})
            self.ready = ok
        return ok

    def start(self) -> ReadinessMonitor:
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)


def serve(
    settings: GrpcServerSettings,
    *servicers: Servicer,
    service: str = "qanchor",
    auth_policy: Mapping[str, Access] | None = None,
    on_stop: Sequence[Callable[[], None]] = (),
    readiness: Callable[[], bool] | None = None,
    readiness_interval_s: float = 5.0,
) -> None:
    """Run until SIGTERM/SIGINT; then NOT_SERVING, graceful stop (settings.grace_seconds), `on_stop` hooks.

    `readiness`: a dependency check; while it fails the servicers' health is NOT_SERVING (ReadinessMonitor).
    Raises InsecureServer when no token is configured (see `require_token`).
    """
    require_token(settings)
    server, port = create_server(settings, *servicers, service=service, auth_policy=auth_policy)
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host)
        log.info("metrics exported", extra={"metrics_port": settings.metrics_port})
    stop = threading.Event()
    received: list[str] = []

    def _on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    mark_serving(server, [s.service_name for s in servicers])
    monitor = None
    if readiness is not None:
        monitor = ReadinessMonitor(server, [s.service_name for s in servicers], readiness,
                                   readiness_interval_s).start()
    log.info("serving", extra={"host": settings.host, "port": port, "services": ",".join(
        s.service_name for s in servicers)})
    try:
        while not stop.wait(1.0):
            pass
    finally:
        if monitor is not None:
            monitor.stop()  # before the shutdown below, so it cannot flip a service back to SERVING
        log.info("stopping", extra={"signal": received[0] if received else "none",
                                    "grace_seconds": settings.grace_seconds})
        # Fail health checks first so balancers drain us, then let in-flight RPCs finish.
        health_of(server).enter_graceful_shutdown()
        server.stop(settings.grace_seconds).wait()
        for hook in on_stop:
            hook()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopped")
