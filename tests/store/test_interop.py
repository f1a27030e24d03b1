"""Archives against real peers, both ways.

lamina -> peers: a busybox image (`lamina import` of a rootfs tar made from the
host's static /bin/busybox; zstd layers, the store's default) saved by `lamina save`
as docker-archive and as OCI archive (gzip layers by default, `--compression zstd`
for the stored image as it is) is inspected by skopeo (digests equal ours), copied
by skopeo from oci-archive: to docker-archive: (skopeo 1.9 cannot convert zstd
layers), unpacked by umoci (0.4.7 cannot read zstd) and run by podman. Peers -> lamina: podman's own import of the same tar, saved by
`podman save` (both formats) and copied by `skopeo copy` (docker-archive: and
oci-archive:), is loaded by `lamina load` with the config digest podman reports
and, for OCI, the manifest digest skopeo reports.

podman runs with a private store under tmp (`--root` under tmp_path, `--runroot` a short dir in /tmp, vfs driver, runc,
no network, no events) and explicit ulimits (the container cannot raise the
inherited ones here). Everything it creates is removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from lamina.store.store import Store
from tests.conftest import require_tool

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
LAMINA_REF = "busybox-lamina:1"
PODMAN_REF = "localhost/busybox-podman:1"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def lamina(root: Path, *args: str) -> str:
    return run([sys.executable, "-m", "lamina", "--root", str(root), *args], cwd=REPO).stdout


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="module")
def busybox_tar(work, busybox_path) -> Path:
    """A root filesystem: bin/busybox and a symlink per applet (as `busybox --install -s`)."""
    rootfs = work / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(busybox_path, rootfs / "bin" / "busybox")
    applets = run([busybox_path, "--list"]).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", rootfs / "bin" / applet)
    for d in ("etc", "tmp", "proc", "sys", "dev"):
        (rootfs / d).mkdir()
    tar = work / "busybox.tar"
    run(["tar", "-C", str(rootfs), "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
         "--mtime=@0", "-cf", str(tar), "."])
    return tar


@pytest.fixture(scope="module")
def lamina_root(work, busybox_tar) -> Path:
    root = work / "lamina"
    lamina(root, "import", str(busybox_tar), LAMINA_REF)  # zstd layers, lamina's default
    return root


@pytest.fixture(scope="module")
def lamina_image(lamina_root):
    with Store(lamina_root) as store:
        img = store.resolve(LAMINA_REF)
    assert {l.media_type for l in img.layers} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    return img


@pytest.fixture(scope="module")
def saved(lamina_root, lamina_image, work) -> dict[str, Path]:
    """docker: docker-archive; oci: `save --format oci` (default: gzip layers);
    oci-zstd: `save --format oci --compression zstd` (the stored blobs)."""
    out = {}
    for name, args in (("docker", ["--format", "docker"]), ("oci", ["--format", "oci"]),
                       ("oci-zstd", ["--format", "oci", "--compression", "zstd"])):
        out[name] = work / f"lamina-{name}.tar"
        lamina(lamina_root, "save", *args, "-o", str(out[name]), LAMINA_REF)
    return out


def exported_manifest(archive: Path) -> tuple[str, bytes]:
    """(digest, bytes) of the one manifest index.json of an OCI archive names."""
    with tarfile.open(archive) as tf:
        digest = json.load(tf.extractfile("index.json"))["manifests"][0]["digest"]
        return digest, tf.extractfile("blobs/sha256/" + digest.split(":")[1]).read()


class Podman:
    """podman with a private store under tmp; `close()` removes all of it."""

    def __init__(self, base: Path) -> None:
        self.exe = require_tool("podman")
        # podman refuses a runroot longer than 50 characters: tmp_path is too deep
        self.root, self.runroot = base / "root", Path(tempfile.mkdtemp(prefix="lamina-pm-", dir="/tmp"))
        self.flags = ["--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", "vfs",
                      "--runtime", "runc", "--events-backend", "none"]

    def __call__(self, *args: str) -> str:
        return run([self.exe, *self.flags, *args]).stdout

    def storage(self, ref: str) -> str:
        return f"containers-storage:[vfs@{self.root}+{self.runroot}]{ref}"

    def run_echo(self, image: str) -> str:
        return self("run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                    "--ulimit", "nproc=1024:1024", image, "/bin/busybox", "echo", "hi")

    def image_id(self, ref: str) -> str:
        return "sha256:" + self("inspect", "--format", "{{.Id}}", ref).strip()

    def close(self) -> None:
        subprocess.run([self.exe, *self.flags, "rmi", "-a", "-f"], capture_output=True, timeout=120)
        for base in (self.runroot, self.root):
            with open("/proc/self/mounts") as f:
                mounts = [line.split()[1] for line in f]
            for m in sorted((m for m in mounts if m.startswith(str(base))), reverse=True):
                subprocess.run(["umount", "-l", m], capture_output=True)
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def podman(tmp_path):
    p = Podman(tmp_path / "podman")
    yield p
    p.close()


# -- lamina -> peers ---------------------------------------------------------------

def test_skopeo_reads_lamina_oci_archive(saved, lamina_image, lamina_root):
    skopeo = require_tool("skopeo")
    src = f"oci-archive:{saved['oci-zstd']}"  # the stored image, as it is
    raw = run([skopeo, "inspect", "--raw", src]).stdout.encode()
    with Store(lamina_root) as store:
        assert raw == store.blobs.read(lamina_image.manifest_digest)  # byte for byte
    info = json.loads(run([skopeo, "inspect", src]).stdout)
    assert info["Digest"] == lamina_image.manifest_digest
    assert info["Layers"] == [l.digest for l in lamina_image.layers]
    config = run([skopeo, "inspect", "--config", "--raw", src]).stdout.encode()
    assert sha(config) == lamina_image.config_digest
    # and by the name lamina recorded in index.json
    named = json.loads(run([skopeo, "inspect", f"{src}:docker.io/library/{LAMINA_REF}"]).stdout)
    assert named["Digest"] == lamina_image.manifest_digest


def test_skopeo_reads_lamina_gzip_oci_archive(saved, lamina_image):
    """The default export: gzip layers, the same image ID, another manifest digest."""
    skopeo = require_tool("skopeo")
    src = f"oci-archive:{saved['oci']}"
    digest, manifest = exported_manifest(saved["oci"])
    assert digest != lamina_image.manifest_digest
    raw = run([skopeo, "inspect", "--raw", src]).stdout.encode()
    assert raw == manifest and sha(raw) == digest
    info = json.loads(run([skopeo, "inspect", src]).stdout)
    assert info["Digest"] == digest
    assert {l["mediaType"] for l in json.loads(raw)["layers"]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
    config = run([skopeo, "inspect", "--config", "--raw", src]).stdout.encode()
    assert sha(config) == lamina_image.config_digest


def test_skopeo_reads_lamina_docker_archive(saved, lamina_image):
    skopeo = require_tool("skopeo")
    src = f"docker-archive:{saved['docker']}"
    config = run([skopeo, "inspect", "--config", "--raw", src]).stdout.encode()
    assert sha(config) == lamina_image.config_digest
    info = json.loads(run([skopeo, "inspect", src]).stdout)
    # docker-archive layers are uncompressed: skopeo lists them by diff_id
    assert info["Layers"] == [l.diff_id for l in lamina_image.layers]
    named = json.loads(run([skopeo, "inspect", f"{src}:docker.io/library/{LAMINA_REF}"]).stdout)
    assert named["Name"] == "docker.io/library/busybox-lamina"  # found by its RepoTags entry


def test_skopeo_copies_lamina_archives(saved, lamina_image, work):
    """skopeo copy reads every blob (and checks digests) of both formats, and converts
    the default (gzip) OCI archive to a docker-archive."""
    skopeo = require_tool("skopeo")
    dest = work / "copied-layout"
    run([skopeo, "copy", "-q", f"oci-archive:{saved['oci']}", f"oci:{dest}:copied"])
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == exported_manifest(saved["oci"])[0]
    config_name = lamina_image.config_digest.split(":")[1] + ".json"
    for src in (f"docker-archive:{saved['docker']}", f"oci-archive:{saved['oci']}"):
        out = work / "copied-docker.tar"
        out.unlink(missing_ok=True)
        run([skopeo, "copy", "-q", src, f"docker-archive:{out}:{LAMINA_REF}"])
        with tarfile.open(out) as tf:
            manifest = json.loads(tf.extractfile("manifest.json").read())
            assert manifest[0]["Config"] == config_name, src
            layers = [sha(tf.extractfile(name).read()) for name in manifest[0]["Layers"]]
        assert layers == [l.diff_id for l in lamina_image.layers], src


def test_lamina_loads_its_gzip_oci_archive_with_the_same_image_id(saved, lamina_image, tmp_path):
    out = lamina(tmp_path / "dst", "load", "-i", str(saved["oci"]))
    assert out == f"Loaded image: {LAMINA_REF}\n"
    with Store(tmp_path / "dst") as store:
        img = store.resolve(LAMINA_REF)
    assert img.config_digest == lamina_image.config_digest
    assert img.manifest_digest == exported_manifest(saved["oci"])[0]
    assert [l.diff_id for l in img.layers] == [l.diff_id for l in lamina_image.layers]


def test_umoci_unpacks_lamina_oci_archive(saved, lamina_image, work, busybox_path):
    """umoci 0.4.7 rejects zstd layers: the default export (zstd store -> gzip) works."""
    umoci = require_tool("umoci")
    layout = work / "umoci-layout"
    with tarfile.open(saved["oci"]) as tf:  # our own archive: regular files and dirs only
        assert all(m.isreg() or m.isdir() for m in tf.getmembers())
        tf.extractall(layout)
    bundle = work / "umoci-bundle"
    run([umoci, "unpack", "--image", f"{layout}:docker.io/library/{LAMINA_REF}", str(bundle)])
    rootfs = bundle / "rootfs"
    assert (rootfs / "bin" / "busybox").read_bytes() == Path(busybox_path).read_bytes()
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"
    assert json.loads((bundle / "config.json").read_text())["ociVersion"]


@pytest.mark.root
@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_podman_loads_and_runs_lamina_archives(saved, lamina_image, podman, fmt):
    out = podman("load", "-i", str(saved[fmt]))
    assert f"docker.io/library/{LAMINA_REF}" in out
    assert podman.image_id(f"docker.io/library/{LAMINA_REF}") == lamina_image.config_digest
    assert podman.run_echo(f"docker.io/library/{LAMINA_REF}") == "hi\n"


# -- peers -> lamina ---------------------------------------------------------------

@pytest.fixture
def podman_image(podman, busybox_tar) -> str:
    """podman's own image of the busybox tar; returns its image ID (config digest)."""
    podman("import", str(busybox_tar), PODMAN_REF)
    return podman.image_id(PODMAN_REF)


