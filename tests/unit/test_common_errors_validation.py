from __future__ import annotations

import grpc
import pytest

from services.common import errors
from services.common.validation import validate_scenario_name, validate_user_id


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_each_error_carries_its_code_and_round_trips(cls: type[errors.QAnchorError], code: grpc.StatusCode) -> None:
    exc = cls("what to do next")
    assert isinstance(exc, errors.QAnchorError) and exc.code == code and str(exc) == "what to do next"
    assert type(errors.error_for_code(code, "m")) is cls


def test_unknown_code_maps_to_internal() -> None:
    assert type(errors.error_for_code(grpc.StatusCode.DATA_LOSS, "m")) is errors.Internal


@pytest.mark.parametrize("uid", ["42", "user-abc", "u" * 128, "émile@example.com", "a b"])
def test_valid_user_ids(uid: str) -> None:
    assert validate_user_id(uid) == uid


@pytest.mark.parametrize("uid", ["", "u" * 129, "bad\nid", " padded", "tab\t"])
def test_invalid_user_ids(uid: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        validate_user_id(uid)


@pytest.mark.parametrize("name", ["promo", "big_sale-2025", "ab", "a" + "b" * 63])
def test_valid_scenario_names(name: str) -> None:
    assert validate_scenario_name(name) == name


@pytest.mark.parametrize("name", ["", "a", "Promo", "1promo", "promo!", "a" + "b" * 64, "pro mo", "promo\n"])
def test_invalid_scenario_names(name: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="2-64 characters"):
        validate_scenario_name(name)
