"""Kafka broker in KRaft mode (one JVM that is both broker and controller), from Maven Central JARs.

First start: Maven copies `org.apache.kafka:kafka_2.13` and its runtime into
`$QANCHOR_CACHE_DIR/kafka-<version>/libs` (shared by all clones), the storage dir is formatted with a fresh
cluster id, then `kafka.Kafka server.properties` runs. Later starts reuse both.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.common.settings import repo_root
from services.stack.components import Component, StackError, require_executable
from services.stack.procs import port_open
from services.stack.settings import KAFKA_VERSION, StackSettings

log = logging.getLogger(__name__)

TOPICS_FILE = Path(__file__).with_name("topics.yaml")
POM = Path("scripts") / "kafka" / "pom.xml"
JAVA_HINT = "java not found: run scripts/setup_env.sh (installs openjdk-17-jre-headless)"
MVN_HINT = "mvn not found: run scripts/setup_env.sh (installs maven)"

LOG4J2_PROPERTIES = """\
# Written by services.stack: the broker logs to stdout, which the stack appends to logs/kafka.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
# The state-change and request loggers are chatty at INFO and say nothing a developer needs.
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int = 1
    configs: dict[str, str] = field(default_factory=dict)


def load_topics(path: Path = TOPICS_FILE) -> list[TopicSpec]:
    """The project's topics (services/stack/topics.yaml); ingest and tests read names from here too."""
    data = yaml.safe_load(path.read_text()) or {}
    specs = []
    for item in data.get("topics", []):
        specs.append(TopicSpec(name=str(item["name"]), partitions=int(item.get("partitions", 1)),
                               replication=int(item.get("replication", 1)),
                               configs={str(k): str(v) for k, v in (item.get("configs") or {}).items()}))
    return specs


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what kafka-storage random-uuid prints).

    Never one that starts with "-" (1 in 64 of them): a command line reads it as an option (`-t -VVn...`: "argument
    --cluster-id/-t: expected one argument"), which is why Kafka's own Uuid.randomUuid draws again too."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def render_server_properties(settings: StackSettings, data_dir: Path) -> str:
    """server.properties of a single-node combined broker+controller tuned to start fast."""
    host = settings.host
    broker, controller = settings.port("kafka"), settings.port("kafka_controller")
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # Static voter set: one node, no dynamic-quorum bootstrap needed at format time.
        "controller.quorum.voters": f"1@{host}:{controller}",
        "listeners": f"PLAINTEXT://{host}:{broker},CONTROLLER://{host}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{host}:{broker}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(settings.kafka_partitions),
        # One node: every internal topic must accept replication factor 1 or the coordinators never start.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # No waiting for more consumers to join: tests start one consumer and expect it to get partitions now.
        "group.initial.rebalance.delay.ms": "0",
        # Typos in topic names should fail loudly, not create a topic nobody reads.
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.retention.check.interval.ms": "60000",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


class Kafka(Component):
    name = "kafka"
    hints = [
        (r"OutOfMemoryError", "the broker ran out of heap: raise QANCHOR_STACK_KAFKA_HEAP (default 512m)"),
        (r"ClassNotFoundException|NoClassDefFoundError",
         "the JAR cache is incomplete: delete $QANCHOR_CACHE_DIR/kafka-<version> and run up again"),
        (r"(?i)cluster\.id|InconsistentClusterIdException|meta\.properties",
         "the storage dir belongs to another cluster: `down`, delete $QANCHOR_STATE_DIR/kafka, `up` again"),
        (r"UnsupportedClassVersionError", "Kafka 4 needs Java 17 or newer: run scripts/setup_env.sh"),
    ]
    default_hint = "see the full log with `python -m services.stack logs kafka -n 200`"

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(settings)
        self.libs = settings.kafka_home / "libs"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def bootstrap(self) -> str:
        return f"{self.settings.host}:{self.settings.port('kafka')}"

    def ports(self) -> list[int]:
        return [self.settings.port("kafka"), self.settings.port("kafka_controller")]

    def address(self) -> str:
        return self.bootstrap

    # --- preparation -----------------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.java = require_executable(self.name, self.settings.java, JAVA_HINT)
        self.ensure_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "server.properties").write_text(render_server_properties(self.settings, self.data_dir))
        (self.workdir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        if not (self.data_dir / "meta.properties").exists():
            self.format_storage()

    def ensure_jars(self) -> None:
        """Resolve the broker JARs with Maven once per version; later calls are a directory check."""
        if (self.libs / ".complete").exists():
            return
        mvn = require_executable(self.name, self.settings.mvn, MVN_HINT)
        pom = repo_root() / POM
        # Copy into a temp dir and rename: an interrupted download never looks complete.
        tmp = self.libs.with_name(f"libs.tmp-{uuid.uuid4().hex[:8]}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        log.info("resolving kafka jars (first time only, ~1 min)", extra={"version": KAFKA_VERSION,
                                                                           "cache": str(self.libs)})
        cmd = [mvn, "-q", "-B", "-f", str(pom), f"-Dkafka.version={KAFKA_VERSION}",
               "dependency:copy-dependencies", f"-DoutputDirectory={tmp}"]
        self._run_setup_step(cmd, "resolving the Kafka JARs with Maven failed",
                             "check that Maven Central is reachable (mvn -v; ~/.m2/settings.xml proxies)", 600)
        (tmp / ".complete").write_text(KAFKA_VERSION + "\n")
        try:
            tmp.rename(self.libs)
        except OSError:  # another stack finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)

    def format_storage(self) -> None:
        cluster_id_file = self.workdir / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id() + "\n")
        cluster_id = cluster_id_file.read_text().strip()
        log.info("formatting kafka storage", extra={"dir": str(self.data_dir), "cluster_id": cluster_id})
        # Map the broker's archive when there is one (most classes overlap); never dump from this short run.
        cds = [a for a in self.cds_opts(self.java) if not a.startswith("-XX:ArchiveClassesAtExit")]
        # "--cluster-id=ID", not "-t ID": a state dir made before new_cluster_id skipped "-..." ids may hold one
        cmd = [self.java, "-Xmx256m", *self.settings.kafka_jvm_opts.split(), *cds, *self._log_opts(), "-cp",
               str(self.libs / "*"), "kafka.tools.StorageTool", "format", "--ignore-formatted",
               f"--cluster-id={cluster_id}", "-c", str(self.workdir / "server.properties")]
        self._run_setup_step(cmd, "formatting the Kafka storage dir failed", self.default_hint, 180)

    def _run_setup_step(self, cmd: list[str], what: str, hint: str, timeout_s: float) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"\n===== setup: {' '.join(cmd)}\n".encode())
            out.flush()
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                rc = None
        if rc != 0:
            from services.stack.procs import tail

            reason = "timed out" if rc is None else f"exit code {rc}"
            raise StackError(self.name, f"{what} ({reason})", hint=hint, log_tail=tail(self.log_path, 30),
                             log_path=self.log_path)

    def _log_opts(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}"]

    # --- process -----------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        java = getattr(self, "java", None) or require_executable(self.name, self.settings.java, JAVA_HINT)
        heap = self.settings.kafka_heap
        return [java, f"-Xmx{heap}", f"-Xms{min_heap(heap)}", *self.settings.kafka_jvm_opts.split(),
                *self.cds_opts(java), *self._log_opts(), "-cp", str(self.libs / "*"), "kafka.Kafka",
                str(self.workdir / "server.properties")]

    # --- class-data-sharing archive ----------------------------------------------------------------------
    # The broker loads ~5,000 classes at start; an AppCDS archive of them (dumped once, when the first broker
    # of this JVM + JAR set exits) cuts 15-50 % off every later start. A stale or foreign archive is harmless:
    # the JVM validates it and silently runs without it.
    def cds_archive(self, java: str) -> Path:
        real = Path(java).resolve()
        key = hashlib.sha256(f"{real}:{real.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        return self.settings.kafka_home / f"cds-{key}.jsa"

    def _cds_pending(self, java: str) -> Path:
        # One pending dump per state dir (one broker per state dir), so concurrent stacks never share a file.
        state_key = hashlib.sha256(str(self.layout.root).encode()).hexdigest()[:12]
        return self.cds_archive(java).with_name(f"{self.cds_archive(java).name}.{state_key}.tmp")

    def cds_opts(self, java: str) -> list[str]:
        if not self.settings.kafka_cds:
            return []
        archive = self.cds_archive(java)
        # cds*=error: the dump warns about every class it skips (hundreds of lines in kafka.log).
        if archive.exists():
            return [f"-XX:SharedArchiveFile={archive}", "-Xlog:cds*=error"]
        return [f"-XX:ArchiveClassesAtExit={self._cds_pending(java)}", "-Xlog:cds*=error"]

    def stop_timeout_s(self, record_cmd: list[str]) -> float:
        # Dumping the archive at exit takes seconds on a loaded machine; a SIGKILL mid-dump would waste it.
        dumping = any(a.startswith("-XX:ArchiveClassesAtExit=") for a in record_cmd)
        return self.settings.stop_timeout_s + (60.0 if dumping else 0.0)

    def after_stop(self) -> None:
        java = getattr(self, "java", None) or shutil.which(self.settings.java)
        if not java or not self.settings.kafka_cds:
            return
        pending = self._cds_pending(java)
        if not pending.exists():
            return
        # A dump cut short (SIGKILL, full disk) leaves a file the JVM would silently ignore forever: test it.
        check = subprocess.run([java, "-Xshare:on", f"-XX:SharedArchiveFile={pending}", "-cp", str(self.libs / "*"),
                                "-version"], capture_output=True, timeout=60)
        if check.returncode != 0:
            log.warning("discarding unusable kafka class-data archive", extra={"path": str(pending)})
            pending.unlink(missing_ok=True)
            return
        pending.replace(self.cds_archive(java))  # atomic publish: readers see no archive or a whole one
        log.info("kafka class-data archive saved", extra={"path": str(self.cds_archive(java))})

    def healthy(self) -> bool:
        if not port_open(self.settings.host, self.settings.port("kafka")):
            return False
        # The listener opens before the broker has registered with the controller: ask for cluster metadata.
        from kafka.admin import KafkaAdminClient

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000,
                                     client_id="qanchor-stack-health")
        except Exception:  # kafka-python raises several types while the broker boots; all mean "not yet"
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except Exception:
            return False
        finally:
            admin.close()

    def after_healthy(self) -> None:
        created = ensure_topics(self.bootstrap, load_topics())
        if created:
            log.info("kafka topics created", extra={"topics": ",".join(created)})
        wait_group_coordinator(self.bootstrap, timeout_s=60.0)


