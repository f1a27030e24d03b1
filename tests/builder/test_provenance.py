"""SLSA provenance of `lamina build` (builder.attest) and how it is stored and carried:
the statement names exactly the build's inputs (Dockerfile digest, context digest or
git commit, args, target, epoch, base images by digest, ADD URL and git sources),
attestations never change the image ID, and a saved OCI archive and a pushed image
hold BuildKit's layout (index + attestation manifest) as skopeo reads it."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tarfile
import threading

import pytest

from lamina.builder.attest.provenance import parse_provenance, parse_sbom
from lamina.builder.errors import BuildError
from lamina.store import oci
from tests.builder.buildkit import build, lamina, make_base, make_context
from tests.conftest import require_tool

PAYLOAD = b"#!/bin/sh\necho tool\n"


@pytest.mark.parametrize("value,mode", [(None, "min"), ("true", "min"), ("1", "min"), ("false", None),
                                        ("mode=min", "min"), ("mode=max", "max"), ("0", None)])
def test_provenance_flag_values_as_buildx(value, mode):
    assert parse_provenance(value) == mode


def test_bad_flag_values_are_one_clear_error():
    with pytest.raises(BuildError, match="--provenance"):
        parse_provenance("mode=everything")
    with pytest.raises(BuildError, match="--sbom"):
        parse_sbom("maybe")
    assert parse_sbom(None) is False and parse_sbom("true") is True


# -- builds -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("prov")
    root = base / "store"
    make_base(root, base / "base")
    return root


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path != "/tool.sh":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    t.join()


def git(cwd, *args) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def provenance(root, ref) -> dict:
    run = lamina(root, "inspect", "--provenance", ref)
    assert run.code == 0, run.stderr
    return json.loads(run.stdout)


def inspect(root, ref) -> dict:
    run = lamina(root, "inspect", ref)
    assert run.code == 0, run.stderr
    return json.loads(run.stdout)[0]


@pytest.mark.root
def test_provenance_names_exactly_the_builds_inputs(store, server, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "lib.txt").write_text("lib\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "v1")
    git(repo, "tag", "v1")
    commit = git(repo, "rev-parse", "HEAD")
    dockerfile = (
        "FROM nosuch.invalid/never/pulled:1 AS unused\n"   # not needed by the target: never resolved
        "RUN echo never\n"
        "FROM bb AS build\n"
        "ARG A\n"
        f"ADD {server}/tool.sh /tool.sh\n"
        f"ADD file://{repo}#v1 /src\n"
        "COPY app.txt /app.txt\n"
        "FROM scratch AS final\n"
        "COPY --from=build /app.txt /tool.sh /src/lib.txt /\n"
        "COPY --from=bb /bin/busybox /bin/busybox\n")
    ctx = make_context(tmp_path / "ctx", dockerfile, {"app.txt": "app\n"})
    run = build(store, ctx, "-t", "prov:1", "--target", "final", "--build-arg", "A=1",
                "--build-arg", "SOURCE_DATE_EPOCH=1700000000", "--allow", f"fs.read={tmp_path}").check()
    st = provenance(store, "prov:1")
    info = inspect(store, "prov:1")
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert st["subject"] == [{"name": "_", "digest": {"sha256": info["Descriptor"]["digest"].split(":")[1]}}]
    assert info["Id"] == run.image_id
    bd = st["predicate"]["buildDefinition"]
    ext = bd["externalParameters"]
    assert ext["configSource"] == {"path": "Dockerfile",
                                   "digest": {"sha256": hashlib.sha256(dockerfile.encode()).hexdigest()}}
    assert ext["request"]["args"] == {"build-arg:A": "1", "build-arg:SOURCE_DATE_EPOCH": "1700000000",
                                      "target": "final"}
    assert ext["sourceDateEpoch"] == 1700000000
    base = inspect(store, "bb")
    host = oci.host_platform()
    plat = f"{host['os']}/{host['architecture']}"
    assert bd["internalParameters"] == {"builderPlatform": plat}  # mode=min: no Dockerfile, no steps
    assert bd["resolvedDependencies"] == [
        {"uri": f"pkg:docker/bb@latest?platform={plat.replace('/', '%2F')}", "name": "bb",
         "digest": {"sha256": base["Descriptor"]["digest"].split(":")[1]},
         "annotations": {"lamina.image.id": base["Id"]}},
        {"uri": f"file://{repo}#v1", "digest": {"sha1": commit}},
        {"uri": f"{server}/tool.sh", "digest": {"sha256": hashlib.sha256(PAYLOAD).hexdigest()}},
    ]
    assert st["predicate"]["runDetails"]["builder"]["version"]["lamina"]
    # a build from the cache has the same provenance (nothing in it depends on time)
    again = build(store, ctx, "-t", "prov:1", "--target", "final", "--build-arg", "A=1",
                  "--build-arg", "SOURCE_DATE_EPOCH=1700000000", "--allow", f"fs.read={tmp_path}").check()
    assert again.image_id == run.image_id
    assert provenance(store, "prov:1") == st


@pytest.mark.root
def test_context_digest_and_git_work_tree(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY a.txt /a.txt\n", {"a.txt": "a\n", "b/c.txt": "c\n"})
    build(store, ctx, "-t", "ctx:1").check()
    first = provenance(store, "ctx:1")["predicate"]["buildDefinition"]["externalParameters"]["context"]
    assert set(first) == {"digest"}  # not a git work tree
    # the same files elsewhere, other mtimes: the same digest
    copy = tmp_path / "copy"
    shutil.copytree(ctx, copy)
    for p in copy.rglob("*"):
        os.utime(p, (1, 1))
    build(store, copy, "-t", "ctx:2").check()
    assert provenance(store, "ctx:2")["predicate"]["buildDefinition"]["externalParameters"]["context"] == first
    # a file COPY never reads still belongs to the context: another digest
    (copy / "b" / "c.txt").write_text("changed\n")
    build(store, copy, "-t", "ctx:3").check()
    third = provenance(store, "ctx:3")["predicate"]["buildDefinition"]["externalParameters"]["context"]
    assert third["digest"] != first["digest"]
    (copy / "b" / "c.txt").write_text("c\n")
    os.chmod(copy / "a.txt", 0o600)
    build(store, copy, "-t", "ctx:4").check()
    fourth = provenance(store, "ctx:4")["predicate"]["buildDefinition"]["externalParameters"]["context"]
    assert fourth["digest"] not in (first["digest"], third["digest"])

    # a git work tree: commit, origin and dirtiness
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(ctx, "init", "-q")
    git(ctx, "add", ".")
    git(ctx, "commit", "-qm", "c")
    git(ctx, "remote", "add", "origin", str(bare))
    build(store, ctx, "-t", "ctx:5").check()
    ext = provenance(store, "ctx:5")["predicate"]["buildDefinition"]["externalParameters"]
    assert ext["context"] == {"digest": first["digest"],  # .git is not part of it
                              "git": {"uri": str(bare), "digest": {"sha1": git(ctx, "rev-parse", "HEAD")},
                                      "dirty": False}}
    assert ext["configSource"]["uri"] == f"{bare}#{git(ctx, 'rev-parse', 'HEAD')}"
    (ctx / "a.txt").write_text("edited\n")
    build(store, ctx, "-t", "ctx:6").check()
    assert provenance(store, "ctx:6")["predicate"]["buildDefinition"]["externalParameters"]["context"]["git"][
        "dirty"] is True


@pytest.mark.root
def test_mode_max_adds_dockerfile_and_steps_and_no_mode_changes_the_image(store, tmp_path):
    dockerfile = "FROM bb\nWORKDIR /w\nCOPY f /w/f\nENV X=1\nRUN cat f > g\n"
    ctx = make_context(tmp_path / "ctx", dockerfile, {"f": "f\n"})
    fresh = tmp_path / "fresh"
    shutil.copytree(store, fresh, symlinks=True)  # bb, without anything built on it here
    off = build(fresh, ctx, "-t", "m:off", "--provenance=false").check()
    assert lamina(fresh, "inspect", "--provenance", "m:off").code == 1
    out = tmp_path / "plain.tar"
    assert lamina(fresh, "save", "--format", "oci", "-o", str(out), "m:off").code == 0
    with tarfile.open(out) as tf:
        assert json.load(tf.extractfile("index.json"))["manifests"][0]["mediaType"] == oci.OCI_MANIFEST
    maxed = build(store, ctx, "-t", "m:max", "--provenance=mode=max").check()
    assert maxed.image_id == off.image_id
    assert inspect(store, "m:max")["Descriptor"] == inspect(fresh, "m:off")["Descriptor"]
    internal = provenance(store, "m:max")["predicate"]["buildDefinition"]["internalParameters"]
    assert internal["dockerfile"] == dockerfile
    assert [(s["line"], s["instruction"], s["layer"]) for s in internal["steps"]] == [
        (2, "WORKDIR /w", True), (3, "COPY f /w/f", True), (5, "RUN cat f > g", True)]
    assert all(len(s["cacheKey"]) == 64 for s in internal["steps"])


# -- BuildKit's layout, as skopeo reads it ------------------------------------------------------

def _check_index(index: dict, member) -> dict:
    """The attestation manifest descriptor of `index`, checked against BuildKit's
    attestation-storage format; `member(digest)` reads a blob."""
    host = oci.host_platform()
    assert index["mediaType"] == oci.OCI_INDEX
    image, att = index["manifests"]
    assert image["platform"]["os"] == host["os"] and image["platform"]["architecture"] == host["architecture"]
    assert att["platform"] == {"architecture": "unknown", "os": "unknown"}
    assert att["annotations"] == {"vnd.docker.reference.type": "attestation-manifest",
                                  "vnd.docker.reference.digest": image["digest"]}
    manifest = json.loads(member(att["digest"]))
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.in-toto+json"
    assert layer["annotations"] == {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v1"}
    statement = json.loads(member(layer["digest"]))
    assert statement["subject"][0]["digest"]["sha256"] == image["digest"].split(":")[1]
    config = json.loads(member(manifest["config"]["digest"]))
    assert config["architecture"] == "unknown" and config["rootfs"]["diff_ids"] == [layer["digest"]]
    return att


@pytest.mark.root
def test_saved_oci_archive_holds_the_attestation_manifest(store, tmp_path):
    skopeo = require_tool("skopeo")
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo hi > /hi\n")
    run = build(store, ctx, "-t", "saved:1", "--output", f"type=oci,dest={tmp_path / 'out.tar'}").check()
    for archive in (tmp_path / "out.tar", tmp_path / "saved.tar"):
        if not archive.exists():
            assert lamina(store, "save", "--format", "oci", "-o", str(archive), "saved:1").code == 0
        raw = subprocess.run([skopeo, "inspect", "--raw", f"oci-archive:{archive}"], capture_output=True,
                             text=True)
        assert raw.returncode == 0, raw.stderr
        with tarfile.open(archive) as tf:
            _check_index(json.loads(raw.stdout),
                         lambda d: tf.extractfile("blobs/sha256/" + d.split(":")[1]).read())
        # skopeo picks the image itself (not the attestation) from the index
        plain = subprocess.run([skopeo, "inspect", f"oci-archive:{archive}"], capture_output=True, text=True)
        assert plain.returncode == 0, plain.stderr
        assert json.loads(plain.stdout)["Architecture"] == oci.host_platform()["architecture"]
        # and lamina loads it back as the same image
        loaded = lamina(tmp_path / f"load-{archive.stem}", "load", "-i", str(archive))
        assert loaded.code == 0, loaded.stderr
        assert inspect(tmp_path / f"load-{archive.stem}", "saved:1")["Id"] == run.image_id
        # with its provenance (the predicate; the subject is the loaded manifest)
        assert provenance(tmp_path / f"load-{archive.stem}", "saved:1")["predicate"] == \
            provenance(store, "saved:1")["predicate"]


@pytest.mark.root
def test_pushed_index_holds_the_attestation_manifest(store, tmp_path):
    from tests.store.registryfix import registry

    skopeo = require_tool("skopeo")
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo pushed > /p\n")
    run = build(store, ctx, "-t", "pushme:1").check()
    with registry(tmp_path / "registry") as host:
        dest = f"{host}/team/pushme:1"
        pushed = lamina(store, "push", "-q", "pushme:1", dest)
        assert pushed.code == 0, pushed.stderr
        raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}"],
                             capture_output=True, text=True)
        assert raw.returncode == 0, raw.stderr
        index = json.loads(raw.stdout)

        def member(digest):
            kind = "manifest" if digest == index["manifests"][1]["digest"] else "blob"
            if kind == "manifest":
                out = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false",
                                      f"docker://{host}/team/pushme@{digest}"], capture_output=True)
                assert out.returncode == 0, out.stderr
                return out.stdout
            import httpx
            return httpx.get(f"http://{host}/v2/team/pushme/blobs/{digest}").content

        _check_index(index, member)
        # the digest push prints is what the tag resolves to: the index's (docker's RepoDigest)
        assert pushed.stdout.strip() == "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest()
        pulled = lamina(tmp_path / "fresh", "pull", dest)
        assert pulled.code == 0, pulled.stderr
        assert inspect(tmp_path / "fresh", dest)["Id"] == run.image_id


@pytest.mark.root
def test_gc_keeps_attestations_with_their_image_and_fsck_is_clean(tmp_path):
    root = tmp_path / "store"
    make_base(root, tmp_path / "base")
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo kept > /k\n")
    build(root, ctx, "-t", "kept:1", "--sbom=true").check()
    before = provenance(root, "kept:1")
    assert lamina(root, "gc").code == 0
    assert provenance(root, "kept:1") == before
    assert lamina(root, "inspect", "--sbom", "kept:1").code == 0
    from lamina.store.store import Store
    with Store(root) as s:
        rep = s.fsck()
        assert rep.ok, rep.problems
        assert not any("unreferenced" in n for n in rep.notes), rep.notes
        image = s.resolve("kept:1")
        digests = {r[0] for r in s.db.query("SELECT digest FROM attestations WHERE manifest_digest=?",
                                            (image.manifest_digest,))}
    assert len(digests) == 2
    # the image goes: its attestation rows with it, their blobs with the next gc
    assert lamina(root, "rmi", "kept:1").code == 0
    assert lamina(root, "gc").code == 0
    with Store(root) as s:
        assert not any(s.blobs.exists(d) for d in digests)


@pytest.mark.root
def test_a_provenance_that_cannot_be_made_is_a_warning_not_a_failed_build(store, tmp_path, monkeypatch):
    from lamina.builder.attest import record

    def vanished(entries):
        raise BuildError("cannot open directory gone in the context: No such file or directory")

    monkeypatch.setattr(record, "context_digest", vanished)
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo warned > /w\n")
    run = build(store, ctx, "-t", "warned:1").check()
    assert "warning: no provenance attached: cannot open directory gone" in run.stderr
    assert lamina(store, "inspect", "--provenance", "warned:1").code == 1
