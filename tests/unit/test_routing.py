"""A/B routing: hashing, weights, validation against the registry, hot reload."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from services.gateway.ab_config import ABConfig, ConfigError, load_config, validate_against
from services.gateway.ab_watcher import ConfigWatcher
from services.gateway.routing import assign, bucket, fnv1a32, routed_model_versions
from services.registry.serving_view import PromptInfo, ScenarioInfo

REPO = Path(__file__).resolve().parents[2]

AB_YAML = """
salt: s1
default: {model_version: m1}
scenarios:
  concert_ads:
    arms:
      - {name: control, weight: 50, prompt_version: zero-shot}
      - {name: tuned, weight: 30, prompt_version: v2}
      - {name: newmodel, weight: 20, prompt_version: active, model_version: m2}
"""


class FakeRegistry:
    def __init__(self, scenarios: dict[str, ScenarioInfo]) -> None:
        self.scenarios = scenarios

    def get_scenario(self, name: str, timeout_s: float | None = None) -> ScenarioInfo | None:
        return self.scenarios.get(name)


def registry(v2_status: str = "READY", v2_model: str = "m1") -> FakeRegistry:
    return FakeRegistry({"concert_ads": ScenarioInfo("concert_ads", "Will this user click concert ads?", 1, {
        1: PromptInfo(1, "zero-shot", "ACTIVE"),
        2: PromptInfo(2, "tuned", v2_status, v2_model, "file:///p/v2.safetensors", "ab" * 32),
    })})


def test_fnv1a32_reference_vectors() -> None:
    # Published FNV-1a 32-bit test vectors (Fowler/Noll/Vo).
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_bucket_is_deterministic_and_salted() -> None:
    assert bucket("s1", "concert_ads", "alice") == bucket("s1", "concert_ads", "alice")
    users = [f"user{i}" for i in range(200)]
    same = sum(bucket("s1", "a", u) == bucket("s2", "a", u) for u in users)
    across_scenarios = sum(bucket("s1", "a", u) == bucket("s1", "b", u) for u in users)
    assert same < 5 and across_scenarios < 5  # salt and scenario both reshuffle
    assert all(0 <= bucket("s1", "a", u) < 10_000 for u in users)


def test_split_matches_weights_on_sequential_ids() -> None:
    cfg = load_config(AB_YAML)
    counts = Counter(assign(cfg, "concert_ads", f"user{i}").arm for i in range(20_000))
    # Binomial sd at n=20000, p=0.5 is ~0.35 %; 1.5 % is > 4 sd.
    assert abs(counts["control"] / 20_000 - 0.50) < 0.015
    assert abs(counts["tuned"] / 20_000 - 0.30) < 0.015
    assert abs(counts["newmodel"] / 20_000 - 0.20) < 0.015


def test_assignment_fields_and_default_arm() -> None:
    cfg = load_config(AB_YAML)
    arms = {assign(cfg, "concert_ads", f"u{i}") for i in range(300)}
    by_name = {a.arm: a for a in arms}
    assert by_name["tuned"].prompt_version == 2 and by_name["tuned"].model_version == "m1"
    assert by_name["newmodel"].model_version == "m2" and by_name["newmodel"].prompt_version == "active"
    assert by_name["control"].prompt_version == "zero-shot"
    other = assign(cfg, "not_listed", "alice")
    assert (other.arm, other.prompt_version, other.model_version) == ("default", "active", "m1")


def test_routed_model_versions_are_the_default_plus_each_listed_scenarios_arm() -> None:
    cfg = load_config(AB_YAML + """
  churn:
    arms:
      - {name: a, weight: 50, prompt_version: active, model_version: m3}
      - {name: b, weight: 50, prompt_version: active}
