"""The registry client's transport against real servers on loopback: TLS with a CA
the test makes (refused without it, accepted through certs.d), the bearer-token flow
with a token service of the test's, and a fault-injecting proxy in front of a real
registry (a corrupt byte, a dropped connection, 500 and 429 answers)."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from pathlib import Path

import pytest

from lamina.store.errors import CorruptContent, StoreError
from lamina.store.registry.pull import pull_image
from lamina.store.registry.push import push_image
from lamina.store.registry.session import RegistrySession
from lamina.store.store import Store
from tests.builder.buildkit import lamina
from tests.store.registryfix import TokenService, free_port, make_pki, registry, store_with_app

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def source_store(tmp_path_factory):
    """`app:1` with a 300 kB incompressible layer (the fault proxy spoils big blobs)."""
    return store_with_app(tmp_path_factory.mktemp("src"),
                          "FROM bb\nRUN head -c 300000 /dev/urandom > /blob\n")


def _image_id(root: Path, ref: str) -> str:
    with Store(root) as s:
        return s.resolve(ref).config_digest


def test_tls_registry_needs_its_ca(source_store, tmp_path, monkeypatch):
    pki = make_pki(tmp_path / "pki")
    certs_d = tmp_path / "certs.d"
    with registry(tmp_path / "reg", tls=pki) as host:
        monkeypatch.setenv("LAMINA_CERTS_D", str(certs_d))
        refused = lamina(source_store, "push", "app:1", f"{host}/tls/app:1")
        assert refused.code == 1
        assert "certificate" in refused.stderr.lower() or "ssl" in refused.stderr.lower()
        assert "Traceback" not in refused.stderr
        (certs_d / host).mkdir(parents=True)
        (certs_d / host / "ca.crt").write_bytes(pki["ca"].read_bytes())
        assert lamina(source_store, "push", "app:1", f"{host}/tls/app:1").code == 0
        fresh = tmp_path / "fresh"
        pulled = lamina(fresh, "pull", f"{host}/tls/app:1")
        assert pulled.code == 0, pulled.stderr
        assert _image_id(fresh, f"{host}/tls/app:1") == _image_id(source_store, "app:1")


def test_bearer_token_flow(source_store, tmp_path, monkeypatch):
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    tokens = TokenService(tmp_path / "tok", "robot", "t0ken-pw")
    with tokens.serving(), registry(tmp_path / "reg", token=tokens) as host:
        anonymous = lamina(source_store, "push", "app:1", f"{host}/tok/app:1")
        assert anonymous.code == 1 and f"lamina login {host}" in anonymous.stderr
        login = lamina(source_store, "login", host, "-u", "robot", "--password", "t0ken-pw")
        assert login.code == 0, login.stderr
        assert lamina(source_store, "push", "app:1", f"{host}/tok/app:1").code == 0
        issued = tokens.issued
        fresh = tmp_path / "fresh"
        pulled = lamina(fresh, "pull", f"{host}/tok/app:1")
        assert pulled.code == 0, pulled.stderr
        # one token per scope and command, reused for every blob of that command
        assert tokens.issued - issued <= 2
        assert _image_id(fresh, f"{host}/tok/app:1") == _image_id(source_store, "app:1")


class FaultProxy:
    """HTTP proxy to a registry that spoils blob GETs as told: `corrupt` flips one
    byte, `drop` closes the connection halfway, `500`/`429` answer an error; each
    fault fires `times` times, then requests pass through."""

    def __init__(self, upstream: str, fault: str, times: int = 1) -> None:
        self.upstream, self.fault, self.left = upstream, fault, times
        self.port = free_port()
        self.blob_gets = 0
        self.ranges: list[str] = []

    def __enter__(self) -> str:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                is_blob = self.command == "GET" and "/blobs/sha256:" in self.path and len(data) > 100000
                if is_blob:
                    proxy.blob_gets += 1
                    if self.headers.get("Range"):
                        proxy.ranges.append(self.headers["Range"])
                if is_blob and proxy.left > 0:
                    proxy.left -= 1
                    if proxy.fault in ("500", "429"):
                        self.send_response(int(proxy.fault))
                        if proxy.fault == "429":
                            self.send_header("Retry-After", "0")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if proxy.fault == "corrupt":
                        data = data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:]
                    if proxy.fault == "drop":
                        self.send_response(resp.status)
                        for k, v in resp.getheaders():
                            if k.lower() not in ("transfer-encoding", "connection"):
                                self.send_header(k, v)
                        self.end_headers()
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pushed(source_store, tmp_path_factory):
    with registry(tmp_path_factory.mktemp("reg")) as host:
        with Store(source_store) as s:
            push_image(s, "app:1", f"{host}/faults/app:1")
        yield host


@pytest.mark.parametrize("fault", ["drop", "500", "429"])
def test_transient_faults_are_retried(pushed, source_store, tmp_path, fault):
    with FaultProxy(pushed, fault) as proxy, Store(tmp_path / "s") as store:
        pulled = pull_image(store, f"{proxy}/faults/app:1")
        assert pulled.image.config_digest == _image_id(source_store, "app:1")
        assert pulled.image.config_digest == store.resolve(f"{proxy}/faults/app:1").config_digest


def test_dropped_download_resumes_with_range(pushed, tmp_path):
    proxy = FaultProxy(pushed, "drop")
    with proxy as host, Store(tmp_path / "s") as store:
        pull_image(store, f"{host}/faults/app:1")
    # the second request for the blob asked only for what was missing
    assert proxy.ranges and all(r.startswith("bytes=") and not r.startswith("bytes=0-")
                                for r in proxy.ranges)


def test_corrupt_blob_is_refused_and_nothing_stored(pushed, tmp_path):
    with FaultProxy(pushed, "corrupt", times=10) as proxy, Store(tmp_path / "s") as store:
        before = sorted(store.blobs.digests())
        with pytest.raises(CorruptContent, match="digest"):
            pull_image(store, f"{proxy}/faults/app:1")
        assert sorted(store.blobs.digests()) == before
        assert store.images() == []


def test_self_referencing_index_and_huge_manifest(pushed, tmp_path):
    from lamina.store import oci
    from lamina.store.blobs import sha256_digest

    with RegistrySession(pushed) as s:
        scope = "repository:faults/weird:pull,push"
        huge = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": {},
                           "layers": [], "annotations": {"x": "y" * (5 << 20)}}).encode()
        with s.request("PUT", "/v2/faults/weird/manifests/huge", scope=scope, body=huge,
                       headers={"Content-Type": oci.OCI_MANIFEST}, ok=(201, 400)) as r:
            stored_huge = r.status_code == 201
        # an index naming an index (itself cannot be named: its digest depends on its bytes)
        inner = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []}).encode()
        with s.request("PUT", "/v2/faults/weird/manifests/inner", scope=scope, body=inner,
                       headers={"Content-Type": oci.OCI_INDEX}, ok=(201,)):
            pass
        from lamina.store.registry.pull import host as host_platform
        me = host_platform()
        outer = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
            {"mediaType": oci.OCI_INDEX, "digest": sha256_digest(inner), "size": len(inner),
             "platform": {"os": me.os, "architecture": me.architecture}}]}).encode()
        with s.request("PUT", "/v2/faults/weird/manifests/outer", scope=scope, body=outer,
                       headers={"Content-Type": oci.OCI_INDEX}, ok=(201,)):
            pass
    with Store(tmp_path / "s") as store:
        with pytest.raises(StoreError, match="another index"):
            pull_image(store, f"{pushed}/faults/weird:outer")
        if stored_huge:
            with pytest.raises(StoreError, match="MiB"):
                pull_image(store, f"{pushed}/faults/weird:huge")
        assert store.images() == []


def test_credentials_never_go_to_another_host(tmp_path):
    """A registry may hand out an upload Location on another host (blob storage): the
    request goes there, but without the registry's Authorization header."""
    import base64

    from lamina.store.registry.auth import Credentials

    seen: dict[str, list] = {"registry": [], "other": []}

    def server(name, handle):
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen[name].append((self.command, self.path, self.headers.get("Authorization")))
                status, headers = handle(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_HEAD = _any

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    other = server("other", lambda h: (201, {}))
    want = "Basic " + base64.b64encode(b"ci:pw").decode()

    def registry_handle(h):
        if h.headers.get("Authorization") != want:
            return 401, {"WWW-Authenticate": 'Basic realm="test"'}
        if h.command == "POST":
            return 202, {"Location": f"http://127.0.0.1:{other.server_port}/upload?state=1"}
        return 200, {}

    reg = server("registry", registry_handle)
    try:
        host = f"127.0.0.1:{reg.server_port}"
        with RegistrySession(host, credentials=Credentials("ci", "pw")) as s:
            scope = "repository:x/y:pull,push"
            with s.request("POST", "/v2/x/y/blobs/uploads/", scope=scope, ok=(202,)) as r:
                location = r.headers["location"]
            with s.request("PUT", location + "&digest=sha256:" + "0" * 64, scope=scope, body=b"data",
                           ok=(201,)):
                pass
    finally:
        reg.shutdown()
        other.shutdown()
        reg.server_close()
        other.server_close()
    assert any(auth == want for _, _, auth in seen["registry"])
    assert seen["other"] and all(auth is None for _, _, auth in seen["other"]), seen["other"]
