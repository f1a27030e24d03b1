"""Interop with the peers through a real docker-registry: podman pulls and runs what
lamina pushed (runc, its own storage under tmp_path), and lamina pulls a
multi-platform index that skopeo pushed (an OCI layout made here with an amd64-host
and an arm64 image, copied with `skopeo copy --multi-arch all`, as OCI index and as
Docker manifest list): the host's platform by default, the other with --platform."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from lamina.store.registry.pull import host as host_platform
from lamina.store.store import Store
from tests.builder.buildkit import lamina
from tests.conftest import require_tool
from tests.store.registryblobs import config_for, digest_of, tar_layer
from tests.store.registryfix import registry, store_with_app

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("reg")) as host:
        yield host


def test_podman_pulls_and_runs_what_lamina_pushed(reg, tmp_path):
    podman = require_tool("podman")
    require_tool("runc")
    root = store_with_app(tmp_path / "src", 'FROM bb\nRUN echo "pushed by lamina" > /msg\n'
                                            'CMD ["cat", "/msg"]\n')
    ref = f"{reg}/interop/podman:1"
    pushed = lamina(root, "push", "app:1", ref)
    assert pushed.code == 0, pushed.stderr
    runroot = Path(tempfile.mkdtemp(prefix="lamina-podrun-"))  # (podman: at most 50 characters)
    base = [podman, "--root", str(tmp_path / "podroot"), "--runroot", str(runroot),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    pulled = subprocess.run([*base, "pull", "--tls-verify=false", ref], capture_output=True, text=True,
                            timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    try:
        run = subprocess.run([*base, "--runtime", "runc", "run", "--rm", "--network", "none",
                              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", ref],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout == "pushed by lamina\n"
        # the image's own CMD ran; an explicit command too
        run = subprocess.run([*base, "--runtime", "runc", "run", "--rm", "--network", "none",
                              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", ref,
                              "sh", "-c", "echo $((6*7)); ls /msg"], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["42", "/msg"]
    finally:
        subprocess.run([*base, "rmi", "-a", "-f"], capture_output=True, timeout=120)
        shutil.rmtree(runroot, ignore_errors=True)


def _blob(layout: Path, data: bytes) -> dict:
    digest = digest_of(data)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _two_platform_layout(layout: Path) -> dict[str, str]:
    """An OCI layout whose index holds an image for the host's platform and one for
    linux/arm64 (ppc64le when the host is arm64); {platform: config digest}."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    me = host_platform()
    other = "ppc64le" if me.architecture == "arm64" else "arm64"
    entries, configs = [], {}
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
        platform = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        **_blob(layout, manifest), "platform": platform})
        configs["linux/" + arch + (f"/{variant}" if variant else "")] = digest_of(config)
    # the multi-platform image is an index in the layout, named "1" by the layout's index
    inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", **_blob(layout, inner),
                       "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))
    return configs


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_lamina_pulls_a_multi_platform_index_skopeo_pushed(reg, tmp_path, fmt):
    skopeo = require_tool("skopeo")
    configs = _two_platform_layout(tmp_path / "layout")
    dest = f"{reg}/interop/multi-{fmt}:1"
    cp = subprocess.run([skopeo, "copy", "--multi-arch", "all", "--dest-tls-verify=false", "--format", fmt,
                         f"oci:{tmp_path / 'layout'}:1", f"docker://{dest}"], capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 0, cp.stderr
    raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}"],
                         capture_output=True, text=True, timeout=60)
    assert raw.returncode == 0, raw.stderr
    kind = json.loads(raw.stdout)["mediaType"]
    assert kind == ("application/vnd.oci.image.index.v1+json" if fmt == "oci"
                    else "application/vnd.docker.distribution.manifest.list.v2+json")

    mine, theirs = list(configs)
    root = tmp_path / "s"
    pulled = lamina(root, "pull", dest)
    assert pulled.code == 0, pulled.stderr
    with Store(root) as store:
        assert store.resolve(dest).config_digest == configs[mine]
    # the same tag with --platform: the other image
    pulled = lamina(tmp_path / "s2", "pull", "--platform", theirs, dest)
    assert pulled.code == 0, pulled.stderr
    with Store(tmp_path / "s2") as store:
        assert store.resolve(dest).config_digest == configs[theirs]
