"""Demo settings (env prefix DEMO_), built once in `__main__`; command-line flags override them."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings, repo_root


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore", frozen=True, validate_by_name=True,
                                      validate_by_alias=True)

    # MovieLens-1M users replayed through Kafka; ~165 ratings each, so 200 users ~ 33k events (~1 min ingest).
    users: int = Field(default=200, ge=1)
    # Scenarios registered from the scenarios file (its first N) and asked for in GetUserEmbeddings.
    scenarios: int = Field(default=10, ge=2)
    # Scenario queries (training's evaluation scenarios: name + query per entry).
    scenarios_file: Path = Field(default_factory=lambda: repo_root() / "training" / "data" / "scenarios.yaml")
    # Seconds to wait for ingest to write every replayed user's features.
    ingest_timeout_s: float = 600.0
    # Per-RPC deadline for the gateway calls; the first call of a user runs its prefix on CPU (seconds).
    rpc_timeout_s: float = 120.0
    # Skip the stack start (it is already up, e.g. started by a test or by hand).
    skip_stack_up: bool = False
    # Scenario whose soft prompt the demo tunes on the replayed users' labels, then splits 50/50 with its
    # zero-shot version in the A/B config ("" = skip that part). A demographic label: known for every user.
    tune_scenario: str = "gender_female"
    # Optimiser steps of that tuning job (each is suffix-only: the users' prefixes are computed once).
    tune_steps: int = Field(default=20, ge=1)
    # Labelled users it tunes on: the first N replayed users (the prefix of each is computed once, on CPU).
    tune_users: int = Field(default=100, ge=10)
    # Seconds to wait for the tuning job (it shares 2 cores with Triton and ingest).
    tune_timeout_s: float = 900.0
