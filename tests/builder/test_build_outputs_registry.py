"""`lamina build` against a real registry (Debian's docker-registry on loopback):
`-o type=registry` / `type=image,push=true` push as buildx's exporters do and
`type=image,push=false` only tags; `RUN --mount=type=bind,from=IMAGE` pulls a
missing image; `FROM name@sha256:...` is never looked up again, even with --pull,
while `--pull` re-resolves a tag (manifest requests counted by a proxy)."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import subprocess
import threading

import pytest

from tests.builder.buildkit import build, build_rootfs, lamina, make_context
from tests.conftest import require_tool
from tests.store.registryfix import free_port, registry, store_with_app

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def source_store(tmp_path_factory):
    """A store with the busybox base `bb` and `app:1` (bb + /greeting) built on it."""
    return store_with_app(tmp_path_factory.mktemp("src"),
                          "FROM bb\nRUN echo hello > /greeting\nCMD [\"cat\", \"/greeting\"]\n")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def _skopeo_raw(ref: str) -> bytes:
    skopeo = require_tool("skopeo")
    out = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _skopeo_digest(ref: str) -> str:
    """The digest `ref` resolves to in the registry, as skopeo reads it: sha256 of the
    manifest or index it serves (an index holds the image and its attestation manifest
    when provenance is pushed). Docker records it as the RepoDigest."""
    return "sha256:" + hashlib.sha256(_skopeo_raw(ref)).hexdigest()


def _inspect(root, ref) -> dict:
    run = lamina(root, "inspect", ref)
    assert run.code == 0, run.stderr
    data = json.loads(run.stdout)
    return data[0] if isinstance(data, list) else data


def _has_manifest(host: str, repo: str, tag: str) -> bool:
    conn = http.client.HTTPConnection(host, timeout=10)
    conn.request("HEAD", f"/v2/{repo}/manifests/{tag}", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.index.v1+json"})
    status = conn.getresponse().status
    conn.close()
    assert status in (200, 404), status
    return status == 200


def test_output_registry_pushes_every_name_once(source_store, upstream, tmp_path):
    """type=registry (buildx: type=image,push=true) with two names in one quoted CSV
    field, and --push naming one of them again: each name pushed once, what the
    registry serves (skopeo) is the stored image's RepoDigest, per-layer progress shown."""
    one, latest = f"{upstream}/x/app:1", f"{upstream}/x/app:latest"
    ctx = make_context(tmp_path / "ctx", "FROM app:1\nRUN echo built > /b\n")
    run = build(source_store, ctx, "-t", one, "--push", "-o", f'type=registry,"name={one},{latest}"')
    assert run.code == 0, run.stderr
    assert run.stderr.count(f"pushed {one}: digest:") == 1
    assert run.stderr.count(f"pushed {latest}: digest:") == 1
    assert "layer 1/" in run.stderr and ": pushed " in run.stderr  # TransferProgress lines
    digest = _skopeo_digest(one)
    assert _skopeo_digest(latest) == digest
    stored = _inspect(source_store, latest)  # tagged in the store too
    assert stored["Id"] == run.image_id
    assert f"{upstream}/x/app@{digest}" in stored["RepoDigests"]


def test_output_image_with_push_true_and_no_name_pushes_the_tags(source_store, upstream, tmp_path):
    dest = f"{upstream}/y/app:ci"
    ctx = make_context(tmp_path / "ctx", "FROM app:1\nRUN echo y > /y\n")
    run = build(source_store, ctx, "-t", dest, "-o", "type=image,push=true")
    assert run.code == 0, run.stderr
    digest = _skopeo_digest(dest)
    assert f"{upstream}/y/app@{digest}" in _inspect(source_store, dest)["RepoDigests"]


def test_output_image_without_push_only_tags(source_store, upstream, tmp_path):
    name = f"{upstream}/z/app:2"
    ctx = make_context(tmp_path / "ctx", "FROM app:1\nRUN echo z > /z\n")
    run = build(source_store, ctx, "-o", f"type=image,name={name},push=false")
    assert run.code == 0, run.stderr
    assert _inspect(source_store, name)["Id"] == run.image_id
    assert "pushed" not in run.stderr
    assert not _has_manifest(upstream, "z/app", "2")  # nothing went to the registry

    unnamed = build(source_store, ctx, "-o", "type=registry")
    assert unnamed.code == 1 and "needs a name" in unnamed.stderr
    bad = build(source_store, ctx, "-o", f"type=registry,name={name},push=false")
    assert bad.code == 1 and "Traceback" not in bad.stderr


