"""Pushes mount blobs the store knows a repository of the same registry has
(store.bloblocations), as skopeo's blob-info cache and containerd's
distribution-source labels make them: a second push of an image to another
repository, and a push of a pulled image, send no layer bytes. Against Debian's
docker-registry on loopback, with the bytes clients send counted by a TCP relay in
front of it (not by lamina), and what was pushed read back by skopeo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from lamina.store import bloblocations
from lamina.store.archive import load
from lamina.store.registry.auth import Credentials
from lamina.store.registry.pull import pull_image
from lamina.store.registry.push import push_image
from lamina.store.registry.session import RegistrySession
from lamina.store.store import Store
from tests.conftest import require_tool
from tests.store.imagefiles import M, craft, layer_tar, write_oci_archive
from tests.store.registryfix import TokenService, free_port, registry

LAYER_BYTES = 400_000  # per layer, incompressible


class Relay:
    """A TCP relay to `upstream` counting (and keeping) the bytes clients send. The
    registry sees the relay's address as its Host, so the upload URLs it hands out
    come back through the relay too."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []

    def __enter__(self) -> "Relay":
        self._listener = socket.create_server(("127.0.0.1", free_port()))
        self.host = "127.0.0.1:%d" % self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def taken(self) -> bytes:
        """The bytes sent since the last call."""
        with self._lock:
            out = bytes(self.sent)
            self.sent.clear()
        return out

    def __exit__(self, *exc) -> None:
        self._listener.close()
        for s in self._socks:
            s.close()


def _image_store(root: Path, seed: str) -> Store:
    """A store holding `app:1`: two incompressible layers (crafted, loaded as gzip)."""
    layers = [layer_tar([M(f"{seed}-{i}", data=os.urandom(LAYER_BYTES))]) for i in range(2)]
    archive = write_oci_archive(root.parent / f"{seed}.tar", craft(layers), name="app:1")
    store = Store(root)
    load(store, archive)
    return store


def _layer_digests(store: Store, ref: str) -> list[str]:
    return [l.digest for l in store.resolve(ref).layers]


def _skopeo_copy(ref: str, dest: Path) -> dict:
    """skopeo reads every blob of `ref` (each checked against its digest) into an OCI
    layout; the manifest it copied."""
    skopeo = require_tool("skopeo")
    out = subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:x"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    index = json.loads((dest / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    return json.loads((dest / "blobs" / "sha256" / digest).read_bytes())


def test_second_push_to_another_repository_mounts_every_blob(tmp_path):
    """skopeo copies docker://REG/a/app to REG/b/app by mounting (its blob-info cache);
    lamina's second push of the image uploads no byte of any blob either."""
    with registry(tmp_path / "reg") as upstream, Relay(upstream) as relay, \
            _image_store(tmp_path / "s", "second") as store:
        first = push_image(store, "app:1", f"{relay.host}/a/app:1")
        sent_first = len(relay.taken())
        assert first.uploaded > 2 * LAYER_BYTES and sent_first > 2 * LAYER_BYTES
        second = push_image(store, "app:1", f"{relay.host}/b/app:1")
        sent_second = relay.taken()
        assert second.uploaded == 0 and second.skipped == 3  # config and both layers
        assert len(sent_second) < 20_000  # requests and the manifest, no blob
        assert sent_second.count(b"mount=") == 3 and b"from=a%2Fapp" in sent_second
        assert second.manifest_digest == first.manifest_digest
        # a real peer reads every blob of the mounted repository, digests checked
        copied = _skopeo_copy(f"{relay.host}/b/app:1", tmp_path / "copy")
        assert [d["digest"] for d in copied["layers"]] == _layer_digests(store, "app:1")
        # the record names both repositories now, the latest first
        known = bloblocations.candidates(store, relay.host, _layer_digests(store, "app:1"), exclude="c/app")
        assert all(repos == ["b/app", "a/app"] for repos in known.values())


def test_pull_then_push_to_another_repository_mounts(tmp_path):
    """A pulled image goes to another repository of the same registry by mounts (the
    pull recorded where its blobs came from); skopeo pushed it, so no push of lamina's
    recorded anything, and the image's name in the store says nothing of the registry."""
    with registry(tmp_path / "reg") as upstream, Relay(upstream) as relay:
        with _image_store(tmp_path / "src", "pulled") as src:
            from lamina.store.archive import save
            save(src, ["app:1"], tmp_path / "app.tar", fmt="oci")
        skopeo = require_tool("skopeo")
        out = subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci-archive:{tmp_path / 'app.tar'}",
                              f"docker://{upstream}/upstream/base:1"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        with Store(tmp_path / "fresh") as fresh:
            pulled = pull_image(fresh, f"{relay.host}/upstream/base:1")
            assert pulled.downloaded > 2 * LAYER_BYTES
            fresh.tag("local:1", f"{relay.host}/upstream/base:1")
            relay.taken()
            pushed = push_image(fresh, "local:1", f"{relay.host}/team/app:1")
            sent = relay.taken()
            assert pushed.uploaded == 0 and len(sent) < 20_000
            assert sent.count(b"from=upstream%2Fbase") == 3  # config and layers
        copied = _skopeo_copy(f"{upstream}/team/app:1", tmp_path / "copy")
        assert len(copied["layers"]) == 2