def min_heap(heap: str) -> str:
    """Initial heap: 64m, unless the max heap is smaller (the JVM refuses Xms > Xmx)."""
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    try:
        mb = float(heap[:-1]) * units[heap[-1].lower()]
    except (KeyError, ValueError, IndexError):
        return "64m"
    return heap if mb < 64 else "64m"


def wait_group_coordinator(bootstrap: str, timeout_s: float) -> None:
    """Block until consumer groups can find a coordinator.

    A fresh broker creates `__consumer_offsets` on the first FindCoordinator request and answers
    COORDINATOR_NOT_AVAILABLE until its partitions have leaders; every consumer and admin call of the first
    seconds would otherwise have to retry. Doing it once here makes "stack up" mean "groups work".
    """
    import time

    from kafka.admin import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000, client_id="qanchor-stack")
    try:
        while True:
            try:
                admin.list_group_offsets("qanchor-stack-coordinator-probe")
                return
            except Exception as exc:  # retriable while __consumer_offsets elects leaders
                if time.monotonic() > deadline:
                    raise StackError("kafka", f"group coordinator not available after {timeout_s:.0f}s: {exc!r}",
                                     hint="check the kafka log for __consumer_offsets errors") from exc
                time.sleep(0.5)
    finally:
        admin.close()


def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> list[str]:
    """Create the missing topics; existing ones are left alone. Returns the names created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000, client_id="qanchor-stack")
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = []
        for spec in missing:
            topic = NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=spec.configs)
            try:
                admin.create_topics([topic], timeout_ms=10000)
                created.append(spec.name)
            except TopicAlreadyExistsError:  # a concurrent `up` won the race
                pass
        return created
    finally:
        admin.close()