def test_run_mount_from_a_registry_image_pulls_it(source_store, upstream, tmp_path):
    """RUN --mount=type=bind,from=IMAGE of an image the store lacks pulls it (as FROM
    and COPY --from do)."""
    base, mounted = f"{upstream}/bases/bb:1", f"{upstream}/mnt/app:1"
    assert lamina(source_store, "push", "bb", base).code == 0
    assert lamina(source_store, "push", "app:1", mounted).code == 0
    fresh = tmp_path / "fresh"
    ctx = make_context(tmp_path / "ctx", f"FROM {base}\n"
                                         f"RUN --mount=type=bind,from={mounted},target=/m cat /m/greeting > /copy\n")
    out = tmp_path / "out"
    build_rootfs(fresh, ctx, out)
    assert (out / "copy").read_text() == "hello\n"
    assert _inspect(fresh, mounted)["Id"] == _inspect(source_store, "app:1")["Id"]


class CountingProxy:
    """An HTTP proxy in front of the registry that keeps (method, path) of every request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str]] = []

    def manifest_requests(self, repo: str) -> list[str]:
        prefix = f"/v2/{repo}/manifests/"
        return [p[len(prefix):] for _, p in self.requests if p.startswith(prefix)]

    def __enter__(self) -> str:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _forward(self):
                proxy.requests.append((self.command, self.path.split("?", 1)[0]))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(k, v)
                if resp.getheader("Content-Length") is None:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_pinned_from_never_re_resolves_and_pull_moves_a_tag(source_store, upstream, tmp_path):
    first = lamina(source_store, "push", "-q", "app:1", f"{upstream}/pin/app:stable")
    assert first.code == 0, first.stderr
    pinned = first.stdout.strip()
    assert pinned == _skopeo_digest(f"{upstream}/pin/app:stable")
    script = "RUN (cat /greeting 2>/dev/null || echo none) > /g\n"
    fresh = tmp_path / "fresh"
    counter = CountingProxy(upstream)
    with counter as proxy:
        by_tag = make_context(tmp_path / "tag", f"FROM {proxy}/pin/app:stable\n{script}")
        by_digest = make_context(tmp_path / "digest", f"FROM {proxy}/pin/app@{pinned}\n{script}")
        out = tmp_path / "out"
        build_rootfs(fresh, by_tag, out)
        assert (out / "g").read_text() == "hello\n"
        assert "stable" in counter.manifest_requests("pin/app")

        # the tag moves to another image (bb: no /greeting)
        assert lamina(source_store, "push", "bb", f"{upstream}/pin/app:stable").code == 0
        assert _skopeo_digest(f"{upstream}/pin/app:stable") != pinned

        counter.requests.clear()
        build_rootfs(fresh, by_digest, out, "--pull")
        assert (out / "g").read_text() == "hello\n"  # the pinned image, not the tag's
        assert counter.manifest_requests("pin/app") == []  # not even by digest: it is stored

        build_rootfs(fresh, by_tag, out)
        assert (out / "g").read_text() == "hello\n"  # without --pull: the stored tag
        assert "stable" not in counter.manifest_requests("pin/app")

        build_rootfs(fresh, by_tag, out, "--pull")
        assert (out / "g").read_text() == "none\n"  # --pull: the moved tag
        assert "stable" in counter.manifest_requests("pin/app")

        # a fresh store given only the digest: fetched by digest, never by tag (the
        # index first, then the manifests it pins)
        counter.requests.clear()
        build_rootfs(tmp_path / "fresh2", by_digest, out, "--pull")
        assert (out / "g").read_text() == "hello\n"
        asked = counter.manifest_requests("pin/app")
        assert asked and asked[0] == pinned and all(a.startswith("sha256:") for a in asked), asked


def test_bake_registry_output_pushes_its_name_not_the_tags(source_store, upstream, tmp_path):
    """A bake target's `output = ["type=registry,name=REF"]` goes to the build as its
    -o (buildx: the exporter pushes name=), not as --push of the target's tags (a
    docker.io name here, which cannot be pushed)."""
    name = f"{upstream}/bk/app:1"
    ctx = make_context(tmp_path / "ctx", "FROM app:1\nRUN echo bake > /bk\n")
    bakefile = tmp_path / "docker-bake.json"
    bakefile.write_text(json.dumps({"target": {"app": {
        "context": str(ctx), "tags": ["bk-local:1"], "output": [f"type=registry,name={name}"]}}}))
    run = lamina(source_store, "bake", "-f", str(bakefile), "app")
    assert run.code == 0, run.stderr
    digest = _skopeo_digest(name)
    stored = _inspect(source_store, name)
    assert stored["Id"] == _inspect(source_store, "bk-local:1")["Id"]
    assert f"{upstream}/bk/app@{digest}" in stored["RepoDigests"]