def test_stale_record_falls_back_to_upload(tmp_path):
    """Blobs deleted registry-side from repositories the record names: each refusing
    repository (202, an upload opened instead) costs one attempt, the next recorded one
    is tried, and after the last the upload the registry opened carries the blob; the
    refuted rows are forgotten."""
    with registry(tmp_path / "reg") as host, _image_store(tmp_path / "s", "stale") as store:
        push_image(store, "app:1", f"{host}/a/app:1")
        assert push_image(store, "app:1", f"{host}/b/app:1").uploaded == 0
        gone, kept = _layer_digests(store, "app:1")
        for repo, digest in (("a/app", gone), ("b/app", gone), ("b/app", kept)):
            r = httpx.delete(f"http://{host}/v2/{repo}/blobs/{digest}")
            assert r.status_code == 202, r.text
        pushed = push_image(store, "app:1", f"{host}/c/app:1")
        # `gone` uploaded (b/app then a/app refused to mount it), `kept` mounted from
        # a/app after b/app refused, the config mounted from b/app
        assert pushed.uploaded == store.blobs.size(gone)
        assert pushed.skipped == 2
        known = bloblocations.candidates(store, host, [gone, kept], exclude="")
        assert known[gone] == ["c/app"] and known[kept] == ["c/app", "a/app"]
        copied = _skopeo_copy(f"{host}/c/app:1", tmp_path / "copy")
        assert [d["digest"] for d in copied["layers"]] == [gone, kept]


def test_another_registry_is_never_a_mount_source(tmp_path):
    with registry(tmp_path / "one") as one, registry(tmp_path / "two") as upstream, \
            Relay(upstream) as two, _image_store(tmp_path / "s", "cross") as store:
        push_image(store, "app:1", f"{one}/a/app:1")
        pushed = push_image(store, "app:1", f"{two.host}/b/app:1")
        sent = two.taken()
        assert b"mount=" not in sent
        assert pushed.uploaded > 2 * LAYER_BYTES and pushed.skipped == 0
        assert bloblocations.candidates(store, two.host, _layer_digests(store, "app:1"),
                                        exclude="x")[_layer_digests(store, "app:1")[0]] == ["b/app"]


def test_token_auth_mount_asks_pull_on_the_source(tmp_path):
    """With token auth the mount asks one token for push here and pull on the source
    (two scope parameters, as docker's and containers' clients ask); a token service
    that does not grant the pull costs a plain upload, never a failed push."""
    tokens = TokenService(tmp_path / "tok", "robot", "t0ken-pw")
    creds = Credentials("robot", "t0ken-pw")
    with tokens.serving(), registry(tmp_path / "reg", token=tokens) as host, \
            _image_store(tmp_path / "s", "token") as store:
        with RegistrySession(host, credentials=creds) as s:
            push_image(store, "app:1", f"{host}/a/app:1", session=s)
        with RegistrySession(host, credentials=creds) as s:
            mounted = push_image(store, "app:1", f"{host}/b/app:1", session=s)
        assert mounted.uploaded == 0
        assert ["repository:b/app:pull,push", "repository:a/app:pull"] in tokens.scopes
        tokens.denied = {("pull", "a/app"), ("pull", "b/app")}
        with RegistrySession(host, credentials=creds) as s:
            uploaded = push_image(store, "app:1", f"{host}/c/app:1", session=s)
        assert uploaded.uploaded > 2 * LAYER_BYTES
        tokens.denied = set()
        skopeo = require_tool("skopeo")
        out = subprocess.run([skopeo, "inspect", "--tls-verify=false", "--creds", "robot:t0ken-pw",
                              f"docker://{host}/c/app:1"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Layers"] == _layer_digests(store, "app:1")


def test_cache_export_then_image_push_mounts_the_cache_layers(tmp_path):
    """--cache-to type=registry puts the layers in the cache's repository: the image's
    push to another repository of that registry mounts them (and a cache written to a
    second ref mounts them as well)."""
    from lamina.store.registry.cache import CacheData, CacheRecord, push_cache

    with registry(tmp_path / "reg") as host, _image_store(tmp_path / "s", "cache") as store:
        layers = list(store.resolve("app:1").layers)
        data = CacheData(records=tuple(CacheRecord(key=f"{i:064x}", diff_id=l.diff_id, created=1.0)
                                       for i, l in enumerate(layers)),
                         layers={l.diff_id: l for l in layers})
        first = push_cache(store, f"{host}/ci/cache:main", data, provide=lambda l: None)
        assert first.uploaded > 2 * LAYER_BYTES
        again = push_cache(store, f"{host}/ci/cache2:main", data, provide=lambda l: None)
        assert again.uploaded == 0 and again.reused == 2
        pushed = push_image(store, "app:1", f"{host}/team/app:1")
        image = store.resolve("app:1")
        assert pushed.uploaded == store.blobs.size(image.config_digest)  # only the config went
        copied = _skopeo_copy(f"{host}/team/app:1", tmp_path / "copy")
        assert [d["digest"] for d in copied["layers"]] == _layer_digests(store, "app:1")


def test_a_schema_3_store_gains_the_table_and_rows_are_capped(tmp_path, monkeypatch):
    import sqlite3

    with Store(tmp_path / "s"):
        pass
    conn = sqlite3.connect(tmp_path / "s" / "lamina.db")
    conn.execute("DROP TABLE blob_locations")
    conn.execute("UPDATE meta SET value='3' WHERE key='schema'")
    conn.commit()
    conn.close()
    monkeypatch.setattr(bloblocations, "MAX_ROWS", 5)
    digests = [f"sha256:{i:064x}" for i in range(8)]
    with Store(tmp_path / "s") as store:
        for i, d in enumerate(digests):
            bloblocations.remember(store, "reg:5000", "a/app", [d], now=1000.0 + i)
        kept = [r["digest"] for r in store.db.query("SELECT digest FROM blob_locations ORDER BY seen")]
        assert kept == digests[3:]  # the least recently seen went
        assert bloblocations.candidates(store, "other:5000", digests)[digests[7]] == []
