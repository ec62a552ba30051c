"""The A/B routing file (default `config/ab.yaml`, docs/ab.md): its schema, parsing, and validation against the
registry and the known models. What it means for one user is `services.gateway.routing`; how the gateway keeps it
fresh is `services.gateway.ab_watcher`.
"""
from __future__ import annotations

from typing import Iterable, Protocol, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.registry.serving_view import ZERO_SHOT, ScenarioInfo

BUCKETS = 10_000  # 1/10,000 resolution, like GrowthBook: weights may have two decimals (12.34 %).
ACTIVE = "active"
DEFAULT_ARM = "default"

PromptRef = Union[int, str]  # a registry version number, "zero-shot", or "active"


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    weight: float = Field(ge=0, le=100, description="percent of the scenario's users; arms sum to 100")
    prompt_version: PromptRef = Field(description="registry version number, 'zero-shot' or 'active'")
    model_version: str | None = Field(default=None, description="None = the config's default model_version")

    @field_validator("prompt_version")
    @classmethod
    def _prompt_ref(cls, v: PromptRef) -> PromptRef:
        if isinstance(v, str):
            s = v.strip().lower()
            if s in (ZERO_SHOT, ACTIVE):
                return s
            # "v3" and "3" both mean registry version 3: operators copy either form from responses / the CLI.
            digits = s[1:] if s.startswith("v") else s
            if digits.isdigit():
                v = int(digits)
            else:
                raise ValueError(f"must be a version number, 'v<N>', '{ZERO_SHOT}' or '{ACTIVE}', got {v!r}")
        if v < 1:
            raise ValueError(f"registry versions start at 1, got {v}")
        return v

    @field_validator("weight")
    @classmethod
    def _resolution(cls, v: float) -> float:
        if abs(round(v * 100) - v * 100) > 1e-6:
            raise ValueError(f"weights have 1/10,000 resolution (two decimals of a percent), got {v}")
        return v


class ScenarioRouting(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    arms: list[Arm] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_arms(self) -> "ScenarioRouting":
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique, repeated: {dupes}")
        total = sum(round(a.weight * 100) for a in self.arms)
        if total != BUCKETS:
            raise ValueError(f"arm weights must sum to 100, they sum to {total / 100:g}")
        return self


class DefaultRouting(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # "" = whatever the model server serves by default; responses still report the version actually used.
    model_version: str = Field(default="", description="model for unlisted scenarios and arms without one")


class ABConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    salt: str = Field(min_length=1, description="change it to reshuffle every assignment (new experiment)")
    default: DefaultRouting = Field(default_factory=DefaultRouting)
    scenarios: dict[str, ScenarioRouting] = Field(default_factory=dict)


# ---- validation against the registry ----------------------------------------------------------------------
class ConfigError(ValueError):
    """A config that must not be served. The message names the field and says what to fix."""


class ValidationUnavailable(ConfigError):
    """The config could not be checked now (registry or model server unreachable): not proven safe, so it is
    not swapped in; the watcher checks again on its next poll."""


class ScenarioLookup(Protocol):
    """What routing and the core need from the registry (a cached read)."""

    def get_scenario(self, name: str, timeout_s: float | None = None) -> ScenarioInfo | None:
        """The serving view, None for an unknown name; `timeout_s` bounds a registry call (the caller's budget)."""
        ...


def load_config(text: str, source: str = "<string>") -> ABConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc}); fix the syntax and save again") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with keys salt, default, scenarios")
    try:
        return ABConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


def validate_against(config: ABConfig, registry: ScenarioLookup, known_models: Iterable[str]) -> None:
    """Reject arms that point at prompts or models that cannot serve. Raises ConfigError naming the field."""
    models = set(known_models)
    problems: list[str] = []
    if models and config.default.model_version and config.default.model_version not in models:
        problems.append(f"default.model_version: unknown model {config.default.model_version!r} "
                        f"(known: {sorted(models)})")
    for name, routing in config.scenarios.items():
        info = registry.get_scenario(name)
        if info is None:
            problems.append(f"scenarios.{name}: scenario is not registered; register it first "
                            f"(RegisterScenario) or remove it from the config")
            continue
        for i, arm in enumerate(routing.arms):
            where = f"scenarios.{name}.arms[{i}] ({arm.name})"
            model = arm.model_version or config.default.model_version
            if models and model and model not in models:
                problems.append(f"{where}.model_version: unknown model {model!r} (known: {sorted(models)})")
            if arm.prompt_version == ACTIVE:
                continue
            if arm.prompt_version == ZERO_SHOT:
                if info.zero_shot is None:
                    problems.append(f"{where}.prompt_version: scenario has no servable zero-shot version")
                continue
            prompt = info.versions.get(int(arm.prompt_version))
            if prompt is None:
                servable = sorted(p.version for p in info.versions.values() if p.servable)
                problems.append(f"{where}.prompt_version: version {arm.prompt_version} is not a servable version "
                                f"of this scenario (servable: {servable}); only READY or ACTIVE versions can take "
                                "traffic")
            elif not prompt.servable:
                problems.append(f"{where}.prompt_version: version {arm.prompt_version} is {prompt.status}; "
                                f"only READY or ACTIVE versions can take traffic")
            elif prompt.model_version and model and prompt.model_version != model:
                problems.append(f"{where}: prompt v{prompt.version} was tuned for model "
                                f"{prompt.model_version!r}, the arm routes to {model!r}")
    if problems:
        raise ConfigError("; ".join(problems))
