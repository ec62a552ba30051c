"""What every qanchor gRPC client shares: the channel (plaintext, TLS, or mutual TLS) and one call with the bearer
token, the request id, a deadline, and errors translated back into `services.common.errors` types.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import grpc

from services.common.errors import QAnchorError, error_for_code

T = TypeVar("T")


@dataclass(frozen=True)
class ClientTls:
    """TLS for a client channel. `ca_file`: the roots to trust (None = the system's); `cert_file` + `key_file`:
    this client's certificate, for servers that require one (mutual TLS)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both its cert file and its key file")
        read = lambda p: Path(p).read_bytes() if p is not None else None  # noqa: E731
        return grpc.ssl_channel_credentials(root_certificates=read(self.ca_file), private_key=read(self.key_file),
                                            certificate_chain=read(self.cert_file))


def open_channel(target: str, tls: ClientTls | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A plaintext channel, or a TLS one when `tls` is given."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, tls.credentials(), options=list(options))


def unary_call(method: Callable[..., T], request: Any, *, token: str | None, timeout_s: float | None,
               request_id: str | None = None, where: str = "") -> T:
    """One unary call; a failure comes back as the QAnchorError of its status. `where` ("registry at host:port")
    is added to UNAVAILABLE and DEADLINE_EXCEEDED messages with what to check."""
    metadata = []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    if request_id:
        metadata.append(("x-request-id", request_id))
    try:
        return method(request, metadata=metadata, timeout=timeout_s)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or str(exc.code())  # type: ignore[attr-defined]
        if where and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            details += f" ({where}: is it running and reachable? retry with backoff)"
        err: QAnchorError = error_for_code(code, details)
        raise err from None
