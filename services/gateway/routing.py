"""A/B routing: which prompt version and model version serve a (user, scenario).

One YAML file (default `config/ab.yaml`, see docs/ab.md) names a salt and, per scenario, arms with weights. A user
is assigned by a salted hash of `salt:scenario:user_id`, at 1/10,000 resolution, so assignment is sticky,
independent across scenarios, and reproducible offline:

    python -m services.gateway.routing assign --config config/ab.yaml --scenario concert_ads alice bob

The hash is GrowthBook's v2 scheme (FNV-1a 32 applied twice: `fnv1a(str(fnv1a(seed + user)))`), with
seed = `salt:scenario:`, so an analyst can reproduce a split with GrowthBook's own SDK.

The watcher polls the file and swaps in a new config only if it parses AND validates against the registry; a bad
file is rejected with a message naming the field, and the last good config keeps serving.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.registry.serving_view import ZERO_SHOT, ScenarioInfo

log = logging.getLogger("qanchor.gateway.routing")

BUCKETS = 10_000  # 1/10,000 resolution, like GrowthBook: weights may have two decimals (12.34 %).
ACTIVE = "active"
DEFAULT_ARM = "default"

PromptRef = Union[int, str]  # a registry version number, "zero-shot", or "active"


# ---- hashing ------------------------------------------------------------------------------------------------
def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def bucket(salt: str, scenario: str, user_id: str) -> int:
    """The user's bucket in [0, 10000) for this scenario. Pure: the whole of the assignment logic."""
    first = fnv1a32(f"{salt}:{scenario}:{user_id}".encode("utf-8"))
    # Hashing twice spreads near-identical ids (user1, user2, ...) evenly; plain FNV-1a clusters them.
    return fnv1a32(str(first).encode("ascii")) % BUCKETS


# ---- config schema ------------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Assignment:
    scenario: str
    arm: str
    prompt_version: PromptRef  # int, "zero-shot" or "active"; the core resolves it against the registry
    model_version: str
    bucket: int


def assign(config: ABConfig, scenario: str, user_id: str) -> Assignment:
    """Deterministic arm for (user, scenario). Unlisted scenarios get the 'default' arm (active prompt)."""
    b = bucket(config.salt, scenario, user_id)
    routing = config.scenarios.get(scenario)
    if routing is None:
        return Assignment(scenario, DEFAULT_ARM, ACTIVE, config.default.model_version, b)
    upper = 0
    for arm in routing.arms:
        upper += round(arm.weight * 100)
        if b < upper:
            return Assignment(scenario, arm.name, arm.prompt_version,
                              arm.model_version or config.default.model_version, b)
    raise AssertionError("unreachable: weights are validated to cover every bucket")


# ---- validation against the registry ----------------------------------------------------------------------
class ConfigError(ValueError):
    """A config that must not be served. The message names the field and says what to fix."""


class ScenarioLookup(Protocol):
    """What routing and the core need from the registry (a cached read)."""

    def get_scenario(self, name: str) -> ScenarioInfo | None: ...


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


# ---- hot reload -------------------------------------------------------------------------------------------
class ReloadListener(Protocol):
    def reload_succeeded(self, generation: int) -> None: ...
    def reload_failed(self) -> None: ...


Validator = Callable[[ABConfig], None]


class ConfigWatcher:
    """Holds the live ABConfig; polls the file and swaps in validated changes.

    Change detection uses the stat of the *resolved* file (a Kubernetes ConfigMap update swaps a `..data`
    symlink, which gives a new inode even when mtime does not move) and then a sha256 of the content, so
    touching a file without changing it is not a reload.
    """

    def __init__(self, path: str | os.PathLike[str], validate: Validator | None = None,
                 listener: ReloadListener | None = None, interval_s: float = 5.0) -> None:
        self.path = Path(path)
        self._validate = validate
        self._listener = listener
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._config: ABConfig | None = None
        self._stat_key: tuple[int, int, int] | None = None
        self._digest: str | None = None
        self._rejected: str | None = None  # digest of the last rejected content
        self.generation = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> ABConfig:
        cfg = self._config
        if cfg is None:
            raise ConfigError(f"no valid A/B config loaded from {self.path}: {self.last_error}")
        return cfg

    def load_initial(self) -> ABConfig:
        """First load: a bad config here is fatal (there is no last good one to keep)."""
        if not self.poll() and self._config is None:
            raise ConfigError(self.last_error or f"could not load {self.path}")
        return self.config

    def poll(self) -> bool:
        """Check the file once; returns True if a new config was swapped in."""
        try:
            st = os.stat(self.path)  # follows symlinks: the ConfigMap's current target
            stat_key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stat_key == self._stat_key and self._rejected is None:
                return False
            data = self.path.read_bytes()
        except OSError as exc:
            return self._fail(f"cannot read {self.path}: {exc}; check the path and the mount")
        digest = hashlib.sha256(data).hexdigest()
        self._stat_key = stat_key
        if digest == self._digest:
            self._rejected = None
            return False
        # A rejected file is re-checked every poll (the registry may have made its version READY since), but
        # logged and counted only once per content.
        quiet = digest == self._rejected
        try:
            cfg = load_config(data.decode("utf-8"), str(self.path))
            if self._validate is not None:
                self._validate(cfg)
        except (ConfigError, UnicodeDecodeError) as exc:
            self._rejected = digest
            return False if quiet else self._fail(str(exc))
        with self._lock:
            self._config, self._digest, self._rejected = cfg, digest, None
            self.generation += 1
            self.last_error = None
        log.info("event=ab_config_loaded path=%s generation=%d sha256=%s scenarios=%d",
                 self.path, self.generation, digest[:12], len(cfg.scenarios))
        if self._listener is not None:
            self._listener.reload_succeeded(self.generation)
        return True

    def _fail(self, message: str) -> bool:
        self.last_error = message
        kept = f"keeping generation {self.generation}" if self._config is not None else "no config loaded"
        log.error("event=ab_config_rejected path=%s %s error=%r", self.path, kept, message)
        if self._listener is not None:
            self._listener.reload_failed()
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ab-config-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.poll()
            except Exception:  # a watcher that dies silently would freeze the config forever
                log.exception("event=ab_config_poll_crashed path=%s", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s + 1)


# ---- CLI ----------------------------------------------------------------------------------------------------
def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.routing",
                                     description="Offline A/B assignment and config checks (no servers needed).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_assign = sub.add_parser("assign", help="print the arm of each user for a scenario")
    p_assign.add_argument("--config", required=True)
    p_assign.add_argument("--scenario", required=True)
    p_assign.add_argument("users", nargs="+")
    p_check = sub.add_parser("check", help="validate a config file's structure (weights, names, versions)")
    p_check.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(Path(args.config).read_text(encoding="utf-8"), args.config)
    except (OSError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "check":
        print(f"ok: salt={cfg.salt!r} scenarios={len(cfg.scenarios)} default_model={cfg.default.model_version}")
        return 0
    print("user_id\tscenario\tarm\tprompt_version\tmodel_version\tbucket")
    for user in args.users:
        a = assign(cfg, args.scenario, user)
        print(f"{user}\t{a.scenario}\t{a.arm}\t{a.prompt_version}\t{a.model_version}\t{a.bucket}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
