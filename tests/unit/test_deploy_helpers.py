"""Shared helpers of the deployment tests (test_deploy_*.py): compose interpolation, settings env names."""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}; $$ is a literal $.
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: object, env: dict[str, str] | None = None) -> object:
    """Resolve compose variables recursively the way `docker compose config` does (defaults, unset -> "")."""
    env = env or {}
    if isinstance(value, str):
        resolved = _VAR.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value.replace("$$", "\0"))
        return resolved.replace("\0", "$")
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def env_dict(environment: object) -> dict[str, str]:
    """Compose `environment` (mapping or KEY=VALUE list) as a dict."""
    if isinstance(environment, dict):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    out: dict[str, str] = {}
    for item in environment or []:
        key, _, val = str(item).partition("=")
        out[key] = val
    return out


# Env prefix -> module holding that service's pydantic-settings class.
SETTINGS_MODULES = {
    "GATEWAY_": "services.gateway.settings",
    "REGISTRY_": "services.registry.settings",
    "INGEST_": "services.ingest.settings",
    "EVENTLOG_": "services.eventlog.settings",
    "TUNING_": "services.tuning.settings",
    "QANCHOR_KUBE_": "services.kube.settings",
}


def settings_env_names(prefix: str) -> set[str] | None:
    """Upper-case env names a service's settings class reads, or None when that module is not importable here.

    Walks the class's fields: `<prefix><FIELD>` plus any validation aliases (e.g. QANCHOR_STATE_DIR).
    """
    try:
        module = importlib.import_module(SETTINGS_MODULES[prefix])
    except ImportError:
        return None
    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, BaseSettings) and cls.model_config.get("env_prefix") == prefix:
            names: set[str] = set()
            for name, field in cls.model_fields.items():
                names.add(f"{prefix}{name}".upper())
                alias = field.validation_alias
                if isinstance(alias, AliasChoices):
                    names.update(str(a).upper() for a in alias.choices if isinstance(a, str))
                elif isinstance(alias, str):
                    names.add(alias.upper())
            return names
    return None


# --- the helpers' own tests -----------------------------------------------------------------------------------

def test_interpolate_defaults_env_and_escapes() -> None:
    assert interpolate("${A:-x}-${B-y}-${C}") == "x-y-"
    assert interpolate("${A:-x}", {"A": "set"}) == "set"
    assert interpolate(["$$HOSTNAME", {"k": "${P:-19051}:19051"}]) == ["$HOSTNAME", {"k": "19051:19051"}]


def test_env_dict_accepts_both_compose_forms() -> None:
    assert env_dict({"A": 1, "B": None}) == {"A": "1", "B": ""}
    assert env_dict(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}


def test_settings_env_names_reads_the_real_class() -> None:
    names = settings_env_names("REGISTRY_")
    if names is None:
        import pytest
        pytest.skip("services.registry.settings is not importable in this environment")
    # Own fields, inherited gRPC fields and the stack-wide alias.
    assert {"REGISTRY_DATABASE_URL", "REGISTRY_HOST", "REGISTRY_TOKEN", "QANCHOR_STATE_DIR"} <= names
