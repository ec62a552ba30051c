"""The Helm chart (helm/qanchor), checked offline.

Without helm: the values file against its schema, documentation of every value, one resource per template.
With helm (built by `scripts/helm_lint.sh --ensure-helm`): the full lint/validate script, then the rendered
manifests: wiring between objects, probes, GPU scheduling, the A/B ConfigMap mount, and the template guards.
"""
from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_deploy_helpers import REPO, SETTINGS_MODULES, settings_env_names

CHART = REPO / "helm" / "qanchor"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
GPU_VALUES = yaml.safe_load((CHART / "values-gpu.yaml").read_text())


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _validate(values: dict) -> None:
    import jsonschema

    jsonschema.Draft7Validator(SCHEMA).validate(values)


# --- without helm ------------------------------------------------------------------------------------------------

def test_default_and_gpu_values_match_the_schema() -> None:
    _validate(VALUES)
    _validate(_merge(VALUES, GPU_VALUES))


@pytest.mark.parametrize("path,value", [
    (("gateway", "replica"), 3),                      # typo of replicas: unknown keys are rejected
    (("triton", "gpu", "count"), 0),
    (("ingest", "logLevel"), "verbose"),
    (("external", "redis", "featureStoreUrl"), "localhost:6379"),
    (("jobs", "tuning", "runId"), "Run_1"),           # must be a DNS label: it is part of the Job name
    (("image", "services", "pullPolicy"), "Sometimes"),
])
def test_schema_rejects_bad_values(path: tuple[str, ...], value: object) -> None:
    import jsonschema

    bad = copy.deepcopy(VALUES)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)


def _schema_props(schema: dict, prefix: str = ""):
    for key, sub in schema.get("properties", {}).items():
        yield f"{prefix}{key}", sub
        yield from _schema_props(sub, f"{prefix}{key}.")


def test_every_value_is_documented() -> None:
    undocumented = [path for path, sub in _schema_props(SCHEMA) if not sub.get("description")]
    assert not undocumented, f"schema properties without description: {undocumented}"
    # And in values.yaml itself: every top-level key has a comment right above it (or above its first child).
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z]\w*):", line)
        if m:
            around = lines[max(0, i - 1)] + (lines[i + 1] if i + 1 < len(lines) else "")
            assert "#" in around, f"values.yaml: top-level key {m.group(1)} has no comment"


def test_one_resource_per_template() -> None:
    for tpl in (CHART / "templates").glob("*.yaml"):
        kinds = re.findall(r"^kind:", tpl.read_text(), re.M)
        assert len(kinds) == 1, f"{tpl.name}: {len(kinds)} resources"


# --- with helm ---------------------------------------------------------------------------------------------------

def _helm_binary() -> str | None:
    if os.environ.get("QANCHOR_HELM"):
        return os.environ["QANCHOR_HELM"]
    script = (REPO / "scripts" / "helm_lint.sh").read_text()
    version = re.search(r'QANCHOR_HELM_VERSION:-(v[0-9.]+)', script).group(1)
    cache = Path(os.environ.get("QANCHOR_CACHE_DIR", Path.home() / ".cache" / "qanchor"))
    built = cache / "bin" / f"helm-{version}"
    if built.is_file():
        return str(built)
    return shutil.which("helm")


HELM = _helm_binary()
needs_helm = pytest.mark.skipif(HELM is None, reason="no helm binary: run `scripts/helm_lint.sh --ensure-helm` "
                                                     "(builds it with Go) or set QANCHOR_HELM")


# The tuning worker is off by default (it needs a database shared with the registry); these checks render the
# whole application, so they turn it on with such a database. Later --set arguments win.
WITH_WORKER = ("--set", "tuningWorker.enabled=true",
               "--set", "secrets.databaseUrl=postgresql+psycopg://qanchor:pw@postgres:5432/qanchor")


