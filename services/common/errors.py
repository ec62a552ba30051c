"""Exceptions that carry their gRPC status code; `ErrorMappingInterceptor` turns them into statuses.

Raise these from transport-free code (repositories, cores) so the same code works behind gRPC, the CLI or a
Celery task. Messages are shown to callers: say what was wrong and what to do next.
"""
from __future__ import annotations

import grpc


class QAnchorError(Exception):
    """Base class; `code` is the gRPC status the caller sees."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(QAnchorError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(QAnchorError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(QAnchorError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(QAnchorError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(QAnchorError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(QAnchorError):
    """A dependency (database, model server, feature store, broker) is unreachable; callers may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(QAnchorError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(QAnchorError):
    """The system is not in a state for this call (e.g. promoting a RETIRED version, no broker configured)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(QAnchorError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(QAnchorError):
    """A concurrent change won; retrying the whole operation is safe."""

    code = grpc.StatusCode.ABORTED


class Internal(QAnchorError):
    code = grpc.StatusCode.INTERNAL


def error_for_code(code: grpc.StatusCode, message: str) -> QAnchorError:
    """The QAnchorError subclass for a status code (used by clients to re-raise server errors typed)."""
    for cls in (InvalidArgument, NotFound, AlreadyExists, Unauthenticated, PermissionDenied, Unavailable,
                DeadlineExceeded, FailedPrecondition, ResourceExhausted, Aborted):
        if cls.code == code:
            return cls(message)
    return Internal(message)
