"""`lamina verify` (builder.attest.verify): a reproducible build verifies from another
copy of its context (other mtimes, file creation order, umask), from an OCI archive
(a compression-only difference is said to be one) and from its git origin; a RUN that
writes the date or random bytes fails verification naming the file and the step;
`--expect` works without provenance; a changed context is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.builder.buildkit import build, lamina, make_base, make_context

pytestmark = pytest.mark.root

FILES = {"app/main.sh": ("#!/bin/sh\necho main\n", 0o755), "app/data.txt": ("data\n", 0o644),
         "conf/app.conf": ("x=1\n", 0o644)}
DOCKERFILE = "FROM bb\nARG GREETING=hi\nCOPY app/ /app/\nCOPY conf/app.conf /etc/app.conf\n" \
             "RUN echo $GREETING > /app/greeting && chmod 600 /etc/app.conf\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    root = base / "store"
    make_base(root, base / "base")
    return root


def context_copy(src, dest, *, reverse=True, mtime=123456789):
    """The files of `src` written anew under `dest`: another creation order, other
    mtimes, the same permission bits (set explicitly, whatever the umask)."""
    paths = sorted(p for p in src.rglob("*") if p.is_file() and ".git" not in p.parts)
    for p in (reversed(paths) if reverse else paths):
        q = dest / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_bytes(p.read_bytes())
        os.chmod(q, p.stat().st_mode & 0o7777)
    for q in dest.rglob("*"):
        if q.is_dir():
            os.chmod(q, 0o755)
        os.utime(q, (mtime, mtime))
    return dest


def verify(root, *args):
    return lamina(root, "verify", *[str(a) for a in args])


def test_reproducible_build_verifies_from_another_copy(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, FILES)
    run = build(store, ctx, "-t", "repro:1", "--build-arg", "GREETING=hello").check()
    other = context_copy(ctx, tmp_path / "other")
    old = os.umask(0o077)  # verify's store, its temp files and the rebuild under another umask
    try:
        result = verify(store, "repro:1", other)
    finally:
        os.umask(old)
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("verified: repro:1 rebuilds identically")
    assert run.image_id in lines[0]
    as_json = json.loads(verify(store, "repro:1", other, "--format", "json").stdout)
    assert as_json["identical"] is True and as_json["rebuilt"]["id"] == run.image_id


def test_archive_verifies_and_a_compression_difference_is_named(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, FILES)
    run = build(store, ctx, "-t", "arch:1").check()
    archive = tmp_path / "arch.tar"
    assert lamina(store, "save", "--format", "oci", "-o", archive, "arch:1").code == 0  # gzip layers
    result = verify(store, archive, ctx)
    assert result.code == 0, result.stdout + result.stderr
    first, *rest = result.stdout.splitlines()
    assert first.startswith(f"verified: {archive} rebuilds identically: image ID {run.image_id}")
    assert "differs by layer compression only" in first
    assert rest and all("same content" in l for l in rest[1:])  # each layer: same diff_id, other bytes
    # an archive of the stored (zstd) blobs: the manifest digest too is the same
    zstd = tmp_path / "zstd.tar"
    assert lamina(store, "save", "--format", "oci", "--compression", "zstd", "-o", zstd, "arch:1").code == 0
    same = verify(store, zstd, ctx)
    assert same.code == 0 and len(same.stdout.splitlines()) == 1 and "compression" not in same.stdout


@pytest.mark.parametrize("run_line,path", [
    ("RUN head -c 16 /dev/urandom | od -An -tx1 > /random", "/random"),
    ("RUN sleep 1 && date +%s > /built-at", "/built-at"),
])
def test_nondeterministic_run_fails_naming_the_file_and_the_step(store, tmp_path, run_line, path):
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nCOPY app/ /app/\n{run_line}\n", FILES)
    build(store, ctx, "-t", "nondet:1").check()
    result = verify(store, "nondet:1", ctx)
    assert result.code == 1, result.stdout + result.stderr
    assert result.stdout.startswith("NOT reproducible: nondet:1")
    changed = [l for l in result.stdout.splitlines() if path in l and run_line[4:20] in l]
    assert changed, result.stdout  # the file, with the step that made it
    assert "/app/main.sh" not in result.stdout  # files of reproducible steps are not mentioned


def test_expect_without_provenance(store, tmp_path):
    # an image no build with provenance made before (same files, other config)
    ctx = make_context(tmp_path / "ctx", DOCKERFILE + "LABEL built=without-provenance\n", FILES)
    run = build(store, ctx, "-t", "noprov:1", "--provenance=false").check()
    missing = verify(store, "noprov:1", ctx)
    assert missing.code == 1 and "has no provenance attestation" in missing.stderr
    assert "Traceback" not in missing.stderr
    ok = verify(store, "--dockerfile", ctx / "Dockerfile", ctx, "--expect", run.image_id)
    assert ok.code == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("verified:") and len(ok.stdout.splitlines()) == 1
    # another build arg: another image, explained against the expected one
    other = verify(store, "--dockerfile", ctx / "Dockerfile", ctx, "--expect", run.image_id,
                   "--build-arg", "GREETING=bye")
    assert other.code == 1
    assert "/app/greeting" in other.stdout
    unknown = verify(store, "--dockerfile", ctx / "Dockerfile", ctx, "--expect", "sha256:" + "0" * 64)
    assert unknown.code == 1 and "no image of the store has it" in unknown.stdout


def test_a_changed_context_is_refused(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, FILES)
    build(store, ctx, "-t", "changed:1").check()
    other = context_copy(ctx, tmp_path / "other")
    (other / "conf" / "app.conf").write_text("x=2\n")
    result = verify(store, "changed:1", other)
    assert result.code == 1
    assert "not the context that was built" in result.stderr


def test_git_context_verifies_from_its_origin(store, tmp_path):
    def git(cwd, *args):
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@e"}
        return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    ctx = make_context(tmp_path / "ctx", DOCKERFILE, FILES)
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(ctx, "init", "-q")
    git(ctx, "add", ".")
    git(ctx, "commit", "-qm", "release")
    git(ctx, "remote", "add", "origin", str(bare))
    git(ctx, "push", "-q", "origin", "main")
    run = build(store, ctx, "-t", "fromgit:1").check()
    shutil.rmtree(ctx)  # only the origin is left
    result = verify(store, "fromgit:1")
    assert result.code == 0, result.stdout + result.stderr
    assert run.image_id in result.stdout and len(result.stdout.splitlines()) == 1


def test_registry_workflow_build_push_pull_verify(store, tmp_path):
    """CI builds FROM a registry base and pushes; elsewhere a clean store pulls the
    image (its attestations come along) and verifies it against a checkout."""
    from tests.store.registryfix import registry

    with registry(tmp_path / "registry") as host:
        # the base as it is stored (zstd): the registry serves the store's manifest digest
        assert lamina(store, "push", "--compression", "zstd", "bb", f"{host}/base/bb:1").code == 0
        ci_store = tmp_path / "ci"
        ctx = make_context(tmp_path / "ctx", DOCKERFILE.replace("FROM bb", f"FROM {host}/base/bb:1"), FILES)
        run = build(ci_store, ctx, "-t", f"{host}/team/app:1", "--push").check()
        elsewhere = tmp_path / "elsewhere"
        assert lamina(elsewhere, "pull", f"{host}/team/app:1").code == 0
        assert lamina(elsewhere, "inspect", "--provenance", f"{host}/team/app:1").code == 0
        checkout = context_copy(ctx, tmp_path / "checkout")
        result = verify(elsewhere, f"{host}/team/app:1", checkout)
        assert result.code == 0, result.stdout + result.stderr
        first = result.stdout.splitlines()[0]
        assert run.image_id in first  # pushed gzip, rebuilt zstd: the same image, said so
        assert "differs by layer compression only" in first
        assert "pulled base" in result.stderr  # the base by its recorded digest, from the registry


def test_a_changed_add_url_is_named(store, tmp_path, monkeypatch):
    """The rebuild fetches ADD sources again: one that changed since the build is said
    to be the reason, beside the file it changed."""
    import http.server
    import threading

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    body = {"data": b"version 1\n"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body["data"])))
            self.end_headers()
            self.wfile.write(body["data"])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/data.txt"
        ctx = make_context(tmp_path / "ctx", f"FROM bb\nADD {url} /data.txt\n", {})
        build(store, ctx, "-t", "url:1", "--network", "none").check()
        prov = json.loads(lamina(store, "inspect", "--provenance", "url:1").stdout)
        assert prov["predicate"]["buildDefinition"]["externalParameters"]["request"]["args"] == {
            "force-network-mode": "none"}
        assert verify(store, "url:1", ctx).code == 0
        body["data"] = b"version 2\n"
        changed = verify(store, "url:1", ctx)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert changed.code == 1
    assert f"ADD source {url} is now sha256:" in changed.stderr
    assert "/data.txt" in changed.stdout


# Each sample built and verified in two stores (another day, umask, checkout, store
# compression): tests/builder/test_repro_samples.py.


def test_a_recorded_dockerfile_path_through_a_link_out_of_the_context_is_not_read(store, tmp_path):
    """The provenance names `sub/Dockerfile`; in the context verify is given, `sub` is a
    link to a host directory. verify must not read (and hash, and name in its error)
    the host file there: the path is outside the context."""
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY app/ /app/\n", FILES)
    (ctx / "sub").mkdir()
    (ctx / "Dockerfile").rename(ctx / "sub" / "Dockerfile")
    build(store, ctx, "-f", ctx / "sub" / "Dockerfile", "-t", "subdf:1").check()
    other = context_copy(ctx, tmp_path / "other")
    host = tmp_path / "host-secrets"
    host.mkdir()
    (host / "Dockerfile").write_text("a host file verify must not read\n")
    shutil.rmtree(other / "sub")
    os.symlink(host, other / "sub")
    import hashlib

    host_sha = hashlib.sha256((host / "Dockerfile").read_bytes()).hexdigest()
    result = verify(store, "subdf:1", other)
    assert result.code != 0
    assert host_sha not in result.stdout + result.stderr
    assert "outside the context" in result.stderr
