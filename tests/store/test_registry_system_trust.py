"""The system CAs a registry session trusts (store.registry.session._system_trust):
OpenSSL's hashed certificate directory ($SSL_CERT_DIR) named as a directory, plus
$SSL_CERT_FILE when it is another file than that directory's own bundle - checked
against a real docker-registry behind TLS whose CA is only in the place under test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lamina.store.registry.session import RegistryError, RegistrySession
from tests.conftest import require_tool
from tests.store.registryfix import make_pki, registry


def _hashed_dir(where: Path, *cas: Path) -> Path:
    """A directory as c_rehash/update-ca-certificates leave it: <subject hash>.N links."""
    openssl = require_tool("openssl")
    where.mkdir(parents=True)
    for i, ca in enumerate(cas):
        h = subprocess.run([openssl, "x509", "-subject_hash", "-noout", "-in", str(ca)],
                           check=True, capture_output=True, text=True).stdout.strip()
        shutil.copy(ca, where / f"ca{i}.pem")
        n = 0
        while (where / f"{h}.{n}").exists():  # same subject: OpenSSL tries .0, .1, ...
            n += 1
        (where / f"{h}.{n}").symlink_to(f"ca{i}.pem")
    return where


def _ping(host: str) -> int:
    with RegistrySession(host) as s:
        with s.request("GET", "/v2/", scope="", ok=(200, 401)) as resp:
            return resp.status_code


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("trust")
    pki = make_pki(base / "pki")
    other = make_pki(base / "other")  # another CA: a hashed dir that lacks ours
    with registry(base / "reg", tls=pki) as host:
        yield host, pki, other, base


def test_ca_in_the_hashed_directory_is_trusted(tls_registry, tmp_path, monkeypatch):
    host, pki, other, _ = tls_registry
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("LAMINA_CERTS_D", str(tmp_path / "none"))
    monkeypatch.setenv("SSL_CERT_DIR", str(_hashed_dir(tmp_path / "with", pki["ca"])))
    assert _ping(host) == 200
    monkeypatch.setenv("SSL_CERT_DIR", str(_hashed_dir(tmp_path / "without", other["ca"])))
    with pytest.raises(RegistryError, match="not trusted"):
        _ping(host)


def test_ssl_cert_file_is_trusted_beside_the_directory(tls_registry, tmp_path, monkeypatch):
    host, pki, other, _ = tls_registry
    monkeypatch.setenv("LAMINA_CERTS_D", str(tmp_path / "none"))
    monkeypatch.setenv("SSL_CERT_DIR", str(_hashed_dir(tmp_path / "without", other["ca"])))
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))
    assert _ping(host) == 200
    # the directory's own bundle named as the file adds nothing the directory lacks
    bundle = tmp_path / "without" / "ca-certificates.crt"
    bundle.write_bytes(other["ca"].read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    with pytest.raises(RegistryError, match="not trusted"):
        _ping(host)
