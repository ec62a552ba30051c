"""Validators shared by services: one definition of a valid user id and scenario name."""
from __future__ import annotations

import re

from services.common.errors import InvalidArgument

USER_ID_MAX_LEN = 128
# Scenario names appear in URLs, metric labels and file names: keep them boring (registry.proto).
SCENARIO_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{1,63}")


def user_id_problem(user_id: str) -> str | None:
    """What is wrong with a user id (1..128 printable characters, any string, not only integers), or None.
    The gateway and ingest apply the same rule, so an id ingest accepts is one the gateway serves."""
    if not user_id:
        return "user_id is empty; pass the caller's user identifier (1..128 printable characters)"
    if len(user_id) > USER_ID_MAX_LEN:
        return f"user_id is {len(user_id)} characters long; the maximum is {USER_ID_MAX_LEN}"
    if not user_id.isprintable() or user_id != user_id.strip():
        return (f"user_id {user_id!r:.160} has control characters or surrounding whitespace; send the id exactly "
                "as stored")
    return None


def validate_user_id(user_id: str) -> str:
    """1..128 printable characters, any string (not only integers); returned unchanged."""
    problem = user_id_problem(user_id)
    if problem:
        raise InvalidArgument(problem)
    return user_id


def validate_scenario_name(name: str) -> str:
    """[a-z][a-z0-9_-]{1,63}: lowercase letter first, 2..64 characters."""
    if not SCENARIO_NAME_RE.fullmatch(name or ""):
        raise InvalidArgument(
            f"scenario name {name!r} is invalid; use 2-64 characters of a-z, 0-9, '_' or '-', starting with a letter"
        )
    return name