def _peer_archives(podman: Podman, work: Path) -> dict[str, Path]:
    skopeo = require_tool("skopeo")
    out = {name: work / f"{name}.tar" for name in
           ("podman-docker", "podman-oci", "skopeo-docker", "skopeo-oci")}
    podman("save", "--format", "docker-archive", "-o", str(out["podman-docker"]), PODMAN_REF)
    podman("save", "--format", "oci-archive", "-o", str(out["podman-oci"]), PODMAN_REF)
    src = podman.storage(PODMAN_REF)
    run([skopeo, "copy", "-q", src, f"docker-archive:{out['skopeo-docker']}:{PODMAN_REF}"])
    run([skopeo, "copy", "-q", src, f"oci-archive:{out['skopeo-oci']}:{PODMAN_REF}"])
    return out


@pytest.mark.root
def test_lamina_loads_podman_and_skopeo_archives(podman, podman_image, tmp_path):
    skopeo = require_tool("skopeo")
    archives = _peer_archives(podman, tmp_path)
    diff_ids = json.loads(podman("inspect", "--format", "{{json .RootFS.Layers}}", PODMAN_REF))
    for name, path in archives.items():
        root = tmp_path / f"lamina-{name}"
        out = lamina(root, "load", "-i", str(path))
        assert out == "Loaded image: localhost/busybox-podman:1\n", name
        with Store(root) as store:
            img = store.resolve(PODMAN_REF)
            assert img.config_digest == podman_image, name
            assert [l.diff_id for l in img.layers] == diff_ids, name
            if name.endswith("-oci"):
                info = json.loads(run([skopeo, "inspect", f"oci-archive:{path}"]).stdout)
                assert img.manifest_digest == info["Digest"], name
                assert store.blobs.read(img.manifest_digest) == \
                    run([skopeo, "inspect", "--raw", f"oci-archive:{path}"]).stdout.encode(), name
    # what lamina loaded from podman, podman runs again after a lamina save
    again = tmp_path / "again.tar"
    lamina(tmp_path / "lamina-podman-oci", "save", "--format", "oci", "-o", str(again), PODMAN_REF)
    podman("rmi", "-f", PODMAN_REF)
    podman("load", "-i", str(again))
    assert podman.image_id(PODMAN_REF) == podman_image
    assert podman.run_echo(PODMAN_REF) == "hi\n"
