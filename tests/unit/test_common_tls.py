"""TLS and mutual TLS with a real handshake: the test makes its own CA (openssl), a server certificate for
127.0.0.1 and a client certificate, and talks to a real registry server through the project's clients."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from services.common.errors import Unavailable
from services.common.grpc_client import ClientTls
from services.common.grpc_server import create_server
from services.registry.client import RegistryClient
from services.registry.server import build_app
from services.registry.servicer import AUTH_POLICY
from services.registry.settings import RegistrySettings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make the test CA")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d: Path, name: str, subject: str, ext: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
             cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
             f"{name}.pem", "-days", "2", "-sha256", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=qanchor test CA", cwd=d)
    _issue(d, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _issue(d, "client", "/CN=gateway", "extendedKeyUsage=clientAuth\n")
    # A second, unrelated CA: its certificates must be refused.
    other = d / "other"
    other.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=someone else", cwd=other)
    return d


def _registry(tmp_path: Path, pki: Path, mutual: bool):  # type: ignore[no-untyped-def]
    settings = RegistrySettings(grpc_port=0, token="tok", admin_token="adm", host="127.0.0.1",
                                database_url=f"sqlite:///{tmp_path / 'r.db'}", tls_cert_file=pki / "server.pem",
                                tls_key_file=pki / "server.key",
                                tls_client_ca_file=pki / "ca.pem" if mutual else None)
    app = build_app(settings)
    server, port = create_server(settings, app.grpc_servicer(), service="registry", auth_policy=AUTH_POLICY)
    server.start()
    return server, app, f"127.0.0.1:{port}"


def test_tls_handshake_with_the_test_ca(tmp_path: Path, pki: Path) -> None:
    server, app, target = _registry(tmp_path, pki, mutual=False)
    try:
        with RegistryClient(target, token="adm", tls=ClientTls(ca_file=pki / "ca.pem")) as client:
            client.register_scenario("tls_ok", "Does this user like encrypted traffic?")
            assert [s.name for s in client.list_scenarios()] == ["tls_ok"]
        with RegistryClient(target, token="adm", timeout_s=5) as plaintext, pytest.raises(Unavailable):
            plaintext.list_scenarios()  # a plaintext client cannot talk to a TLS server
        with RegistryClient(target, token="adm", timeout_s=5, tls=ClientTls(ca_file=pki / "other" / "ca.pem")) as c, \
                pytest.raises(Unavailable):
            c.list_scenarios()  # nor one that trusts another CA
    finally:
        server.stop(0)
        app.db.dispose()


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path: Path, pki: Path) -> None:
    server, app, target = _registry(tmp_path, pki, mutual=True)
    try:
        with RegistryClient(target, token="adm", tls=ClientTls(pki / "ca.pem", pki / "client.pem",
                                                               pki / "client.key")) as client:
            assert client.list_scenarios() == []
        with RegistryClient(target, token="adm", timeout_s=5, tls=ClientTls(ca_file=pki / "ca.pem")) as anonymous, \
                pytest.raises(Unavailable):
            anonymous.list_scenarios()  # TLS but no client certificate: the handshake fails
    finally:
        server.stop(0)
        app.db.dispose()


def test_half_a_tls_configuration_is_refused(tmp_path: Path) -> None:
    from services.common.settings import GrpcServerSettings

    with pytest.raises(ValueError, match="both TLS_CERT_FILE and TLS_KEY_FILE"):
        create_server(GrpcServerSettings(grpc_port=0, tls_cert_file=tmp_path / "x.pem"))
    with pytest.raises(ValueError, match="mutual TLS is TLS first"):
        create_server(GrpcServerSettings(grpc_port=0, tls_client_ca_file=tmp_path / "ca.pem"))
