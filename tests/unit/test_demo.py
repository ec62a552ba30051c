"""Pure parts of the demo and of the stack's app components: report rendering, cosine, component wiring."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from services.demo.report import DemoReport, EmbeddingRow, MultiScenarioCall, TuningResult, cosine_matrix, \
    off_diagonal, render, render_tuning
from services.demo.steps import load_scenarios
from services.stack.apps import Gateway, Ingest, ModelsStep, Registry, find_checkpoint, read_tokens, \
    resolve_model_source
from services.common.settings import repo_root
from services.stack.settings import ALL_COMPONENTS, COMPONENTS, StackSettings, resolve_components


@pytest.fixture()
def settings(tmp_path: Path) -> StackSettings:
    return StackSettings(state_dir=tmp_path / "state", port_base=31000)


def test_cosine_matrix_is_symmetric_with_unit_diagonal_and_zero_rows_safe() -> None:
    v = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    m = cosine_matrix(v)
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m)[:3], 1.0)
    assert m[0, 1] == pytest.approx(0.0) and m[0, 2] == pytest.approx(2 ** -0.5)
    assert not np.isnan(m).any() and m[3, 3] == 0.0
    assert off_diagonal(m).shape == (12,)


def _row(uid: str, hit: bool = False, fallback: bool = False) -> EmbeddingRow:
    return EmbeddingRow(uid, "gender_female", 128, "smollm2-untrained", "zero-shot", "default", 0 if fallback else 7,
                        hit, fallback, 12.5, [0.1, -0.2, 0.3, 0.0])


def test_render_shows_untrained_label_cold_start_and_cache_speedup() -> None:
    r = DemoReport(model_version="smollm2-untrained", model_trained=False, model_source="preset smollm2",
                   users_replayed=2, events_sent=300, users_with_features=2,
                   scenarios={"gender_female": "Is this user a woman?", "future_horror": "Horror next?"},
                   scenarios_registered=2, single=[_row("1")], cold=_row("cold", fallback=True), batch_items=4,
                   batch_ok=4, multi=[MultiScenarioCall("1", 2, 2, False, 400.0, 390.0, 380.0),
                                      MultiScenarioCall("1", 2, 2, True, 40.0, 35.0, 30.0)],
                   similarity_user="1", similarity_scenarios=["gender_female", "future_horror"],
                   similarity=[[1.0, 0.42], [0.42, 1.0]], endpoints={"gateway": "grpc 127.0.0.1:19051"})
    text = render(r)
    assert "UNTRAINED" in text
    assert "10.0x faster" in text  # 400 ms -> 40 ms
    assert "off-diagonal min 0.420, mean 0.420, max 0.420" in text
    cold_line = [ln for ln in text.splitlines() if ln.startswith("cold ")][0]
    assert cold_line.split()[7] == "yes"  # the fallback column
    assert "grpc 127.0.0.1:19051" in text
    assert json.loads(json.dumps(r.to_json()))["multi"][1]["cache_hit"] is True


def test_render_trained_model_has_no_untrained_warning() -> None:
    assert "UNTRAINED" not in render(DemoReport(model_version="m1", model_trained=True, model_source="ckpt"))


@pytest.mark.parametrize("probe, verdict", [((0.70, 0.66), "worth promoting"),
                                            ((0.64, 0.66), "keep the zero-shot version")])
def test_tuning_section_shows_both_read_outs_and_says_whether_the_prompt_helps_a_probe(probe, verdict) -> None:
    m = {"auc": 0.76, "ks": 0.4, "auc_zero_shot": 0.65, "ks_zero_shot": 0.3, "probe_auc": probe[0],
         "probe_auc_zero_shot": probe[1], "n_train": 160, "n_val": 40, "steps": 40}
    text = render_tuning(TuningResult("gender_female", "Is this user female?", "job-1", 40, 12.0, 2, m))
    assert "held-out AUC (40 users, prototypes)" in text and "linear-probe AUC" in text
    assert f"{probe[0]:.3f}" in text and f"{probe[1]:.3f}" in text and verdict in text
    no_probe = render_tuning(TuningResult("genre", "Which genre?", "job-2", 40, 12.0, 2, {"auc": 0.6}))
    assert "worth promoting" not in no_probe and "keep the zero-shot" not in no_probe  # > 2 classes: no probe keys


def test_tuning_section_says_when_the_job_kept_the_query_alone() -> None:
    m = {"auc": 0.65, "ks": 0.3, "auc_zero_shot": 0.65, "ks_zero_shot": 0.3, "probe_auc": 0.66,
         "probe_auc_zero_shot": 0.66, "n_train": 160, "n_val": 40, "steps": 40, "kept_zero_shot": 1.0}
    text = render_tuning(TuningResult("gender_female", "Is this user female?", "job-1", 40, 12.0, 3, m))
    assert "version 3 kept the query (an empty prompt) and serves the zero-shot embedding" in text
    assert "worth promoting" not in text and "keep the zero-shot version" not in text


@pytest.mark.parametrize("low, verdict", [(-0.010, "not resolved at this size"), (0.004, "resolved")])
def test_tuning_section_gives_the_held_out_gain_with_its_interval(low, verdict) -> None:
    m = {"auc": 0.70, "ks": 0.4, "auc_zero_shot": 0.66, "ks_zero_shot": 0.3, "probe_auc": 0.70,
         "probe_auc_zero_shot": 0.66, "n_train": 160, "n_val": 40, "steps": 40, "kept_zero_shot": 0.0,
         "val_gain": 0.012, "val_gain_low": low, "val_gain_high": 0.030}
    text = render_tuning(TuningResult("gender_female", "Is this user female?", "job-1", 40, 12.0, 2, m))
    assert f"held-out AUC gain over the query alone +0.012 (95% {low:+.3f} to +0.030 on 40 verdict users): {verdict}" \
        in text
    split = render_tuning(TuningResult("gender_female", "Is this user female?", "job-1", 40, 12.0, 2,
                                       {**m, "n_select": 20, "n_verdict": 20}))
    assert "on 20 verdict users" in split and "held-out AUC (20 users, prototypes)" in split
    assert "worth promoting" in text  # the probe read-out line stays


def test_scenarios_file_gives_ten_named_queries() -> None:
    from services.demo.settings import DemoSettings

    s = load_scenarios(DemoSettings().scenarios_file, 10)
    assert len(s) == 10 and all(q.endswith("?") for q in s.values())


def test_no_names_is_infrastructure_all_adds_apps_and_dependencies() -> None:
    assert resolve_components(None) == list(COMPONENTS)  # the integration fixture's `up()` is unchanged
    assert resolve_components(list(ALL_COMPONENTS)) == list(ALL_COMPONENTS)
    # The registry publishes tuning jobs to the stack's Redis; the tuning worker needs the registry's database.
    assert resolve_components(["gateway"]) == ["redis", "triton", "feast", "models", "registry", "gateway"]
    assert resolve_components(["ingest"]) == ["kafka", "triton", "feast", "models", "ingest"]
    assert resolve_components(["registry"]) == ["redis", "registry"]
    assert resolve_components(["tuning"]) == ["redis", "triton", "feast", "models", "registry", "tuning"]
    # The Kubernetes control plane only when named; the API server brings etcd.
    assert resolve_components(["kube"]) == ["etcd", "kube"]


def test_app_components_use_contract_ports_and_stack_endpoints(settings: StackSettings) -> None:
    feast = settings.layout.root / "feast" / "feature_store.yaml"
    reg, ing, gw = Registry(settings), Ingest(settings, feast), Gateway(settings, feast)
    assert reg.ports() == [31052] and ing.ports() == [31061] and gw.ports() == [31051, 31060]
    assert reg.command()[-2:] == ["-m", "services.registry"]
    env = gw.env()
    assert env["QANCHOR_PORT_BASE"] == "31000" and env["QANCHOR_STATE_DIR"] == str(settings.layout.root)
    assert env["GATEWAY_TRITON_URL"] == "127.0.0.1:31001" and env["GATEWAY_REGISTRY_TARGET"] == "127.0.0.1:31052"
    assert (env["GATEWAY_FEAST_LOCATION"] == str(feast)
            and env["GATEWAY_AB_CONFIG"] == str(settings.layout.root / "ab.yaml"))
    assert ing.env()["INGEST_KAFKA_BOOTSTRAP"] == "127.0.0.1:31092"
    tokens = read_tokens(settings)
    assert reg.env()["REGISTRY_ADMIN_TOKEN"] == tokens.admin and env["GATEWAY_TOKEN"] == tokens.client
    assert read_tokens(settings) == tokens  # stable per state dir
    assert (settings.layout.run / "tokens.json").stat().st_mode & 0o077 == 0  # private to the user
    assert not gw.healthy()  # nothing listens on this base
    gw.prepare()  # the local stack's A/B file: a copy of the repository's, which experiments never edit
    assert (settings.layout.root / "ab.yaml").read_text() == (REPO_AB := repo_root() / "config" / "ab.yaml").read_text()
    assert REPO_AB.is_file()


def test_tuning_worker_and_registry_share_the_stacks_redis(settings: StackSettings) -> None:
    from services.stack.apps import TuningWorker

    feast = settings.layout.root / "feast" / "feature_store.yaml"
    worker = TuningWorker(settings, feast)
    assert worker.command()[0] == str(settings.model_python) and worker.command()[-2:] == ["-m", "services.tuning"]
    assert worker.ports() == [31062]
    env = worker.env()
    assert env["TUNING_BROKER_URL"] == Registry(settings).env()["REGISTRY_CELERY_BROKER"] == "redis://127.0.0.1:31079/1"
    assert env["TUNING_FEAST_CONFIG"] == str(feast) and env["QANCHOR_STATE_DIR"] == str(settings.layout.root)
    assert env["TUNING_FEATURES_PYTHON"] == str(settings.services_python)
    assert not worker.healthy()


def test_models_source_prefers_a_checkpoint_and_keys_on_its_manifest(tmp_path: Path) -> None:
    ckpt = tmp_path / "artifacts" / "run1" / "ckpt-9"
    ckpt.mkdir(parents=True)
    (ckpt / "manifest.json").write_text(json.dumps({"format": "qanchor-checkpoint/1", "files": {}}))
    (tmp_path / "artifacts" / "prompt").mkdir()
    (tmp_path / "artifacts" / "prompt" / "manifest.json").write_text(json.dumps({"format": "qanchor-soft-prompt/1"}))
    assert find_checkpoint(tmp_path / "artifacts") == ckpt
    assert find_checkpoint(tmp_path / "nothing") is None

    preset = resolve_model_source(StackSettings(state_dir=tmp_path / "s", model_checkpoint=None))
    trained = resolve_model_source(StackSettings(state_dir=tmp_path / "s", model_checkpoint=ckpt))
    assert trained.trained and trained.checkpoint == ckpt and "checkpoint" in trained.label()
    assert trained.key != preset.key
    (ckpt / "manifest.json").write_text(json.dumps({"format": "qanchor-checkpoint/1", "files": {"x": "1"}}))
    assert resolve_model_source(StackSettings(state_dir=tmp_path / "s", model_checkpoint=ckpt)).key != trained.key


def test_models_step_is_stale_until_both_models_are_written(settings: StackSettings) -> None:
    step = ModelsStep(settings)
    source = resolve_model_source(settings)
    assert not step.exported(source)
    step.record_path.parent.mkdir(parents=True)
    step.record_path.write_text(json.dumps({"key": source.key, "source": source.label(), "trained": False,
                                            "model_version": "smollm2-untrained", "exported_at": 0.0}))
    assert not step.exported(source)  # recorded, but the repository is empty
    for m in ("qanchor", "text_encoder"):
        (step.repo / m).mkdir(parents=True)
        (step.repo / m / "config.pbtxt").write_text("")
    assert step.exported(source)


def test_spread_separates_user_and_scenario_variance() -> None:
    from services.demo.report import spread

    rng = np.random.default_rng(0)
    users, scen = rng.normal(size=(6, 1, 16)), rng.normal(size=(1, 4, 16))
    only_users = spread(np.broadcast_to(users, (6, 4, 16)) + 0.0)
    assert only_users["user_share"] == pytest.approx(1.0) and only_users["scenario_share"] == pytest.approx(0.0)
    assert only_users["cos_same_user"] == pytest.approx(1.0)
    only_scen = spread(np.broadcast_to(scen, (6, 4, 16)) + 0.0)
    assert only_scen["scenario_share"] == pytest.approx(1.0) and only_scen["cos_same_scenario"] == pytest.approx(1.0)
    mixed = spread(users + scen)
    assert 0.2 < mixed["user_share"] < 0.8 and mixed["user_share"] + mixed["scenario_share"] == pytest.approx(1.0)
    r = DemoReport(scenarios={"a": "A?", "b": "B?"}, spread_users=6, **{k: round(v, 4) for k, v in mixed.items()})
    assert "whose embedding is it? 6 users x 2 scenarios" in render(r) and "user share" in render(r)


def test_ingest_counters_read_the_ingest_metrics_endpoint_and_their_change_around_a_replay() -> None:
    import socket

    from services.demo.report import counter_change
    from services.demo.steps import ingest_counters
    from services.ingest.metrics import IngestMetrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = IngestMetrics.create()
    m.serve(port)
    url = f"http://127.0.0.1:{port}/metrics"
    m.events.labels(outcome="applied").inc(5)
    before = ingest_counters(url)
    assert before is not None and before["applied"] == 5
    m.events.labels(outcome="applied").inc(7)
    m.events.labels(outcome="duplicate").inc(2)
    m.events.labels(outcome="dlq").inc(3)
    m.dlq.labels(reason="beyond_dedup_memory").inc(3)
    change = counter_change(before, ingest_counters(url))
    assert change == {"applied": 7, "duplicate": 2, "dlq": 3, "dlq:beyond_dedup_memory": 3}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert ingest_counters(f"http://127.0.0.1:{closed}/metrics") is None


def test_counter_change_after_a_restart_counts_from_zero() -> None:
    from services.demo.report import counter_change

    assert counter_change({"applied": 100.0, "dlq": 1.0}, {"applied": 30.0, "dlq": 1.0}) == {"applied": 30, "dlq": 0}


def test_ingest_line_says_what_happened_to_the_replayed_events() -> None:
    from services.demo.report import render_ingest

    fresh = render_ingest(50, {"applied": 50, "duplicate": 0, "dlq": 0})
    assert fresh == "ingest: 50 applied, 0 duplicates, 0 dead-lettered"
    rerun = render_ingest(50, {"applied": 0, "duplicate": 20, "dlq": 30, "dlq:beyond_dedup_memory": 30,
                               "dlq:bad_json": 0})
    assert "0 applied, 20 duplicates, 30 dead-lettered" in rerun and "applies an event once" in rerun
    assert "DLQ reasons: beyond_dedup_memory 30 (" in rerun and "bad_json" not in rerun
    assert "qanchor events dlq" in rerun and "not counted" not in rerun
    assert "10 of the 50 sent not counted" in render_ingest(50, {"applied": 40})
    assert "5 more than the 50 sent" in render_ingest(50, {"applied": 55})
    assert "unavailable" in render_ingest(50, None)
    report = render(DemoReport(events_sent=50, users_replayed=2, users_with_features=2,
                               ingest_outcomes={"applied": 50}))
    assert "ingest: 50 applied, 0 duplicates, 0 dead-lettered" in report


def test_arm_split_waits_for_a_pass_served_only_by_the_new_config(monkeypatch) -> None:
    """The gateway reloads its A/B file on its own clock; a pass over the users that the reload splits holds the old
    config's arm beside the new ones, and the demo must not report it as the split (seen in the slow demo test)."""
    from types import SimpleNamespace

    from services.demo import steps

    monkeypatch.setattr(steps.time, "sleep", lambda s: None)
    calls = []

    class Client:  # the gateway: the old config's arm for the first 5 calls, then the new 50/50 split
        def get_embedding(self, uid: str, scenario: str):
            calls.append(uid)
            arm = "default" if len(calls) <= 5 else ("zero-shot" if int(uid[1:]) % 2 else "tuned")
            e = SimpleNamespace(user_id=uid, scenario=scenario, dim=4, model_version="m", prompt_version=arm, arm=arm,
                                feature_version=1, cache_hit=False, fallback=False, values=[0.0] * 4)
            return SimpleNamespace(embedding=e)

    users = [f"u{i}" for i in range(12)]
    said: list[str] = []
    by_arm = steps.arm_responses(Client(), users, "s", {"zero-shot", "tuned"}, 60.0, said.append)
    assert set(by_arm) == {"zero-shot", "tuned"} and sum(len(v) for v in by_arm.values()) == 12
    assert len(calls) == 24 and len(said) == 1 and "default" in said[0]  # the split pass was read again


def test_arm_split_that_puts_every_user_in_one_arm_says_so_not_that_the_config_was_rejected(monkeypatch) -> None:
    from types import SimpleNamespace

    from services.demo import steps

    monkeypatch.setattr(steps.time, "sleep", lambda s: None)
    clock = itertools.count(0.0, 30.0)  # each reading 30 s later: the 60 s deadline passes after the second pass
    monkeypatch.setattr(steps.time, "monotonic", lambda: next(clock))

    class Client:  # the new config serves, and every one of these users hashes to its "tuned" arm
        def get_embedding(self, uid: str, scenario: str):
            e = SimpleNamespace(user_id=uid, scenario=scenario, dim=4, model_version="m", prompt_version="2",
                                arm="tuned", feature_version=1, cache_hit=False, fallback=False, values=[0.0] * 4)
            return SimpleNamespace(embedding=e)

    with pytest.raises(TimeoutError, match=r"fall in arms \['tuned'\].*none in \['zero-shot'\]: ask with more users"):
        steps.arm_responses(Client(), ["u1", "u2"], "s", {"zero-shot", "tuned"}, 60.0, lambda line: None)
