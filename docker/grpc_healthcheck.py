#!/usr/bin/env python3
"""Container healthcheck: exit 0 when a gRPC server reports SERVING on the standard health service.

    qanchor-grpc-health ADDRESS [SERVICE] [--timeout SECONDS]

Docker Compose has no native gRPC probe (Kubernetes does: the chart uses `grpc:` probes instead). SERVICE ""
(the default) asks for the whole server, which the services flip to NOT_SERVING before a graceful stop.
"""
from __future__ import annotations

import argparse
import sys


def check(address: str, service: str = "", timeout: float = 2.0) -> tuple[bool, str]:
    """(healthy, reason) for one health Check RPC."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as e:  # unreachable, no health service, unknown service name
            return False, f"rpc_error code={e.code().name} details={e.details()!r}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"status={status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qanchor-grpc-health", description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("service", nargs="?", default="", help="health service name; '' = whole server")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the reply")
    args = parser.parse_args(argv)
    ok, reason = check(args.address, args.service, args.timeout)
    print(f"event=grpc_health address={args.address} service={args.service!r} healthy={ok} {reason}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
