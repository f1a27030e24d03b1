"""Red team, session 9 (store parts): credential helpers named by a hostile config.json;
the gzip inflater and TarScan against hostile layers.

Expected values: docker's credential-helper protocol (the helper is the program
docker-credential-<name> found on PATH; a name is no path).
"""

from __future__ import annotations

import json

import pytest

from lamina.store.registry.auth import CredentialError, find_credentials


@pytest.mark.parametrize("name", ["x\x00y", "x\ny", "../../tmp/x", "\x1b]52;c;AAAA\x07"])
def test_helper_name_that_is_no_program_name_is_one_credential_error(tmp_path, monkeypatch, name):
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": name}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("DOCKER_AUTH_CONFIG", raising=False)
    with pytest.raises(CredentialError, match="is not a program name"):
        find_credentials("localhost:5000")


def _empty_members(total: int) -> bytes:
    import gzip

    member = gzip.compress(b"", mtime=0)  # RFC 1952: a 20-byte member inflating to nothing
    return member * (total // len(member))


def _inflate_seconds(data: bytes, chunk: int) -> float:
    import time

    from lamina.store.decompress import GzipInflater

    g = GzipInflater()
    t = time.process_time()
    for i in range(0, len(data), chunk):
        for _ in g.feed(data[i:i + chunk]):
            pass
    g.finish()
    return time.process_time() - t


def test_a_layer_of_tiny_gzip_members_costs_no_more_in_big_chunks():
    """A layer made of empty gzip members (a hostile registry's, or a loaded archive's):
    each member's end made isal copy the rest of the chunk it was fed (unused_data), so
    the work grew with the chunk size - 1 MiB chunks (pull hands over large pieces, load
    reads 1 MiB) took ~10x the CPU of 32 KiB ones, about a second per MiB of layer. The
    work must not depend on how the bytes arrive."""
    import io
    import time

    from lamina.store.decompress import _GzipReader

    data = _empty_members(2 << 20)
    small = _inflate_seconds(data, 32 << 10)
    big = _inflate_seconds(data, 1 << 20)
    t = time.process_time()
    assert _GzipReader(io.BytesIO(data)).read() == b""
    reader = time.process_time() - t
    assert big < 3 * small + 0.05, (big, small)
    assert reader < 3 * small + 0.05, (reader, small)


def test_gzip_member_boundaries_still_decide_as_before():
    """Multi-member rules unchanged by feeding after a member in windows: zero padding
    between and after members taken, anything else after a member refused, a cut
    member refused - whatever the pieces."""
    import gzip
    import io

    from lamina.store.decompress import GzipInflater, _GzipReader
    from lamina.store.errors import CorruptContent

    one = gzip.compress(b"abc" * 5000, mtime=0)
    empty = gzip.compress(b"", mtime=0)
    good = {one + empty + one: b"abc" * 10000, one + b"\0" * 9000 + one + b"\0" * 5: b"abc" * 10000,
            empty * 500 + one: b"abc" * 5000}
    bad = [one + b"junk" + one, one + b"\0" * 5000 + b"\x1f", one[:-1], empty * 300 + b"\x1f\x8b"]
    for chunk in (1, 7, 4096, 4097, 1 << 20):
        for data, want in good.items():
            g, out = GzipInflater(), b""
            for i in range(0, len(data), chunk):
                out += b"".join(bytes(b) for b in g.feed(data[i:i + chunk]))
            g.finish()
            assert out == want
            assert _GzipReader(io.BytesIO(data)).read() == want
        for data in bad:
            with pytest.raises(CorruptContent):
                g = GzipInflater()
                for i in range(0, len(data), chunk):
                    for _ in g.feed(data[i:i + chunk]):
                        pass
                g.finish()
            with pytest.raises(CorruptContent):
                _GzipReader(io.BytesIO(data)).read()


@pytest.mark.root
def test_push_records_the_repodigest_of_the_image_it_sent_not_what_the_tag_names_after(tmp_path):
    """`lamina push app:1` while a concurrent build moves the tag app:1 to another image:
    the RepoDigest recorded (REG/team/app@D, D the index of image + provenance the tag
    names, never a stored manifest) must name the image that went up under D - the old
    code re-resolved app:1 after the upload, so `FROM REG/team/app@D` then built,
    offline, from the other image. The registry (read back by skopeo) says which image
    D holds."""
    import subprocess

    from lamina.store.registry.push import push_image
    from lamina.store.store import Store
    from tests.conftest import require_tool
    from tests.store.registryfix import registry, store_with_app

    store = Store(store_with_app(tmp_path, "FROM bb\nRUN echo app > /app\n"))
    other = store.resolve("bb")
    moved = []

    def concurrent_build(what, done, total):
        if not moved:
            store.tag("app:1", other.manifest_digest)
            moved.append(what)

    with registry(tmp_path / "reg") as host:
        pushed = push_image(store, "app:1", f"{host}/team/app:1", progress=concurrent_build)
        assert moved and pushed.index_digest is not None
        skopeo = require_tool("skopeo")
        index = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false",
                                f"docker://{host}/team/app@{pushed.digest}"], capture_output=True,
                               timeout=60)
        assert index.returncode == 0, index.stderr
        image = json.loads(index.stdout)["manifests"][0]["digest"]
        raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false",
                              f"docker://{host}/team/app@{image}"], capture_output=True, timeout=60)
        assert raw.returncode == 0, raw.stderr
        sent_config = json.loads(raw.stdout)["config"]["digest"]
    assert sent_config != other.config_digest
    assert store.resolve(f"{host}/team/app@{pushed.digest}").config_digest == sent_config


def test_a_push_of_an_image_id_or_digest_mounts_from_no_repository():
    """`lamina push <image ID> docker.io/team/app:1` (and build --push, which now pushes
    the built image by its manifest digest): an ID read as a reference is
    docker.io/library/sha256:<hex>, a repository that does not exist - the old code
    asked Docker Hub to mount every blob from it."""
    from lamina.store import refs
    from lamina.store.registry.push import _same_registry_repo

    dest = refs.parse("docker.io/team/app:1")
    for source in ("sha256:" + "ab" * 32, "ab" * 32):
        assert _same_registry_repo(source, dest) is None
    assert _same_registry_repo("docker.io/team/base:1", dest) == "team/base"


def test_credentials_json_nested_too_deeply_is_one_credential_error(tmp_path, monkeypatch):
    """config.json, $DOCKER_AUTH_CONFIG and a helper's answer are JSON lamina decodes;
    `[[[[...` a few thousand deep made json raise RecursionError (an internal error)."""
    import os
    import stat

    deep = "[" * 5000
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("DOCKER_AUTH_CONFIG", raising=False)
    (tmp_path / "config.json").write_text(deep)
    with pytest.raises(CredentialError, match="config.json"):
        find_credentials("localhost:5000")
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", deep)
    with pytest.raises(CredentialError, match="DOCKER_AUTH_CONFIG"):
        find_credentials("localhost:5000")
    monkeypatch.delenv("DOCKER_AUTH_CONFIG")
    helper = tmp_path / "bin" / "docker-credential-deep"
    helper.parent.mkdir()
    helper.write_text(f"#!/bin/sh\necho '{deep}'\n")
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "deep"}))
    with pytest.raises(CredentialError, match="docker-credential-deep"):
        find_credentials("localhost:5000")