""")
    users = [f"u{i}" for i in range(400)]
    got = {u: routed_model_versions(cfg, u) for u in users}
    for u in users:  # exactly what assign() would route this user's requests to, plus unlisted scenarios' default
        want = {"m1"} | {assign(cfg, s, u).model_version for s in ("concert_ads", "churn")}
        assert got[u] == sorted(want)
    seen = Counter(tuple(v) for v in got.values())
    assert ("m1",) in seen and ("m1", "m2", "m3") in seen  # some users need one prefix, some three
    assert routed_model_versions(load_config("salt: s\n"), "u1") == [""]  # no A/B config content: the server's default


def test_zero_weight_arm_gets_nobody() -> None:
    cfg = load_config("salt: x\nscenarios:\n  s:\n    arms:\n"
                      "      - {name: a, weight: 0, prompt_version: 1}\n"
                      "      - {name: b, weight: 100, prompt_version: 1}\n")
    assert {assign(cfg, "s", f"u{i}").arm for i in range(500)} == {"b"}


@pytest.mark.parametrize("yaml_text, field", [
    ("salt: x\nscenarios:\n  s:\n    arms:\n      - {name: a, weight: 60, prompt_version: 1}\n"
     "      - {name: b, weight: 30, prompt_version: 1}\n", "scenarios.s: Value error, arm weights must sum to 100"),
    ("salt: x\nscenarios:\n  s:\n    arms:\n      - {name: a, weight: -5, prompt_version: 1}\n"
     "      - {name: b, weight: 105, prompt_version: 1}\n", "scenarios.s.arms.0.weight"),
    ("salt: x\nscenarios:\n  s:\n    arms:\n      - {name: a, weight: 50, prompt_version: 1}\n"
     "      - {name: a, weight: 50, prompt_version: 2}\n", "arm names must be unique"),
    ("salt: x\nscenarios:\n  s:\n    arms:\n      - {name: a, weight: 100, prompt_version: latest}\n",
     "scenarios.s.arms.0.prompt_version"),
    ("salt: x\nscenarios:\n  s:\n    arms:\n      - {name: a, weight: 33.333, prompt_version: 1}\n"
     "      - {name: b, weight: 66.667, prompt_version: 1}\n", "1/10,000 resolution"),
    ("salt: ''\n", "salt"),
    ("salt: x\nsalts: y\n", "salts"),
    ("salt: [unclosed\n", "not valid YAML"),
    ("- just a list\n", "expected a mapping"),
])
def test_structural_errors_name_the_field(yaml_text: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(yaml_text, "ab.yaml")
    assert field in str(err.value) and "ab.yaml" in str(err.value)


def test_validation_against_registry() -> None:
    cfg = load_config(AB_YAML)
    validate_against(cfg, registry(), {"m1", "m2"})  # valid: no exception

    with pytest.raises(ConfigError, match=r"arms\[1\] \(tuned\)\.prompt_version: version 2 is RETIRED"):
        validate_against(cfg, registry(v2_status="RETIRED"), {"m1", "m2"})
    with pytest.raises(ConfigError, match=r"arms\[2\] \(newmodel\)\.model_version: unknown model 'm2'"):
        validate_against(cfg, registry(), {"m1"})
    with pytest.raises(ConfigError, match="tuned for model 'm0'"):
        validate_against(cfg, registry(v2_model="m0"), {"m1", "m2"})
    with pytest.raises(ConfigError, match="scenarios.concert_ads: scenario is not registered"):
        validate_against(cfg, FakeRegistry({}), {"m1", "m2"})
    missing = load_config(AB_YAML.replace("v2", "7"))
    with pytest.raises(ConfigError, match=r"version 7 is not a servable version .* \(servable: \[1, 2\]\)"):
        validate_against(missing, registry(), {"m1", "m2"})


def test_default_config_in_repo_is_valid() -> None:
    cfg = load_config((REPO / "config" / "ab.yaml").read_text(), "config/ab.yaml")
    assert isinstance(cfg, ABConfig) and cfg.salt


class Listener:
    def __init__(self) -> None:
        self.ok: list[int] = []
        self.failed = 0

    def reload_succeeded(self, generation: int) -> None:
        self.ok.append(generation)

    def reload_failed(self) -> None:
        self.failed += 1


def test_hot_reload_keeps_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "ab.yaml"
    path.write_text(AB_YAML)
    listener = Listener()
    reg = registry()
    watcher = ConfigWatcher(path, lambda c: validate_against(c, reg, {"m1", "m2"}), listener, interval_s=0.05)
    watcher.load_initial()
    assert watcher.generation == 1 and watcher.config.salt == "s1"

    assert watcher.poll() is False  # unchanged: no reload, no metric
    os.utime(path)
    assert watcher.poll() is False  # touched, same content: still generation 1
    assert watcher.generation == 1

    # A bad edit (weights 60+30+20) is rejected; the old config keeps serving.
    path.write_text(AB_YAML.replace("weight: 50", "weight: 60"))
    assert watcher.poll() is False
    assert watcher.config.salt == "s1" and watcher.generation == 1 and listener.failed == 1
    assert "must sum to 100" in (watcher.last_error or "")
    assert watcher.poll() is False and listener.failed == 1  # the same bad content is reported once

    # A config that fails only registry validation becomes valid once the registry catches up.
    path.write_text(AB_YAML.replace("salt: s1", "salt: s2"))
    reg.scenarios["concert_ads"].versions[2] = PromptInfo(2, "tuned", "RETIRED", "m1")
    assert watcher.poll() is False and listener.failed == 2
    reg.scenarios["concert_ads"].versions[2] = PromptInfo(2, "tuned", "READY", "m1")
    assert watcher.poll() is True
    assert watcher.config.salt == "s2" and listener.ok == [1, 2]


def test_hot_reload_follows_configmap_symlink_swap(tmp_path: Path) -> None:
    # Kubernetes mounts ConfigMaps as  ab.yaml -> ..data/ab.yaml,  ..data -> ..2026_11_23_01_00_00.123/
    v1, v2 = tmp_path / "..v1", tmp_path / "..v2"
    v1.mkdir(), v2.mkdir()
    (v1 / "ab.yaml").write_text(AB_YAML)
    (v2 / "ab.yaml").write_text(AB_YAML.replace("salt: s1", "salt: s9"))
    os.utime(v2 / "ab.yaml", ns=(0, 0))  # the new file is *older*: mtime alone must not decide
    (tmp_path / "..data").symlink_to(v1.name)
    (tmp_path / "ab.yaml").symlink_to("..data/ab.yaml")
    watcher = ConfigWatcher(tmp_path / "ab.yaml", interval_s=0.02)
    watcher.load_initial()
    tmp_link = tmp_path / "..data_tmp"
    tmp_link.symlink_to(v2.name)
    os.replace(tmp_link, tmp_path / "..data")  # atomic swap, as kubelet does
    watcher.start()
    try:
        for _ in range(200):
            if watcher.config.salt == "s9":
                break
            time.sleep(0.01)
    finally:
        watcher.stop()
    assert watcher.config.salt == "s9" and watcher.generation == 2


def test_initial_bad_config_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "ab.yaml"
    path.write_text("salt: x\nscenarios:\n  s:\n    arms: []\n")
    with pytest.raises(ConfigError, match="scenarios.s.arms"):
        ConfigWatcher(path).load_initial()
    with pytest.raises(ConfigError, match="cannot read"):
        ConfigWatcher(tmp_path / "missing.yaml").load_initial()


def test_cli_assign_is_reproducible(tmp_path: Path) -> None:
    path = tmp_path / "ab.yaml"
    path.write_text(AB_YAML)
    cmd = [sys.executable, "-m", "services.cli", "ab", "assign", "--config", str(path),
           "--scenario", "concert_ads", "alice", "bob"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    rows = [line.split("\t") for line in out.strip().splitlines()[1:]]
    cfg = load_config(AB_YAML)
    assert [(r[0], r[2], int(r[5])) for r in rows] == [
        (u, assign(cfg, "concert_ads", u).arm, bucket("s1", "concert_ads", u)) for u in ("alice", "bob")]
    bad_cmd = [sys.executable, "-m", "services.cli", "ab", "assign", "--config", str(tmp_path / "no.yaml"),
               "--scenario", "concert_ads", "alice"]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "error:" in bad.stderr
