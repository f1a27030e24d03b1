"""RepoDigests of multi-platform images, as docker records them: the digest the
reference resolves to in the registry. `lamina pull name:tag` of an index (skopeo
pushed it, `--multi-arch all`) records the index's digest (sha256 of the bytes
`skopeo inspect --raw` prints), not the chosen platform manifest's; `FROM
name@<index digest>` then resolves from the store (the registry stopped), also in the
rebuild of `lamina verify`, and from an empty store pulls the index and takes the
host's platform; a pull by a platform manifest's digest records that digest. `lamina
build --push` with provenance (an index: image + attestation manifest) prints and
records the index's digest, the one the tag resolves to."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from lamina.store.registry.pull import host as host_platform
from tests.builder.buildkit import build, build_rootfs, lamina, make_context
from tests.conftest import require_tool
from tests.store.registryblobs import config_for, digest_of, tar_layer
from tests.store.registryfix import registry, store_with_app

pytestmark = pytest.mark.root


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _skopeo_raw(ref: str) -> bytes:
    skopeo = require_tool("skopeo")
    out = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _blob(layout: Path, data: bytes) -> dict:
    digest = digest_of(data)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _layout(layout: Path) -> tuple[str, str]:
    """An OCI layout named "1": an index of an image for the host's platform (a file
    /arch holding its architecture) and one for another; (host's, other's) architecture."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    me = host_platform()
    other = "ppc64le" if me.architecture == "arm64" else "arm64"
    entries = []
    for arch, variant in ((me.architecture, me.variant), (other, "v8" if other == "arm64" else None)):
        layer = tar_layer({"arch": f"{arch}\n".encode()})
        config = json.loads(config_for([layer], arch))
        if variant:
            config["variant"] = variant
        config = json.dumps(config).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(layout, config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(layout, layer)}],
        }).encode()
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", **_blob(layout, manifest),
                        "platform": {"os": "linux", "architecture": arch,
                                     **({"variant": variant} if variant else {})}})
    inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", **_blob(layout, inner),
                       "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))
    return me.architecture, other


def _format(root: Path, ref: str, template: str) -> str:
    out = lamina(root, "inspect", "--format", template, ref)
    assert out.code == 0, out.stderr
    return out.stdout.strip()


def test_pull_of_an_index_records_the_index_digest_and_from_it_builds_offline(tmp_path):
    skopeo = require_tool("skopeo")
    mine, theirs = _layout(tmp_path / "layout")
    store, fresh = tmp_path / "store", tmp_path / "fresh"
    with registry(tmp_path / "reg") as host:
        repo = f"{host}/multi/app"
        cp = subprocess.run([skopeo, "copy", "--multi-arch", "all", "--dest-tls-verify=false", "--format",
                             "oci", f"oci:{tmp_path / 'layout'}:1", f"docker://{repo}:1"],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stderr
        raw = _skopeo_raw(f"{repo}:1")
        index_digest = _sha256(raw)  # what the tag resolves to: docker's RepoDigest
        by_arch = {e["platform"]["architecture"]: e["digest"] for e in json.loads(raw)["manifests"]}

        pulled = lamina(store, "pull", f"{repo}:1")
        assert pulled.code == 0, pulled.stderr
        assert f"Digest: {index_digest}" in pulled.stderr
        assert by_arch[mine] not in pulled.stderr
        assert _format(store, f"{repo}:1", "{{index .RepoDigests 0}}") == f"{repo}@{index_digest}"
        listed = lamina(store, "images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}")
        assert listed.code == 0, listed.stderr
        assert f"{repo} 1 {index_digest}" in listed.stdout.splitlines()
        # the image itself is the host platform's: its manifest digest is the index entry's
        from lamina.store.store import Store
        with Store(store) as s:
            assert s.resolve(f"{repo}:1").manifest_digest == by_arch[mine]

        # a pull by a platform manifest's digest records that digest (what the user named)
        pulled = lamina(store, "pull", f"{repo}@{by_arch[theirs]}")
        assert pulled.code == 0, pulled.stderr
        assert f"Digest: {by_arch[theirs]}" in pulled.stderr
        assert json.loads(_format(store, f"{repo}@{by_arch[theirs]}", "{{json .RepoDigests}}")) == \
            [f"{repo}@{by_arch[theirs]}"]

        # from an empty store, FROM name@<index digest> pulls the index and takes the host's image
        pinned = make_context(tmp_path / "ctx", f"FROM {repo}@{index_digest}\nCOPY note /note\n",
                              {"note": "pinned\n"})
        build_rootfs(fresh, pinned, tmp_path / "out1")
        assert (tmp_path / "out1" / "arch").read_text() == f"{mine}\n"
        assert _format(fresh, f"{repo}@{index_digest}", "{{index .RepoDigests 0}}") == f"{repo}@{index_digest}"

    # the registry is gone: the stored image is what name@<index digest> names
    assert _format(store, f"{repo}@{index_digest}", "{{.Id}}") == _format(store, f"{repo}:1", "{{.Id}}")
    run = build(store, pinned, "-t", "pinned:1").check()
    build_rootfs(store, pinned, tmp_path / "out2")
    assert (tmp_path / "out2" / "arch").read_text() == f"{mine}\n"
    assert (tmp_path / "out2" / "note").read_text() == "pinned\n"
    # lamina verify's rebuild resolves it from the store too (no registry to pull from)
    verified = lamina(store, "verify", "pinned:1", str(pinned))
    assert verified.code == 0, verified.stdout + verified.stderr
    assert f"rebuilds identically: image ID {run.image_id}" in verified.stdout


def test_build_push_with_provenance_records_the_index_digest(tmp_path):
    root = store_with_app(tmp_path / "src", "FROM bb\nRUN echo hello > /greeting\n")
    with registry(tmp_path / "reg") as host:
        name = f"{host}/prov/app:1"
        ctx = make_context(tmp_path / "ctx", "FROM app:1\nRUN echo pushed > /p\n")
        run = build(root, ctx, "-t", name, "--push")
        assert run.code == 0, run.stderr
        raw = _skopeo_raw(name)
        assert json.loads(raw)["mediaType"] == "application/vnd.oci.image.index.v1+json"  # provenance on
        tag_digest = _sha256(raw)
        assert f"pushed {name}: digest: {tag_digest}" in run.stderr
        repo = name.rsplit(":", 1)[0]
        assert _format(root, name, "{{index .RepoDigests 0}}") == f"{repo}@{tag_digest}"
        # lamina push prints (and -q prints only) what the tag resolves to as well
        again = lamina(root, "push", "-q", name)
        assert again.code == 0, again.stderr
        assert again.stdout.strip() == tag_digest == _sha256(_skopeo_raw(name))
        # a fresh store pulling the tag records the same digest, for the same image ID
        fresh = tmp_path / "fresh"
        pulled = lamina(fresh, "pull", name)
        assert pulled.code == 0, pulled.stderr
        assert f"Digest: {tag_digest}" in pulled.stderr
        assert _format(fresh, f"{repo}@{tag_digest}", "{{.Id}}") == run.image_id
