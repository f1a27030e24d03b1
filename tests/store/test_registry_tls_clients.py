"""TLS from the client's side, against a real docker-registry: client certificates
from docker's ``certs.d/HOST:PORT/client.cert`` + ``client.key`` for a registry that
requires them (``http.tls.clientcas``), and plain HTTP refused for a registry that is
not on loopback unless it is named insecure (``LAMINA_INSECURE_REGISTRIES``) - shown
in a network namespace the test makes, where the registry listens on 10.213.0.1 (a
real non-loopback address, reached without touching the host's network)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lamina.store.registry.session import RegistrySession
from tests.builder.buildkit import lamina
from tests.conftest import require_tool
from tests.store.registryblobs import push_layers, tar_layer
from tests.store.registryfix import make_pki, registry

REPO = Path(__file__).resolve().parents[2]


def _client_pki(workdir: Path) -> dict[str, Path]:
    """A client CA (another than the server's) and a client certificate it signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ci-runner")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = {"clientcas": workdir / "client-ca.crt", "client_cert": workdir / "client.cert",
           "client_key": workdir / "client.key"}
    out["clientcas"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["client_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out["client_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return out


def test_client_certificate_from_certs_d(tmp_path, monkeypatch):
    pki = make_pki(tmp_path / "pki")
    client = _client_pki(tmp_path / "pki")
    certs_d = tmp_path / "certs.d"
    monkeypatch.setenv("LAMINA_CERTS_D", str(certs_d))
    with registry(tmp_path / "reg", tls={**pki, **client}) as host:
        d = certs_d / host
        d.mkdir(parents=True)
        (d / "ca.crt").write_bytes(pki["ca"].read_bytes())

        refused = lamina(tmp_path / "s", "pull", f"{host}/mtls/app:1")
        assert refused.code == 1
        assert "Traceback" not in refused.stderr
        assert "client certificate" in refused.stderr, refused.stderr
        assert "client.cert" in refused.stderr  # says where lamina looks for one

        # a certificate of another CA than the registry's clientcas: refused as clearly
        (d / "client.cert").write_bytes(pki["cert"].read_bytes())
        (d / "client.key").write_bytes(pki["key"].read_bytes())
        wrong = lamina(tmp_path / "s", "pull", f"{host}/mtls/app:1")
        assert wrong.code == 1 and "client certificate" in wrong.stderr, wrong.stderr

        (d / "client.cert").write_bytes(client["client_cert"].read_bytes())
        (d / "client.key").write_bytes(client["client_key"].read_bytes())
        with RegistrySession(host) as s:
            digest = push_layers(s, "mtls/app", "1", [tar_layer({"m": b"mutual\n"})])
        pulled = lamina(tmp_path / "s", "pull", f"{host}/mtls/app:1")
        assert pulled.code == 0, pulled.stderr
        assert f"Digest: {digest}" in pulled.stderr


@pytest.mark.parametrize("host, allowed", [
    ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.3.4.5", True), ("[::1]:5000", True),
    ("10.213.0.1:5000", False), ("registry.internal:5000", False), ("192.168.1.10", False),
    ("localhost.example.com:5000", False), ("[fe80::1]:5000", False),
])
def test_plain_http_decision(host, allowed, monkeypatch):
    monkeypatch.delenv("LAMINA_INSECURE_REGISTRIES", raising=False)
    assert RegistrySession(host).plain_allowed is allowed
    monkeypatch.setenv("LAMINA_INSECURE_REGISTRIES", f"other:1, {host}")
    assert RegistrySession(host).plain_allowed is True


NETNS_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "10.213.0.1/24", "dev", "lo"], check=True)
    from lamina.store.registry.session import RegistrySession
    from tests.builder.buildkit import lamina
    from tests.store.registryblobs import push_layers, tar_layer
    from tests.store.registryfix import registry
    work = Path(sys.argv[1])
    out = {}
    os.environ.pop("LAMINA_INSECURE_REGISTRIES", None)
    with registry(work / "reg", bind="10.213.0.1") as host:
        with RegistrySession(host, insecure=(host,)) as s:
            out["digest"] = push_layers(s, "plain/app", "1", [tar_layer({"p": b"plain\\n"})])
        run = lamina(work / "s1", "pull", f"{host}/plain/app:1")
        out["refused"] = [run.code, run.stderr]
        os.environ["LAMINA_INSECURE_REGISTRIES"] = host
        run = lamina(work / "s2", "pull", f"{host}/plain/app:1")
        out["allowed"] = [run.code, run.stderr]
        del os.environ["LAMINA_INSECURE_REGISTRIES"]
        run = lamina(work / "s2", "push", f"{host}/plain/app:1", f"{host}/plain/copy:1")
        out["push_refused"] = [run.code, run.stderr]
        out["host"] = host
    print(json.dumps(out))
""")


@pytest.mark.root
def test_plain_http_refused_off_loopback_unless_named_insecure(tmp_path):
    """In a network namespace of its own, a registry on 10.213.0.1 speaking plain
    HTTP: lamina refuses it (no request goes out in clear text) until it is named in
    LAMINA_INSECURE_REGISTRIES."""
    unshare = require_tool("unshare")
    require_tool("ip")
    proc = subprocess.run([unshare, "--net", sys.executable, "-c", NETNS_SCRIPT, str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    host = out["host"]
    code, err = out["refused"]
    assert code == 1 and "Traceback" not in err
    assert f"cannot reach registry {host} over HTTPS" in err, err
    assert "LAMINA_INSECURE_REGISTRIES" in err  # says how to allow it
    code, err = out["push_refused"]
    assert code == 1 and "over HTTPS" in err
    code, err = out["allowed"]
    assert code == 0, err
    assert f"Digest: {out['digest']}" in err
