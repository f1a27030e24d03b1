"""The registry client against a real registry on loopback (Debian's docker-registry):
push then pull into an empty store gives the same image, skopeo reads what lamina
pushed and lamina pulls what skopeo pushed, basic auth through `lamina login`."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from tests.builder.buildkit import build, lamina, make_context
from tests.conftest import require_tool
from tests.store.registryfix import htpasswd_line, registry, store_with_app

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def source_store(tmp_path_factory):
    """A store with the busybox base `bb` and an image `app:1` built on it."""
    return store_with_app(tmp_path_factory.mktemp("src"),
                          "FROM bb\nRUN echo hello > /greeting\nCMD [\"cat\", \"/greeting\"]\n")


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def _inspect(root, ref):
    run = lamina(root, "inspect", ref)
    assert run.code == 0, run.stderr
    data = json.loads(run.stdout)
    return data[0] if isinstance(data, list) else data


def test_push_then_pull_into_an_empty_store(source_store, plain_registry, tmp_path):
    dest = f"{plain_registry}/team/app:1"
    pushed = lamina(source_store, "push", "app:1", dest)
    assert pushed.code == 0, pushed.stderr
    assert "digest: sha256:" in pushed.stdout
    digest = pushed.stdout.split("digest: ")[1].split()[0]

    again = lamina(source_store, "push", "app:1", dest)
    assert again.code == 0, again.stderr
    assert "uploaded 0 bytes" in again.stdout  # every blob was already there

    fresh = tmp_path / "fresh"
    pulled = lamina(fresh, "pull", dest)
    assert pulled.code == 0, pulled.stderr
    assert f"Digest: {digest}" in pulled.stderr
    src_id = _inspect(source_store, "app:1")["Id"]
    assert _inspect(fresh, dest)["Id"] == src_id  # same config: same image ID
    # RepoDigests as docker shows them: name@digest of the registry's manifest
    repo = dest.rsplit(":", 1)[0]
    assert _inspect(fresh, dest)["RepoDigests"] == [f"{repo}@{digest}"]
    assert f"{repo}@{digest}" in _inspect(source_store, "app:1")["RepoDigests"]
    # the pulled image runs as a base of a build
    ctx = make_context(tmp_path / "ctx", f"FROM {dest}\nRUN cat /greeting > /copy\n")
    build(fresh, ctx, "-t", "derived").check()


def test_skopeo_reads_what_lamina_pushed(source_store, plain_registry, tmp_path):
    skopeo = require_tool("skopeo")
    dest = f"{plain_registry}/interop/app:1"
    assert lamina(source_store, "push", "app:1", dest).code == 0
    out = subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{dest}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    stored = _inspect(source_store, "app:1")
    assert info["Architecture"] == stored["Architecture"]
    assert len(info["Layers"]) == len(stored["RootFS"]["Layers"])
    oci_dir = tmp_path / "oci"
    cp = subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{dest}", f"oci:{oci_dir}:x"],
                        capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr


@pytest.mark.parametrize("fmt", ["v2s2", "oci"])
def test_lamina_pulls_what_skopeo_pushed(source_store, plain_registry, tmp_path, fmt):
    skopeo = require_tool("skopeo")
    archive = tmp_path / "app.tar"
    assert lamina(source_store, "save", "app:1", "-o", str(archive), "--format", "oci").code == 0
    dest = f"{plain_registry}/from-skopeo/{fmt}:1"
    cp = subprocess.run([skopeo, "copy", "--dest-tls-verify=false", "--format", fmt,
                         f"oci-archive:{archive}", f"docker://{dest}"], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    fresh = tmp_path / "fresh"
    pulled = lamina(fresh, "pull", dest)
    assert pulled.code == 0, pulled.stderr
    assert _inspect(fresh, dest)["Id"] == _inspect(source_store, "app:1")["Id"]


def test_multi_platform_index_picks_the_host_platform(source_store, plain_registry, tmp_path):
    """An index with the host's platform and another: pull takes the host's, --platform
    the other; a platform the index lacks is one clear error."""
    from lamina.store import oci
    from lamina.store.blobs import sha256_digest
    from lamina.store.registry.pull import host
    from lamina.store.registry.session import RegistrySession

    dest = f"{plain_registry}/multi/app"
    pushed = lamina(source_store, "push", "-q", "app:1", f"{dest}:single")
    assert pushed.code == 0, pushed.stderr
    with RegistrySession(plain_registry) as s:
        # app:1 has provenance: the tag (whose digest push prints) names an index of the
        # image manifest and its attestation manifest
        with s.request("GET", f"/v2/multi/app/manifests/{pushed.stdout.strip()}",
                       scope="repository:multi/app:pull", headers={"Accept": oci.OCI_INDEX}) as r:
            r.read()
            (digest,) = [m["digest"] for m in json.loads(r.content)["manifests"]
                         if "vnd.docker.reference.type" not in (m.get("annotations") or {})]
        with s.request("GET", f"/v2/multi/app/manifests/{digest}", scope="repository:multi/app:pull",
                       headers={"Accept": oci.OCI_MANIFEST}) as r:
            r.read()
            manifest = r.content
        me = host()
        index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
            {"mediaType": oci.OCI_MANIFEST, "digest": digest, "size": len(manifest),
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": oci.OCI_MANIFEST, "digest": digest, "size": len(manifest),
             "platform": {"os": me.os, "architecture": me.architecture,
                          **({"variant": me.variant} if me.variant else {})}}]}
        body = json.dumps(index).encode()
        with s.request("PUT", "/v2/multi/app/manifests/multi", scope="repository:multi/app:pull,push",
                       body=body, headers={"Content-Type": oci.OCI_INDEX}, ok=(201,)):
            pass
    fresh = tmp_path / "fresh"
    pulled = lamina(fresh, "pull", f"{dest}:multi")
    assert pulled.code == 0, pulled.stderr
    assert _inspect(fresh, f"{dest}:multi")["Id"] == _inspect(source_store, "app:1")["Id"]
    # the RepoDigest is what the tag names, the index (as docker records it)
    assert f"Digest: {sha256_digest(body)}" in pulled.stderr
    assert _inspect(fresh, f"{dest}:multi")["RepoDigests"] == [f"{dest}@{sha256_digest(body)}"]
    missing = lamina(fresh, "pull", "--platform", "linux/mips64le", f"{dest}:multi")
    assert missing.code == 1
    assert "no image for platform linux/mips64le" in missing.stderr
    assert "s390x" in missing.stderr and "Traceback" not in missing.stderr


def test_basic_auth_login_push_pull(source_store, tmp_path, monkeypatch):
    auth_file = tmp_path / "auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    with registry(tmp_path / "reg", htpasswd=htpasswd_line("ci", "s3cret-pw")) as host:
        dest = f"{host}/private/app:1"
        denied = lamina(source_store, "push", "app:1", dest)
        assert denied.code == 1
        assert f"lamina login {host}" in denied.stderr and "Traceback" not in denied.stderr

        wrong = lamina(source_store, "login", host, "-u", "ci", "-p", "not-the-pw")
        assert wrong.code == 1
        assert "not-the-pw" not in wrong.stderr + wrong.stdout
        assert not auth_file.exists()

        ok = lamina(source_store, "login", host, "-u", "ci", "-p", "s3cret-pw")
        assert ok.code == 0, ok.stderr
        assert "Login Succeeded" in ok.stdout
        assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
        assert "s3cret-pw" not in auth_file.read_text()  # base64, as docker stores it

        assert lamina(source_store, "push", "app:1", dest).code == 0
        fresh = tmp_path / "fresh"
        pulled = lamina(fresh, "pull", dest)
        assert pulled.code == 0, pulled.stderr

        assert lamina(source_store, "logout", host).code == 0
        assert host not in json.loads(auth_file.read_text()).get("auths", {})
        again = lamina(tmp_path / "fresh2", "pull", dest)
        assert again.code == 1 and "requires authentication" in again.stderr


def test_pull_errors_are_one_clear_line(plain_registry, tmp_path):
    missing = lamina(tmp_path / "s", "pull", f"{plain_registry}/nope/nothing:1")
    assert missing.code == 1
    assert "Traceback" not in missing.stderr
    assert "404" in missing.stderr or "unknown" in missing.stderr.lower()
    bad = lamina(tmp_path / "s", "pull", "UPPER/Case")
    assert bad.code == 1 and "Traceback" not in bad.stderr
    os.environ.pop("LAMINA_INSECURE_REGISTRIES", None)


def test_from_pulls_a_missing_base_and_pull_re_resolves(source_store, plain_registry, tmp_path):
    """FROM of an image the store lacks pulls it (and COPY --from=image); a second
    build uses the stored copy; --pull sees a tag that moved; FROM name@digest works."""
    base_ref = f"{plain_registry}/bases/app:stable"
    first = lamina(source_store, "push", "-q", "app:1", base_ref)
    assert first.code == 0, first.stderr
    fresh = tmp_path / "fresh"
    ctx = make_context(tmp_path / "ctx", f"FROM {base_ref}\nCOPY --from={base_ref} /greeting /again\n"
                                         "RUN cat /greeting /again > /both\n")
    run = build(fresh, ctx, "-t", "derived:1").check()
    assert "pulling" in run.stderr
    again = build(fresh, ctx, "-t", "derived:1").check()
    assert "pulling" not in again.stderr
    assert again.step("RUN cat").cached

    # the tag moves to another image: only --pull notices
    moved_ctx = make_context(tmp_path / "moved", "FROM app:1\nRUN echo v2 > /greeting\n")
    build(source_store, moved_ctx, "-t", "app:2").check()
    assert lamina(source_store, "push", "app:2", base_ref).code == 0
    stale = build(fresh, ctx, "-t", "derived:1").check()
    assert stale.step("RUN cat").cached
    fresh_run = build(fresh, ctx, "--pull", "-t", "derived:1").check()
    assert not fresh_run.step("RUN cat").cached  # the base changed under the tag

    digest = first.stdout.strip()
    by_digest = make_context(tmp_path / "digest", f"FROM {plain_registry}/bases/app@{digest}\n"
                                                  "RUN cat /greeting > /g\n")
    out = tmp_path / "out"
    from tests.builder.buildkit import build_rootfs
    build_rootfs(tmp_path / "fresh3", by_digest, out)
    assert (out / "g").read_text() == "hello\n"


def test_build_push(source_store, plain_registry, tmp_path):
    dest = f"{plain_registry}/built/app:ci"
    ctx = make_context(tmp_path / "ctx", "FROM app:1\nRUN echo built > /b\n")
    run = build(source_store, ctx, "-t", dest, "--push").check()
    assert f"pushed {dest}" in run.stderr
    pulled = lamina(tmp_path / "fresh", "pull", dest)
    assert pulled.code == 0, pulled.stderr
    assert _inspect(tmp_path / "fresh", dest)["Id"] == _inspect(source_store, dest)["Id"]


def test_from_an_unreachable_registry_is_one_clear_error(tmp_path):
    from tests.store.registryfix import free_port
    ctx = make_context(tmp_path / "ctx", f"FROM 127.0.0.1:{free_port()}/no/such:1\nRUN true\n")
    run = build(tmp_path / "s", ctx)
    assert run.code == 1
    assert "Dockerfile:1" in run.stderr and "cannot be pulled" in run.stderr
    assert "Traceback" not in run.stderr


def test_docker_hub_mirror_and_cross_repository_mount(source_store, plain_registry, tmp_path, monkeypatch):
    """LAMINA_REGISTRY_MIRRORS serves docker.io names (library/ path) before Docker Hub
    (unreachable here); a push from one repository to another of the same registry
    uploads nothing (blobs mounted)."""
    assert lamina(source_store, "push", "app:1", f"{plain_registry}/library/mirrored:1").code == 0
    monkeypatch.setenv("LAMINA_REGISTRY_MIRRORS", f"http://{plain_registry}/")
    fresh = tmp_path / "fresh"
    pulled = lamina(fresh, "pull", "mirrored:1")
    assert pulled.code == 0, pulled.stderr
    assert _inspect(fresh, "mirrored:1")["Id"] == _inspect(source_store, "app:1")["Id"]
    monkeypatch.delenv("LAMINA_REGISTRY_MIRRORS")

    moved = lamina(fresh, "push", "mirrored:1", f"{plain_registry}/elsewhere/app:1")
    assert moved.code == 0, moved.stderr
    # fresh pulled it from the mirror under its docker.io name: nothing to mount from;
    # pushing registry-to-registry under the registry's own name mounts every blob
    tagged = lamina(fresh, "tag", "mirrored:1", f"{plain_registry}/library/mirrored:1")
    assert tagged.code == 0, tagged.stderr
    mounted = lamina(fresh, "push", f"{plain_registry}/library/mirrored:1", f"{plain_registry}/third/app:1")
    assert mounted.code == 0, mounted.stderr
    assert "uploaded 0 bytes" in mounted.stdout


def test_chunked_upload_of_large_blobs(source_store, plain_registry, tmp_path, monkeypatch):
    from lamina.store.registry import push as push_mod
    monkeypatch.setattr(push_mod, "CHUNKED_THRESHOLD", 1000)
    monkeypatch.setattr(push_mod, "UPLOAD_CHUNK", 4096)
    dest = f"{plain_registry}/chunked/app:1"
    run = lamina(source_store, "push", "app:1", dest)
    assert run.code == 0, run.stderr
    fresh = tmp_path / "fresh"
    assert lamina(fresh, "pull", dest).code == 0
    assert _inspect(fresh, dest)["Id"] == _inspect(source_store, "app:1")["Id"]
