"""Pull's limits against a real docker-registry, seen from outside: layer downloads
run in parallel but bounded (a counting proxy sees at most PARALLEL_DOWNLOADS = 4
blob GETs at once, and more than one), a ~300 MB layer is never held whole in memory
(the pulling process's peak RSS, from wait4, stays far below it), a registry that
truncates a blob every time ends in one clear error after the bounded resumes with
a clean store, and a Docker schema 1 manifest is refused clearly."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from lamina.store.registry import pull as pull_mod
from lamina.store.registry.session import RegistrySession
from lamina.store.store import Store
from tests.builder.buildkit import lamina, lamina_argv
from tests.store.registryblobs import digest_of, push_layers, put_manifest, tar_layer, upload_blob
from tests.store.registryfix import free_port, registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CountingProxy:
    """An HTTP relay to a registry that holds each blob GET `delay` seconds and counts
    how many are in flight at once; `truncate` (a digest): that blob's answer always
    stops halfway (`mode` "drop": the connection closes before Content-Length is
    reached; "short": a complete answer of half the bytes)."""

    def __init__(self, upstream: str, delay: float = 0.0, truncate: str | None = None,
                 mode: str = "drop") -> None:
        self.upstream, self.delay, self.truncate, self.mode = upstream, delay, truncate, mode
        self.in_flight = self.max_in_flight = self.blob_gets = self.truncated = 0
        self.lock = threading.Lock()

    def __enter__(self) -> str:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                blob = self.command == "GET" and "/blobs/sha256:" in self.path
                if blob:
                    with proxy.lock:
                        proxy.blob_gets += 1
                        proxy.in_flight += 1
                        proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                    time.sleep(proxy.delay)
                try:
                    conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    conn.close()
                finally:
                    if blob:
                        with proxy.lock:
                            proxy.in_flight -= 1
                spoil = blob and proxy.truncate and proxy.path_digest(self.path) == proxy.truncate
                if spoil:
                    with proxy.lock:
                        proxy.truncated += 1
                send = data[: len(data) // 2] if spoil else data
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                short = spoil and proxy.mode == "short"
                self.send_header("Content-Length", str(len(send) if short else len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(send)
                if spoil and not short:
                    self.wfile.flush()
                    self.close_connection = True

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def path_digest(path: str) -> str:
        return path.split("/blobs/", 1)[1].split("?", 1)[0]

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("reg")) as host:
        yield host


def test_layer_downloads_are_parallel_and_bounded(reg, tmp_path):
    layers = [tar_layer({f"f{i}": f"layer {i}\n".encode() * 100}) for i in range(7)]
    with RegistrySession(reg) as s:
        push_layers(s, "many/layers", "1", layers)
    proxy = CountingProxy(reg, delay=0.3)
    with proxy as host:
        run = lamina(tmp_path / "s", "pull", f"{host}/many/layers:1")
    assert run.code == 0, run.stderr
    assert proxy.blob_gets == len(layers) + 1  # the layers and the config
    assert 1 < proxy.max_in_flight <= pull_mod.PARALLEL_DOWNLOADS == 4


LAYER_MB = 300


def _big_layer_chunks():
    """A ustar layer of one LAYER_MB MiB file of zeros, as chunks (never whole)."""
    import tarfile

    size = LAYER_MB << 20
    info = tarfile.TarInfo("big")
    info.size = size
    info.mode = 0o644
    yield info.tobuf(format=tarfile.USTAR_FORMAT)
    zeros = bytes(1 << 20)
    for _ in range(LAYER_MB):
        yield zeros
    yield bytes(1024)  # (size is a multiple of 512: no padding) two zero end blocks


@pytest.mark.root
def test_a_big_layer_is_never_whole_in_memory(reg, tmp_path):
    h = hashlib.sha256()
    total = 0
    for chunk in _big_layer_chunks():
        h.update(chunk)
        total += len(chunk)
    digest = "sha256:" + h.hexdigest()
    with RegistrySession(reg) as s:
        upload_blob(s, "big/layer", _big_layer_chunks(), digest)
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [digest]}}).encode()
        upload_blob(s, "big/layer", config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "size": len(config), "digest": digest_of(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": total,
                        "digest": digest}]}).encode()
        put_manifest(s, "big/layer", "1", manifest, "application/vnd.oci.image.manifest.v1+json")
    errfile = tmp_path / "stderr"
    with open(errfile, "wb") as err:
        # The pull is started by a small intermediate Python, which reports its wait4
        # peak: a process spawned straight from this (large) pytest process would count
        # pytest's own peak RSS as its own (Linux folds the pre-exec address space's
        # high-water mark into the child's ru_maxrss, with vfork as with fork).
        probe = ("import os, subprocess, sys\n"
                 "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
                 "_, status, usage = os.wait4(p.pid, 0)\n"
                 "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")
        out = subprocess.run([sys.executable, "-c", probe,
                              *lamina_argv(tmp_path / "s", "pull", f"{reg}/big/layer:1")],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, check=True)
    code, maxrss = (int(x) for x in out.stdout.split())
    assert code == 0, errfile.read_text()
    peak_mb = maxrss / 1024  # (KiB on Linux)
    print(f"peak RSS of lamina pull ({LAYER_MB} MiB layer): {peak_mb:.0f} MiB")
    assert peak_mb < 150, f"lamina pull of a {LAYER_MB} MiB layer peaked at {peak_mb:.0f} MiB"
    with Store(tmp_path / "s") as store:
        assert store.resolve(f"{reg}/big/layer:1").layers[0].digest == digest


def _truncating_setup(reg):
    blob = os.urandom(200_000)
    layer = tar_layer({"r": blob})
    with RegistrySession(reg) as s:
        push_layers(s, "trunc/app", "1", [tar_layer({"ok": b"ok\n"}), layer])
    return digest_of(layer)


@pytest.mark.parametrize("mode, message", [("drop", "kept failing"), ("short", "descriptor says")])
def test_a_blob_truncated_every_time_is_a_clear_error(reg, tmp_path, mode, message, monkeypatch):
    from lamina.store.registry import session as session_mod

    monkeypatch.setattr(session_mod, "_sleep", lambda attempt, wait: None)  # back-off: not timed here
    bad = _truncating_setup(reg)
    proxy = CountingProxy(reg, truncate=bad, mode=mode)
    root = tmp_path / "s"
    with proxy as host:
        run = lamina(root, "pull", f"{host}/trunc/app:1")
    assert run.code == 1
    assert message in run.stderr and bad in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert [l for l in run.stderr.splitlines() if l.startswith("lamina:")] == [run.stderr.splitlines()[-1]]
    if mode == "drop":
        assert 2 <= proxy.truncated <= 10  # retried, and bounded
    fsck = lamina(root, "fsck")
    assert fsck.code == 0 and fsck.stdout.rstrip().endswith(": ok"), fsck.stdout + fsck.stderr
    images = lamina(root, "images", "-q")
    assert images.code == 0 and images.stdout.strip() == ""
    with Store(root) as store:
        assert bad not in set(store.blobs.digests())
        assert store.images() == []


SCHEMA1 = {
    "schemaVersion": 1, "name": "old/app", "tag": "1", "architecture": "amd64",
    "fsLayers": [{"blobSum": "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],
    "history": [{"v1Compatibility": json.dumps({"id": "e" * 64, "architecture": "amd64",
                                                "config": {}})}],
    "signatures": [{"header": {"alg": "ES256"}, "signature": "c2ln", "protected": "cHJvdA"}],
}


def test_schema_1_manifest_is_a_clear_error(tmp_path):
    """A registry still serving a Docker schema 1 (signed) manifest."""
    body = json.dumps(SCHEMA1, indent=3).encode()
    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            asked.append(self.path)
            if self.path.startswith("/v2/old/app/manifests/"):
                data, ctype = body, "application/vnd.docker.distribution.manifest.v1+prettyjws"
            elif self.path == "/v2/":
                data, ctype = b"{}", "application/json"
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        root = tmp_path / "s"
        run = lamina(root, "pull", f"{host}/old/app:1")
        assert run.code == 1
        assert "schema 1" in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not any("/blobs/" in p for p in asked)  # refused before any blob
        assert lamina(root, "images", "-q").stdout.strip() == ""
    finally:
        server.shutdown()
        server.server_close()
