"""The local stack: start, health-check, report and stop Kafka, Redis, Triton and the Feast step, and (after
them) the application: the models step, the registry, ingest and gateway processes (services/stack/apps.py).

    stack = Stack(StackSettings())
    stack.up(["kafka", "redis"])       # idempotent; raises StackError with the log tail and a hint
    stack.endpoints().kafka_bootstrap  # "127.0.0.1:19092"
    stack.down()                       # every process group stopped, every port verified closed
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from services.stack.apps import EventLog, Gateway, Ingest, ModelsStep, Registry, TuningWorker
from services.stack.components import Component, Redis, StackError
from services.stack.feast import FeastStep
from services.stack.kafka import Kafka
from services.stack.kube import Etcd, KubeApiserver
from services.stack.procs import (PidRecord, describe_pid, is_alive, listener_pids, port_open, process_group, spawn,
                                  stop_group, tail, wait_ports_closed)
from services.stack.settings import (ALL_COMPONENTS, APP_PROCESSES, KNOWN_COMPONENTS, OPTIONAL_COMPONENTS,
                                     PROCESS_COMPONENTS, Endpoints, StackSettings, resolve_components)
from services.stack.triton import Triton

log = logging.getLogger(__name__)

# States shown by `status`: up = healthy; starting = process alive, probe failing; down = no process.
UP, STARTING, DOWN, SKIPPED = "up", "starting", "down", "skipped"


@dataclass(frozen=True)
class ComponentStatus:
    component: str
    state: str
    pid: int | None
    address: str
    detail: str = ""


@dataclass(frozen=True)
class StartResult:
    component: str
    outcome: str  # started | already healthy | applied | unchanged | skipped (...)
    seconds: float


def next_action(alive: bool, healthy: bool) -> str:
    """What `up` does for a process component: nothing, wait for it, or launch it."""
    if alive and healthy:
        return "none"
    if alive:
        return "wait"  # started by an earlier `up` that is still booting, or stuck: wait, then report
    return "launch"


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.layout = settings.layout
        self.components: dict[str, Component] = {
            "kafka": Kafka(settings), "redis": Redis(settings), "triton": Triton(settings),
            "etcd": Etcd(settings), "kube": KubeApiserver(settings),
        }
        self.feast = FeastStep(settings, redis_url=self.components["redis"].address())
        feast_config = settings.layout.root / "feast" / "feature_store.yaml"
        self.components.update(registry=Registry(settings), ingest=Ingest(settings, feast_config),
                               eventlog=EventLog(settings, feast_config),
                               gateway=Gateway(settings, feast_config), tuning=TuningWorker(settings, feast_config))
        self.models = ModelsStep(settings)

    # --- queries -------------------------------------------------------------------------------------------
    def endpoints(self) -> Endpoints:
        return Endpoints.from_settings(self.settings, feast_config=self.feast.applied_config())

    def record(self, name: str) -> PidRecord | None:
        return PidRecord.load(self.layout.pid_file(name))

    def status(self, names: list[str] | None = None) -> list[ComponentStatus]:
        out = []
        if names is not None and list(names) == list(ALL_COMPONENTS):
            # Optional components (the Kubernetes control plane) are listed once they have been started.
            names = [*names, *(n for n in OPTIONAL_COMPONENTS if self.layout.pid_file(n).exists())]
        for name in resolve_components(names):
            if name == "feast":
                config = self.feast.applied_config()
                out.append(ComponentStatus("feast", UP if config else DOWN, None,
                                           f"{self.settings.online_store} online store",
                                           detail=f"applied: {config}" if config else "not applied"))
                continue
            if name == "models":
                record = self.models.load_record()
                ready = record is not None and self.models.ready()
                out.append(ComponentStatus("models", UP if ready else DOWN, None, "triton: qanchor, text_encoder",
                                           detail=(f"{record.model_version} "
                                                   f"({'trained' if record.trained else 'UNTRAINED'})"
                                                   if record else "not exported") + ("" if ready else ", not loaded")))
                continue
            comp = self.components[name]
            record = self.record(name)
            alive = record is not None and is_alive(record)
            healthy = alive and comp.healthy()
            state = UP if healthy else STARTING if alive else DOWN
            detail = ""
            if not alive:
                busy = [p for p in comp.ports() if port_open(self.settings.host, p)]
                if busy:
                    detail = f"port {busy[0]} in use by another process"
            out.append(ComponentStatus(name, state, record.pid if alive else None, comp.address(), detail))
        return out

    def _record_endpoints(self) -> None:
        """Where clients reach this stack (`qanchor embed` and friends read it to find the stack on their own)."""
        h = self.settings.host
        doc = {"port_base": self.settings.port_base, "gateway": f"{h}:{self.settings.port('gateway_grpc')}",
               "registry": f"{h}:{self.settings.port('registry_grpc')}", "kafka": f"{h}:{self.settings.port('kafka')}"}
        tmp = self.layout.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.layout.endpoints_file)

    # --- up ------------------------------------------------------------------------------------------------
    def up(self, names: list[str] | None = None, timeout_s: float | None = None) -> list[StartResult]:
        """Start the selected components (all by default) and wait until each is healthy."""
        selected = resolve_components(names, self.settings.online_store)
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        self.layout.run.mkdir(parents=True, exist_ok=True)
        self._record_endpoints()
        procs = [n for n in selected if n in PROCESS_COMPONENTS and n not in APP_PROCESSES
                 and n not in OPTIONAL_COMPONENTS]
        results: dict[str, StartResult] = {}
        errors: list[StackError] = []
        self._up_parallel(procs, timeout_s, results, errors)
        if "feast" in selected and not any(e.component == "redis" for e in errors):
            t0 = time.monotonic()
            try:
                outcome, _ = self.feast.up()
                results["feast"] = StartResult("feast", outcome, time.monotonic() - t0)
            except StackError as exc:
                errors.append(exc)
        self._raise(errors)
        for phase in (["etcd"], ["kube"]):  # the API server needs etcd serving first
            self._up_parallel([n for n in phase if n in selected], timeout_s, results, errors)
            self._raise(errors)
        # The application, in dependency order: models before anything that calls Triton, the registry before
        # the gateway (which validates the A/B config against it); ingest and gateway side by side.
        if "models" in selected:
            t0 = time.monotonic()
            outcome, _ = self.models.up()
            results["models"] = StartResult("models", outcome, time.monotonic() - t0)
        for phase in (["registry"], ["ingest", "eventlog", "gateway", "tuning"]):
            self._up_parallel([n for n in phase if n in selected], timeout_s, results, errors)
            self._raise(errors)
        return [results[n] for n in selected if n in results]

    def _up_parallel(self, names: list[str], timeout_s: float | None, results: dict[str, StartResult],
                     errors: list[StackError]) -> None:
        # Processes start side by side: total time ~ the slowest (Kafka's JVM), not the sum.
        with ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="stack-up") as pool:
            futures = {n: pool.submit(self._up_process, self.components[n], timeout_s) for n in names}
            for name, fut in futures.items():
                try:
                    results[name] = fut.result()
                except StackError as exc:
                    errors.append(exc)
                except Exception as exc:  # a bug in a component must still be reported with its name
                    log.exception("unexpected error starting a component", extra={"component": name})
                    errors.append(StackError(name, f"unexpected error: {exc!r}"))

    @staticmethod
    def _raise(errors: list[StackError]) -> None:
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise StackError(",".join(e.component for e in errors),
                             "failed to start\n\n" + "\n\n".join(e.render() for e in errors))

    def _up_process(self, comp: Component, timeout_s: float | None) -> StartResult:
        t0 = time.monotonic()
        record = self.record(comp.name)
        alive = record is not None and is_alive(record)
        action = next_action(alive, alive and comp.healthy())
        if action == "none":
            comp.after_healthy()  # cheap and idempotent; repairs e.g. a deleted topic
            log.info("component already healthy", extra={"component": comp.name, "pid": record.pid})
            return StartResult(comp.name, "already healthy", time.monotonic() - t0)
        if action == "launch":
            self._check_ports_free(comp)
            comp.prepare()
            proc, record = spawn(comp.command(), comp.log_path, env=comp.env(), cwd=comp.workdir,
                                 ports=comp.ports())
            record.save(self.layout.pid_file(comp.name))
            log.info("component launched", extra={"component": comp.name, "pid": record.pid,
                                                  "log": str(comp.log_path)})
        assert record is not None
        self._wait_healthy(comp, record, timeout_s or self.settings.start_timeout_s)
        comp.after_healthy()
        outcome = "started" if action == "launch" else "was starting, now healthy"
        log.info("component healthy", extra={"component": comp.name, "pid": record.pid,
                                             "seconds": round(time.monotonic() - t0, 1)})
        return StartResult(comp.name, outcome, time.monotonic() - t0)

    def _check_ports_free(self, comp: Component) -> None:
        for port in comp.ports():
            if port_open(self.settings.host, port):
                owners = ", ".join(describe_pid(p) for p in listener_pids(port)) or "an unknown process"
                raise StackError(comp.name, f"port {port} is already in use by {owners}",
                                 hint="port in use: stop that process, or pick another QANCHOR_PORT_BASE "
                                      f"(now {self.settings.port_base})")

    def _wait_healthy(self, comp: Component, record: PidRecord, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            if not is_alive(record):
                self._fail(comp, record, "exited during startup")
            if comp.healthy():
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)  # fast first probes: Redis is up in ~20 ms
        self._fail(comp, record, f"not healthy after {timeout_s:.0f} s")

    def _fail(self, comp: Component, record: PidRecord, why: str) -> None:
        # Never leave a half-started process behind: the next `up` starts from a clean slate.
        stop_group(record, timeout_s=5)
        self.layout.pid_file(comp.name).unlink(missing_ok=True)
        lines = tail(comp.log_path, 30)
        # Show this start only: older runs' lines in the same (appended) log would mislead.
        starts = [i for i, ln in enumerate(lines) if ln.startswith("===== ")]
        lines = lines[starts[-1]:] if starts else lines
        raise StackError(comp.name, why, hint=comp.diagnose(lines), log_tail=lines, log_path=comp.log_path)

    # --- down ----------------------------------------------------------------------------------------------
    def down(self, names: list[str] | None = None) -> dict[str, str]:
        """Stop the selected processes (all by default), apps first, side by side; verify their ports are closed.

        Only the named components stop (`down gateway` leaves the registry it depends on running).
        """
        wanted = set(names) if names else set(KNOWN_COMPONENTS)
        resolve_components(list(wanted))  # validates the names
        selected = [n for n in reversed(KNOWN_COMPONENTS) if n in wanted and n in PROCESS_COMPONENTS]
        stopped: dict[str, tuple[str, list[str]]] = {}
        # Apps first: ingest must commit its last batch while Kafka and Triton are still there.
        # The API server before etcd: with its storage gone it would hang in its graceful shutdown.
        for phase in ([n for n in selected if n in APP_PROCESSES], [n for n in selected if n == "kube"],
                      [n for n in selected if n not in APP_PROCESSES and n != "kube"]):
            if not phase:
                continue
            with ThreadPoolExecutor(max_workers=len(phase), thread_name_prefix="stack-down") as pool:
                stopped.update(zip(phase, pool.map(self._down_process, phase)))
        outcomes = {name: how for name, (how, _) in stopped.items()}
        problems = [p for _, (_, probs) in stopped.items() for p in probs]
        if problems:
            raise StackError(",".join(selected), "down left ports open:\n  " + "\n  ".join(problems))
        return outcomes

    def _down_process(self, name: str) -> tuple[str, list[str]]:
        comp = self.components[name]
        pid_file = self.layout.pid_file(name)
        record = PidRecord.load(pid_file)
        if record is None:
            how = "not running"
        else:
            how = stop_group(record, comp.stop_timeout_s(record.cmd))
            pid_file.unlink(missing_ok=True)
            comp.after_stop()
            log.info("component stopped", extra={"component": name, "pid": record.pid, "how": how})
        problems = []
        for port in wait_ports_closed(self.settings.host, comp.ports(), timeout_s=5.0):
            pids = listener_pids(port)
            owners = ", ".join(describe_pid(p) for p in pids) or "an unknown process"
            if record is not None and any(process_group(p) == record.pid for p in pids):
                why = f"started by this stack as pid {record.pid} but still running after '{how}'; kill it"
            else:
                why = f"not started by this stack from {self.layout.root}; stop it yourself"
            problems.append(f"{name}: port {port} still open, held by {owners} ({why})")
        return how, problems

    def logs(self, name: str, n: int = 50) -> list[str]:
        resolve_components([name])
        return tail(self.layout.log_file(name), n)
