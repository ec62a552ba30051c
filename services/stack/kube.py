"""A Kubernetes control plane without nodes: etcd + kube-apiserver, for the Kubernetes job backend (services/kube).

Both binaries are built from source through the Go module proxy by `scripts/kube_build.sh` into
`$QANCHOR_CACHE_DIR/bin` (first time: minutes; later starts reuse them), the way Kafka's JARs come from Maven.
The API server is real (authentication, RBAC, admission, validation, watches, the status subresource), but
there is no kubelet, scheduler or controller-manager: Pods are never scheduled or run, the Job controller
never creates Pods, and the garbage collector never deletes dependents. Tests play those parts through the API
(create a Job's Pod, write Pod and Job status through the status subresource); see docs/jobs.md.

`prepare` writes, under $QANCHOR_STATE_DIR/kube: the service-account signing key (openssl), a token file with
one cluster-admin token (group system:masters), and `kubeconfig` pointing at https://127.0.0.1:<base+43> with
the API server's self-signed certificate as CA. Clients: `kubernetes.config.load_kube_config(<that file>)`.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from services.common.settings import repo_root
from services.stack.components import Component, StackError
from services.stack.settings import StackSettings

log = logging.getLogger(__name__)

KUBE_VERSION = "v1.34.3"  # = QANCHOR_KUBE_VERSION default in scripts/kube_build.sh
ETCD_VERSION = "v3.6.5"   # = QANCHOR_ETCD_VERSION default
ADMIN_USER = "qanchor-admin"
BUILD_HINT = ("build them with scripts/kube_build.sh (needs Go >= 1.24 and the Go module proxy), or point "
              "QANCHOR_KUBE_APISERVER / QANCHOR_ETCD at prebuilt binaries")


def kube_binaries(settings: StackSettings) -> tuple[Path, Path]:
    """(kube-apiserver, etcd) paths: QANCHOR_KUBE_APISERVER / QANCHOR_ETCD, else the build cache."""
    cache = Path(settings.cache_dir).expanduser() / "bin"
    apiserver = Path(os.environ.get("QANCHOR_KUBE_APISERVER") or cache / f"kube-apiserver-{KUBE_VERSION}")
    etcd = Path(os.environ.get("QANCHOR_ETCD") or cache / f"etcd-{ETCD_VERSION}")
    return apiserver, etcd


def ensure_binaries(settings: StackSettings, component: str) -> tuple[Path, Path]:
    """Build the binaries once (scripts/kube_build.sh) when the cache lacks them."""
    apiserver, etcd = kube_binaries(settings)
    if apiserver.is_file() and etcd.is_file():
        return apiserver, etcd
    script = repo_root() / "scripts" / "kube_build.sh"
    log.info("building kube-apiserver and etcd (first time: several minutes)",
             extra={"event": "kube_build", "script": str(script)})
    env = {**os.environ, "QANCHOR_CACHE_DIR": str(Path(settings.cache_dir).expanduser())}
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (apiserver.is_file() and etcd.is_file()):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise StackError(component, f"could not build kube-apiserver/etcd (exit {proc.returncode})",
                         hint=BUILD_HINT, log_tail=tail)
    return apiserver, etcd


class Etcd(Component):
    """etcd for the API server; data under $QANCHOR_STATE_DIR/etcd, client and peer URLs on loopback."""

    name = "etcd"
    default_hint = "see `qanchor stack logs etcd -n 100`; delete $QANCHOR_STATE_DIR/etcd to start from scratch"

    def ports(self) -> list[int]:
        return [self.settings.port("etcd"), self.settings.port("etcd_peer")]

    def client_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port('etcd')}"

    def address(self) -> str:
        return self.client_url()

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        _, etcd = ensure_binaries(self.settings, self.name)
        peer = f"http://{self.settings.host}:{self.settings.port('etcd_peer')}"
        return [
            str(etcd), "--name", "qanchor", "--data-dir", str(self.workdir / "data"),
            "--listen-client-urls", self.client_url(), "--advertise-client-urls", self.client_url(),
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"qanchor={peer}", "--log-level", "warn",
            # A development control plane: losing the last writes on a machine crash is acceptable; fsync on a
            # busy shared disk would make every API write wait on it.
            "--unsafe-no-fsync",
        ]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.client_url()}/health", timeout=2.0) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (urllib.error.URLError, OSError, ValueError):
            return False


class KubeApiserver(Component):
    """kube-apiserver on https://127.0.0.1:<base+43>, token authentication, RBAC authorisation."""

    name = "kube"
    hints = [(r"connection refused.*2379|failed to connect to etcd|context deadline exceeded",
              "the API server cannot reach etcd: start it first (`qanchor stack up etcd`)")]
    default_hint = "see `qanchor stack logs kube -n 100`"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def ports(self) -> list[int]:
        return [self.settings.port("kube_apiserver")]

    def server(self) -> str:
        return f"https://{self.settings.host}:{self.settings.port('kube_apiserver')}"

    def address(self) -> str:
        return f"{self.server()} (kubeconfig {self.kubeconfig})"

    def admin_token(self) -> str:
        """The cluster-admin token of this state dir (created on first use, mode 600)."""
        path = self.workdir / "admin.token"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def prepare(self) -> None:
        (self.workdir / "certs").mkdir(parents=True, exist_ok=True)
        key = self.workdir / "sa.key"
        if not key.exists():
            try:
                subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise StackError(self.name, f"could not create the service-account key with openssl: {exc}",
                                 hint="install openssl (apt-get install openssl)") from None
            key.chmod(0o600)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.admin_token()},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        tokens.chmod(0o600)
        self.write_kubeconfig()

    def write_kubeconfig(self) -> Path:
        # The API server writes its self-signed serving certificate (and the CA that signed it) on first start.
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "qanchor-local",
            "clusters": [{"name": "qanchor-local", "cluster": {
                "server": self.server(), "certificate-authority": str(self.workdir / "certs" / "apiserver.crt")}}],
            "users": [{"name": ADMIN_USER, "user": {"token": self.admin_token()}}],
            "contexts": [{"name": "qanchor-local", "context": {
                "cluster": "qanchor-local", "user": ADMIN_USER, "namespace": "default"}}],
        }
        fd = os.open(self.kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        return self.kubeconfig

    def command(self) -> list[str]:
        apiserver, _ = ensure_binaries(self.settings, self.name)
        h = self.settings.host
        return [
            str(apiserver),
            f"--etcd-servers=http://{h}:{self.settings.port('etcd')}",
            f"--bind-address={h}", f"--advertise-address={h}",
            f"--secure-port={self.settings.port('kube_apiserver')}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.workdir / 'sa.key'}",
            f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--profiling=false",
            "--v=1",
        ]

    def healthy(self) -> bool:
        ca = self.workdir / "certs" / "apiserver.crt"
        if not ca.is_file():
            return False
        try:
            ctx = ssl.create_default_context(cafile=str(ca))
            req = urllib.request.Request(f"{self.server()}/readyz",
                                         headers={"Authorization": f"Bearer {self.admin_token()}"})
            with urllib.request.urlopen(req, timeout=2.0, context=ctx) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False
