"""Routes each test file to the Python environment that can import it.

qanchor has two environments (see docs/contracts.md): the services env (Feast, numpy 2) and the model env
(torch, numpy < 2). `scripts/test.sh` runs pytest once in each; unit-test files matching MODEL_ENV_GLOBS run in the
model env only, every other unit-test file in the services env only. Integration tests always run in the services env
(they reach the model through Triton, or through the model env's interpreter in a subprocess).
"""
from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path

import pytest

MODEL_ENV_GLOBS = (
    "test_model_*",
    "test_losses*",
    "test_tune*",
    "test_artifacts*",
    "test_backbone*",
    "test_config*",
    "test_data_*",
    "test_evaluate*",
    "test_pretrain*",
    "test_export*",
    "test_triton_model*",
    "test_text_encoder*",
    "test_tuning_*",
    "test_heldout*",
    "test_precision*",
    "test_quality_bench*",  # sklearn and torch: they skipped in the services env and ran nowhere
    "test_event_world*",  # its pretraining-on-the-log test needs torch; the rest needs pyarrow (both envs have it)
)

IN_MODEL_ENV = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("feast") is None


def _is_model_env_test(path: Path) -> bool:
    return any(fnmatch.fnmatch(path.name, g) for g in MODEL_ENV_GLOBS)


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if collection_path.is_file() and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        if "integration" in collection_path.parts:
            return IN_MODEL_ENV
        return _is_model_env_test(collection_path) != IN_MODEL_ENV
    return None


@pytest.fixture(scope="session")
def ml100k_world():
    """The MovieLens-100K user world, built once per test session (model env; read it, never mutate it)."""
    from training.data.world import WorldConfig, build_world

    return build_world(WorldConfig(dataset="ml-100k"))