def _template(*args: str, check: bool = True, defaults: bool = False) -> subprocess.CompletedProcess:
    """`helm template`; `defaults=True` renders the chart's defaults alone (no worker, no database)."""
    extra = () if defaults else WITH_WORKER
    run = subprocess.run([HELM, "template", "qanchor", str(CHART), "--namespace", "qanchor",
                          "--kube-version", "1.29.0", *extra, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def _docs(*args: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(_template(*args).stdout) if d]


def _by(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def _pod_specs(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")}


@pytest.fixture(scope="module")
def default_docs() -> list[dict]:
    return _docs()


@pytest.fixture(scope="module")
def gpu_docs() -> list[dict]:
    return _docs("-f", str(CHART / "values-gpu.yaml"), "--set", "jobs.tuning.enabled=true")


@needs_helm
def test_helm_lint_script_passes() -> None:
    run = subprocess.run(["bash", str(REPO / "scripts" / "helm_lint.sh")], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "QANCHOR_HELM": HELM})
    assert run.returncode == 0, run.stderr[-4000:]
    assert "event=helm_checks_ok" in run.stderr


@needs_helm
def test_workloads_and_their_wiring(default_docs: list[dict]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in default_docs)
    deployments = {n for k, n in kinds if k == "Deployment"}
    assert deployments == {f"qanchor-{c}" for c in ("gateway", "registry", "ingest", "eventlog", "triton",
                                                    "tuning-worker")}
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in default_docs if d["kind"] == "Deployment"}
    # Every Service and PDB selects the pods of exactly one Deployment; the HPA scales the gateway.
    for d in default_docs:
        if d["kind"] in ("Service", "PodDisruptionBudget"):
            selector = d["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            hits = [n for n, labels in pods.items() if selector.items() <= labels.items()]
            assert len(hits) == 1, f"{d['kind']}/{d['metadata']['name']} selects {hits}"
    hpa = _by(default_docs, "HorizontalPodAutoscaler", "qanchor-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "qanchor-gateway"
    assert "replicas" not in _by(default_docs, "Deployment", "qanchor-gateway")["spec"]
    # Named target ports exist on the selected pods.
    specs = _pod_specs(default_docs)
    for svc in (d for d in default_docs if d["kind"] == "Service"):
        target = next(n for n, labels in pods.items() if svc["spec"]["selector"].items() <= labels.items())
        pod_ports = {p["name"] for c in specs[target]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= pod_ports, svc["metadata"]["name"]


@needs_helm
def test_gateway_reaches_every_triton_replica_through_the_headless_service(default_docs: list[dict]) -> None:
    headless = _by(default_docs, "Service", "qanchor-triton-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is False
    assert _by(default_docs, "Deployment", "qanchor-triton")["spec"]["replicas"] == VALUES["triton"]["replicas"] > 1
    env = {e["name"]: e.get("value") for e in _pod_specs(default_docs)["qanchor-gateway"]["containers"][0]["env"]}
    assert env["GATEWAY_TRITON_URL"] == "qanchor-triton-headless:19001" and env["GATEWAY_TRITON_DISCOVERY"] == "dns"
    assert env["GATEWAY_TRITON_ROUTING"] == "affinity" and float(env["GATEWAY_TRITON_LOAD_FACTOR"]) == 1.25


@needs_helm
def test_grpc_services_use_grpc_probes_on_contract_ports(default_docs: list[dict]) -> None:
    from services.common.settings import port_for

    specs = _pod_specs(default_docs)
    for name, port in (("gateway", port_for("gateway_grpc")), ("registry", port_for("registry_grpc"))):
        container = specs[f"qanchor-{name}"]["containers"][0]
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (name, probe)
        # readiness: the gateway asks for its service's status (NOT_SERVING while Triton lacks the model)
        ready = {"port": port, "service": "qanchor.v1.EmbeddingService"} if name == "gateway" else {"port": port}
        assert container["readinessProbe"]["grpc"] == ready, name
    triton = specs["qanchor-triton"]["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {p["containerPort"] for p in triton["ports"]} == {port_for(n) for n in
                                                             ("triton_http", "triton_grpc", "triton_metrics")}


@needs_helm
def test_env_names_exist_in_the_services_settings(default_docs: list[dict]) -> None:
    checked = 0
    for name, spec in _pod_specs(default_docs).items():
        for container in spec["containers"] + spec.get("initContainers", []):
            for env in container.get("env", []):
                prefix = next((p for p in SETTINGS_MODULES if env["name"].startswith(p)), None)
                names = settings_env_names(prefix) if prefix else None
                if names is not None:
                    assert env["name"] in names, f"{name}/{container['name']}: {env['name']} is not a setting"
                    checked += 1
    assert checked >= 15


@needs_helm
def test_the_event_log_compacts_by_default_as_the_service_would_and_can_be_turned_off(
        default_docs: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    from services.eventlog.settings import EventLogSettings

    def settings(docs: list[dict]) -> EventLogSettings:
        for e in _pod_specs(docs)["qanchor-eventlog"]["containers"][0]["env"]:
            if e["name"].startswith("EVENTLOG_COMPACT_"):
                monkeypatch.setenv(e["name"], e["value"])
        return EventLogSettings()

    chart, code = settings(default_docs), EventLogSettings.model_fields
    for field in ("compact_interval_s", "compact_min_age_s", "compact_target_rows", "compact_memory_mib"):
        assert getattr(chart, field) == code[field].default, field  # one default, whoever starts the service
    assert settings(_docs("--set", "eventlog.compaction.intervalSeconds=0")).compact_interval_s == 0


def _exported_metrics() -> dict[str, set[str]]:
    """{series name: label names} of every metric the scraped services (ingest, event log, gateway) define; a
    counter's series carry `_total`."""
    from prometheus_client import CollectorRegistry

    from services.eventlog.metrics import EventLogMetrics
    from services.gateway.metrics import GatewayMetrics
    from services.ingest.metrics import IngestMetrics

    from services.registry.domain import JobState
    from services.tuning.metrics import RegistryJobsCollector, WorkerMetrics

    registries = [EventLogMetrics.create().registry, IngestMetrics.create().registry, WorkerMetrics().registry]
    gateway = CollectorRegistry()
    GatewayMetrics(gateway)
    out: dict[str, set[str]] = {}
    for registry in [*registries, gateway]:
        for collector, names in registry._collector_to_names.items():
            labels = set(getattr(collector, "_labelnames", ()))
            for name in names:
                out[name] = labels

    class Repo:
        def count_tuning_jobs(self):
            return {JobState.QUEUED: 1}

    for family in RegistryJobsCollector(Repo).collect():  # computed on each scrape: its families, as scraped
        for sample in family.samples:
            out[sample.name] = set(sample.labels)
    return out


@needs_helm
def test_alerts_name_only_metrics_and_labels_the_services_export() -> None:
    docs = _docs("--api-versions", "monitoring.coreos.com/v1", "--set", "serviceMonitor.enabled=true",
                 "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.thresholds.ingestLagRecords=777")
    import promql_parser

    rules = [r for g in _by(docs, "PrometheusRule", "qanchor")["spec"]["groups"] for r in g["rules"]]
    exported = _exported_metrics()
    assert len(rules) >= 14  # the tuning rules too (WITH_WORKER renders the tuning worker)
    assert _by(docs, "Service", "qanchor-tuning-worker")["metadata"]["labels"]["qanchor.dev/metrics"] == "true"
    for rule in rules:
        expr = rule["expr"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        try:  # Prometheus's own grammar (the Rust port of its parser): what promtool would check
            promql_parser.parse(expr)
        except ValueError as exc:
            pytest.fail(f"{rule['alert']}: not PromQL ({exc}): {expr}")
        names = set(re.findall(r"\b(qanchor_[a-z_]+)\{", expr))
        for name in names:
            assert name in exported, f"{rule['alert']}: {name} is exported by no service"
            matchers = re.findall(rf"{name}\{{([^}}]*)\}}", expr)
            used = {re.match(r"\s*(\w+)\s*(=~|!~|!=|=)", m).group(1) for ms in matchers for m in ms.split(",")}
            # namespace and service are the scrape's own labels (the ServiceMonitor adds them)
            assert used - {"namespace", "service"} <= exported[name], f"{rule['alert']}: {used} on {name}"
        for by in re.findall(r"by \(([^)]*)\)", expr):
            grouped = {b.strip() for b in by.split(",")} - {"namespace", "service"}
            assert all(grouped <= exported[n] for n in names), f"{rule['alert']}: by ({by})"
        assert 'namespace="qanchor"' in expr, rule["alert"]  # scoped to this release's namespace and Services
    lag = next(r for r in rules if r["alert"] == "QanchorIngestLagHigh")
    assert lag["expr"].endswith("> 777") and 'service="qanchor-ingest"' in lag["expr"]
    # The values the rules test for are values the code sets.
    from services.ingest.metrics import IngestMetrics

    outcomes = {s.labels.get("outcome") for m in IngestMetrics.create().registry.collect() for s in m.samples}
    assert "dlq" in outcomes


@needs_helm
def test_tuning_alerts_only_with_the_tuning_worker() -> None:
    run = _template("--api-versions", "monitoring.coreos.com/v1", "--set", "serviceMonitor.enabled=true",
                    "--set", "prometheusRule.enabled=true", defaults=True)
    docs = [d for d in yaml.safe_load_all(run.stdout) if d]
    groups = {g["name"] for g in _by(docs, "PrometheusRule", "qanchor")["spec"]["groups"]}
    assert "qanchor.tuning" not in groups and {"qanchor.ingest", "qanchor.eventlog", "qanchor.gateway"} <= groups


@needs_helm
def test_alerts_need_the_crd_and_the_service_monitor() -> None:
    run = _template("--set", "prometheusRule.enabled=true", check=False)
    assert run.returncode != 0 and "needs the prometheus-operator CRDs" in run.stderr
    run = _template("--api-versions", "monitoring.coreos.com/v1", "--set", "prometheusRule.enabled=true", check=False)
    assert run.returncode != 0 and "set serviceMonitor.enabled=true too" in run.stderr


@needs_helm
def test_ab_config_is_a_directory_mount_and_the_repo_file_renders_and_parses() -> None:
    from services.gateway.ab_config import load_config

    ab_file = REPO / "config" / "ab.yaml"
    docs = _docs("--set-file", f"abConfig.content={ab_file}")
    cm = _by(docs, "ConfigMap", "qanchor-ab-config")
    assert cm["data"]["ab.yaml"].strip() == ab_file.read_text().strip()
    load_config(cm["data"]["ab.yaml"], source="configmap")
    load_config(VALUES["abConfig"]["content"], source="values.yaml default")
    spec = _pod_specs(docs)["qanchor-gateway"]
    gateway = spec["containers"][0]
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "ab-config")
    # subPath mounts never receive ConfigMap updates; the hot reload depends on a whole-directory mount.
    assert "subPath" not in mount
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["GATEWAY_AB_CONFIG"] == f"{mount['mountPath']}/ab.yaml"
    volume = next(v for v in spec["volumes"] if v["name"] == "ab-config")
    assert volume["configMap"]["name"] == "qanchor-ab-config"
    # ...and no checksum of it on the pod template: a traffic change must not restart the gateway.
    annotations = _by(docs, "Deployment", "qanchor-gateway")["spec"]["template"]["metadata"]["annotations"]
    assert not any("ab" in k for k in annotations)


def _gpu_limit(container: dict) -> int | None:
    return container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")


@needs_helm
def test_gpu_is_opt_in_and_schedules_onto_gpu_nodes(default_docs: list[dict], gpu_docs: list[dict]) -> None:
    assert "nvidia.com/gpu:" not in yaml.safe_dump_all(default_docs)
    assert [d["metadata"]["name"] for d in default_docs if d["kind"] == "Job"] == ["qanchor-kafka-topics"]
    specs = _pod_specs(gpu_docs)
    for name in ("qanchor-triton", "qanchor-tuning-worker", "qanchor-tuning-job-pretrain-1"):
        spec = specs[name]
        assert _gpu_limit(spec["containers"][0]) == 1, name
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    # CPU pods hide GPUs from torch; GPU pods must not.
    cpu_env = {e["name"] for e in _pod_specs(default_docs)["qanchor-triton"]["containers"][0]["env"]}
    gpu_env = {e["name"] for e in specs["qanchor-triton"]["containers"][0]["env"]}
    assert "CUDA_VISIBLE_DEVICES" in cpu_env and "CUDA_VISIBLE_DEVICES" not in gpu_env


@needs_helm
def test_tuning_job_shape(gpu_docs: list[dict]) -> None:
    job = _by(gpu_docs, "Job", "qanchor-tuning-job-pretrain-1")
    spec = job["spec"]
    assert spec["backoffLimit"] == 2 and spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["command"] == ["python", "-m", "training.pretrain"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"qanchor-artifacts"}
    assert _by(gpu_docs, "PersistentVolumeClaim", "qanchor-artifacts")["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"}


@pytest.fixture(scope="module")
def kube_docs() -> list[dict]:
    return _docs("--set", "jobs.kubernetes.enabled=true")


@needs_helm
def test_job_backend_rbac_is_namespaced_minimal_and_only_the_worker_holds_a_token(
        default_docs: list[dict], kube_docs: list[dict]) -> None:
    assert not [d for d in default_docs if d["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    assert not [d for d in kube_docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = _by(kube_docs, "Role", "qanchor-job-backend")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    # Exactly what services/kube/backend.py calls: no update/patch, no secrets, no cluster scope.
    assert rules == {(("batch",), ("jobs",)): {"create", "get", "list", "watch", "delete"},
                     (("",), ("pods",)): {"get", "list", "watch"}, (("",), ("pods/log",)): {"get"},
                     (("",), ("services",)): {"create", "get"}}
    no_svc = _by(_docs("--set", "jobs.kubernetes.enabled=true", "--set", "jobs.kubernetes.pretraining=false"),
                 "Role", "qanchor-job-backend")
    assert all("services" not in r["resources"] for r in no_svc["rules"])
    binding = _by(kube_docs, "RoleBinding", "qanchor-job-backend")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "qanchor-job-backend"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "qanchor-job-backend", "namespace": "qanchor"}]
    sa = _by(kube_docs, "ServiceAccount", "qanchor-job-backend")
    assert sa["automountServiceAccountToken"] is False and _by(
        kube_docs, "ServiceAccount", "qanchor")["automountServiceAccountToken"] is False
    # The token is mounted into the tuning worker only; every other pod keeps the permission-less account.
    for name, spec in _pod_specs(kube_docs).items():
        if name == "qanchor-tuning-worker":
            assert spec["serviceAccountName"] == "qanchor-job-backend"
            assert spec["automountServiceAccountToken"] is True
        else:
            assert spec["serviceAccountName"] == "qanchor" and not spec.get("automountServiceAccountToken"), name


@needs_helm
def test_the_local_tuning_worker_caps_its_prefix_caches_at_half_its_memory_limit(default_docs: list[dict]) -> None:
    """TUNING_MAX_CACHE_MB (a job's labelled users' prefix caches) leaves the model and the steps half the limit."""
    worker = _pod_specs(default_docs)["qanchor-tuning-worker"]["containers"][0]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    limit = worker["resources"]["limits"]["memory"]
    limit_mib = int(limit[:-2]) * {"Gi": 1024, "Mi": 1}[limit[-2:]]
    assert 0 < float(env["TUNING_MAX_CACHE_MB"]) <= limit_mib / 2


@needs_helm
def test_kubernetes_backend_worker_runs_no_model_and_configures_the_job_pods(
        kube_docs: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    from test_deploy_helpers import settings_env_names

    spec = _pod_specs(kube_docs)["qanchor-tuning-worker"]
    worker = spec["containers"][0]
    assert worker["image"].startswith("qanchor-services:")  # a controller: no torch, no GPU
    assert "nvidia.com/gpu" not in worker["resources"].get("limits", {}) and "nodeSelector" not in spec
    assert [c["name"] for c in spec["initContainers"]] == ["feast-apply"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in worker["env"]}
    assert env["TUNING_BACKEND"] == "kubernetes"
    assert env["QANCHOR_KUBE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["QANCHOR_KUBE_IMAGE"].startswith("qanchor-model:") and env["QANCHOR_KUBE_SERVICE_ACCOUNT"] == "qanchor"
    assert json.loads(env["QANCHOR_KUBE_TOLERATIONS"]) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert env["QANCHOR_KUBE_ARTIFACTS_CLAIM"] == "qanchor-artifacts" and env["QANCHOR_KUBE_GPUS"] == "1"
    kube_names = settings_env_names("QANCHOR_KUBE_")
    if kube_names is not None:
        assert {n for n in env if n.startswith("QANCHOR_KUBE_")} <= kube_names
    # The values reach the backend's settings as they are rendered (JSON dicts and lists in the environment).
    from services.kube.settings import KubeJobSettings

    for name, value in env.items():
        if name.startswith("QANCHOR_KUBE_") and isinstance(value, str):
            monkeypatch.setenv(name, value)
    settings = KubeJobSettings()
    assert settings.tolerations[0]["key"] == "nvidia.com/gpu" and settings.gpus == 1 and settings.node_selector == {}


@needs_helm
def test_job_pods_mount_the_event_log_only_when_asked_and_only_where_several_pods_can(
        kube_docs: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    """jobs.kubernetes.mountEventLog: offline pretraining on Kubernetes reads the platform's log (docs/own-data.md)."""
    def worker_env(docs: list[dict]) -> dict:
        return {e["name"]: e.get("value") for e in _pod_specs(docs)["qanchor-tuning-worker"]["containers"][0]["env"]}

    assert not {"QANCHOR_KUBE_EVENT_LOG_CLAIM", "TUNING_EVENT_LOG_DIR"} & set(worker_env(kube_docs))
    rwx = _docs("--set", "jobs.kubernetes.enabled=true", "--set", "jobs.kubernetes.mountEventLog=true",
                "--set", "eventlog.storage.accessModes={ReadWriteMany}")
    env = worker_env(rwx)
    assert env["QANCHOR_KUBE_EVENT_LOG_CLAIM"] == "qanchor-eventlog"
    assert _by(rwx, "PersistentVolumeClaim", "qanchor-eventlog")["spec"]["accessModes"] == ["ReadWriteMany"]
    monkeypatch.setenv("QANCHOR_KUBE_EVENT_LOG_CLAIM", env["QANCHOR_KUBE_EVENT_LOG_CLAIM"])
    from services.kube.settings import KubeJobSettings

    assert KubeJobSettings().event_log_claim == "qanchor-eventlog"  # what the backend mounts in each Job pod
    # the worker reads it too (labels with an as_of column), with what ingest encodes with: Triton's text encoder,
    # reachable through Triton's network policy only then
    worker = _pod_specs(rwx)["qanchor-tuning-worker"]
    assert {"name": "eventlog", "mountPath": env["TUNING_EVENT_LOG_DIR"], "readOnly": True} in \
        worker["containers"][0]["volumeMounts"]
    assert {"name": "eventlog", "persistentVolumeClaim": {"claimName": "qanchor-eventlog", "readOnly": True}} in \
        worker["volumes"]
    ingest_env = {e["name"]: e.get("value") for e in _pod_specs(rwx)["qanchor-ingest"]["containers"][0]["env"]}
    assert env["TUNING_TRITON_URL"] == ingest_env["INGEST_TRITON_URL"] and "TUNING_NORMALISATION" not in env
    clients = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for p in _by(rwx, "NetworkPolicy", "qanchor-triton")["spec"]["ingress"][0]["from"]}
    assert clients == {"gateway", "ingest", "tuning-worker"}
    mine = _docs("--set", "jobs.kubernetes.enabled=true", "--set", "jobs.kubernetes.mountEventLog=true",
                 "--set", "eventlog.storage.existingClaim=shared-log", "--set", "ingest.normalisation=/x/n.json")
    assert worker_env(mine)["QANCHOR_KUBE_EVENT_LOG_CLAIM"] == "shared-log"
    assert worker_env(mine)["TUNING_NORMALISATION"] == "/x/n.json"  # the constants ingest standardises with
    for args, message in [([], "allows one node only: set eventlog.storage.accessModes={ReadWriteMany}"),
                          (["--set", "eventlog.enabled=false"], "needs the event log's claim")]:
        run = _template("--set", "jobs.kubernetes.enabled=true", "--set", "jobs.kubernetes.mountEventLog=true",
                        *args, check=False)
        assert run.returncode != 0 and message in run.stderr, run.stderr


@needs_helm
def test_existing_secret_replaces_the_chart_secret() -> None:
    docs = _docs("--set", "secrets.existingSecret=prod-tokens")
    assert not any(d["kind"] == "Secret" for d in docs)
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for spec in _pod_specs(docs).values()
            for c in spec["containers"] for e in c.get("env", []) if "valueFrom" in e and "secretKeyRef" in
            e["valueFrom"]}
    assert refs == {"prod-tokens"}
    # Chart-made secret: only the keys that were given, base64-encoded.
    docs = [d for d in yaml.safe_load_all(_template("--set", "secrets.gatewayToken=abc", defaults=True).stdout) if d]
    data = _by(docs, "Secret", "qanchor-secrets")["data"]
    # Secure by default: the tokens not given are generated (the servers refuse to start without one).
    assert data["gateway-token"] == "YWJj" and set(data) == {"gateway-token", "registry-token", "registry-admin-token"}
    assert len(base64.b64decode(data["registry-token"])) == 40


@needs_helm
@pytest.mark.parametrize("args,message", [
    (["--set", "ingest.replicas=5"], "above external.kafka.partitions"),
    (["--set", "tuningWorker.queue=other"], "differs from registry.tuningQueue"),
    (["--set", "gateway.autoscaling.minReplicas=5", "--set", "gateway.autoscaling.maxReplicas=3"], "above maxReplicas"),
    (["--set", "serviceMonitor.enabled=true"], "prometheus-operator CRDs"),
    (["--set", "gateway.replica=3"], "additional properties"),
])
def test_template_guards_fail_with_a_next_step(args: list[str], message: str) -> None:
    run = _template(*args, check=False)
    assert run.returncode != 0
    assert message in run.stderr, run.stderr


@needs_helm
def test_ingest_reads_the_served_models_constants_only_when_named(default_docs: list[dict]) -> None:
    path = "/var/lib/qanchor/artifacts/runs/pretrain-1/checkpoint/normalisation.json"
    plain = _pod_specs(default_docs)["qanchor-ingest"]
    assert "INGEST_NORMALISATION" not in {e["name"] for e in plain["containers"][0]["env"]}
    assert "artifacts" not in {v["name"] for v in plain["volumes"]}
    spec = _pod_specs(_docs("--set", f"ingest.normalisation={path}"))["qanchor-ingest"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["INGEST_NORMALISATION"] == path
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "artifacts")
    assert path.startswith(mount["mountPath"] + "/") and mount["readOnly"]
    vol = next(v for v in spec["volumes"] if v["name"] == "artifacts")
    assert vol["persistentVolumeClaim"]["readOnly"]


@needs_helm
def test_prefix_warming_uses_the_gateways_ring_over_the_headless_service(default_docs: list[dict]) -> None:
    off = {e["name"] for e in _pod_specs(default_docs)["qanchor-ingest"]["containers"][0]["env"]}
    assert "INGEST_WARM_TRITON_URL" not in off
    docs = _docs("--set", "ingest.warmPrefixes.enabled=true")
    env = {e["name"]: e.get("value") for e in _pod_specs(docs)["qanchor-ingest"]["containers"][0]["env"]}
    gateway = {e["name"]: e.get("value") for e in _pod_specs(docs)["qanchor-gateway"]["containers"][0]["env"]}
    assert env["INGEST_WARM_TRITON_URL"] == gateway["GATEWAY_TRITON_URL"] and env["INGEST_WARM_DISCOVERY"] == "dns"
    assert float(env["INGEST_WARM_RATE_PER_S"]) == 20
    # the gateway's A/B file, from the same ConfigMap mounted the same way: warm-ups cover every routed version
    specs = _pod_specs(docs)
    ab_path = Path(gateway["GATEWAY_AB_CONFIG"])
    assert env["INGEST_WARM_AB_CONFIG"] == str(ab_path)
    for name in ("qanchor-ingest", "qanchor-gateway"):
        mount = next(m for m in specs[name]["containers"][0]["volumeMounts"] if m["name"] == "ab-config")
        assert mount["mountPath"] == str(ab_path.parent) and mount["readOnly"] and "subPath" not in mount
    vols = {n: next(v for v in specs[n]["volumes"] if v["name"] == "ab-config") for n in ("qanchor-ingest",
                                                                                           "qanchor-gateway")}
    assert vols["qanchor-ingest"]["configMap"] == vols["qanchor-gateway"]["configMap"]


@needs_helm
def test_autoscaling_off_sets_replicas() -> None:
    docs = _docs("--set", "gateway.autoscaling.enabled=false", "--set", "gateway.replicas=3")
    assert _by(docs, "Deployment", "qanchor-gateway")["spec"]["replicas"] == 3
    assert not any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)


@needs_helm
def test_kafka_topics_hook_matches_the_topic_list(default_docs: list[dict]) -> None:
    from services.ingest.schema import DLQ_TOPIC, EVENTS_TOPIC
    from services.stack.kafka import load_topics

    kafka = VALUES["external"]["kafka"]
    assert (kafka["topic"], kafka["dlqTopic"]) == (EVENTS_TOPIC, DLQ_TOPIC)
    events = next(t for t in load_topics() if t.name == EVENTS_TOPIC)
    assert kafka["partitions"] == events.partitions  # the ingest replica guard uses the real partition count
    job = _by(default_docs, "Job", "qanchor-kafka-topics")
    # A hook, re-created per release (a plain Job's spec is immutable, so an upgrade would fail on it).
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["qanchor-kafka-topics", "--bootstrap", kafka["bootstrapServers"], "--replication", "3"]
    docs = _docs("--set", "external.kafka.topics.create=false")
    assert not any(d["kind"] == "Job" for d in docs)


@needs_helm
def test_the_job_command_in_the_deploy_guide_renders_one_gpu_job() -> None:
    """docs/deploy.md's `helm template ... | kubectl apply` for a training run, minus kubectl, run verbatim."""
    import shlex

    text = (REPO / "docs" / "deploy.md").read_text()
    block = re.search(r"^(helm template qanchor helm/qanchor .*?)\| kubectl", text, re.M | re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "), comments=True)
    assert argv[:2] == ["helm", "template"]
    run = subprocess.run([HELM, *argv[1:]], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    (job,) = [d for d in yaml.safe_load_all(run.stdout) if d]
    assert job["kind"] == "Job" and job["metadata"]["name"] == "qanchor-tuning-job-pretrain-2"
    assert _gpu_limit(job["spec"]["template"]["spec"]["containers"][0]) == 1


@needs_helm
def test_default_chart_is_coherent_and_refuses_a_worker_without_a_shared_database() -> None:
    docs = [d for d in yaml.safe_load_all(_template(defaults=True).stdout) if d]
    assert not [d for d in docs if d["metadata"]["name"].endswith("tuning-worker")]
    run = _template("--set", "tuningWorker.enabled=true", check=False, defaults=True)
    assert run.returncode != 0 and "secrets.databaseUrl" in run.stderr and "QUEUED" in run.stderr
    ingest = _pod_specs(docs)["qanchor-ingest"]["containers"][0]
    env = {e["name"]: e.get("value") for e in ingest["env"]}
    assert env["INGEST_METRICS_HOST"] == "0.0.0.0" and env["INGEST_VECTOR_CACHE_URL"].startswith("redis://")
    assert ingest["livenessProbe"]["httpGet"]["path"] == "/healthz"


@needs_helm
def test_only_the_gateway_and_ingest_reach_tritons_api() -> None:
    policy = _by(_docs(), "NetworkPolicy", "qanchor-triton")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "triton"
    api, metrics = policy["spec"]["ingress"]
    assert {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in api["from"]} == {"gateway",
                                                                                                      "ingest"}
    assert {p["port"] for p in api["ports"]} == {19000, 19001} and metrics["ports"] == [{"port": 19002,
                                                                                          "protocol": "TCP"}]
    assert not [d for d in _docs("--set", "triton.networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]
