"""Layers recorded before their blobs are fetched (store.remoteblobs), against a real
registry on loopback: a CI job that builds from a shared registry cache and only
pushes downloads no layer (the push mounts them registry side), a FROM base is
fetched only when a step reads its files, and what cannot be fetched when it is read
is one clear error. Checked from the outside: the store's blob files, skopeo and a
pull into a third store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.builder.buildkit import build, busybox_binary, lamina, make_context
from tests.conftest import require_tool
from tests.store.registryfix import registry

pytestmark = pytest.mark.root

APP = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base AS builder
RUN mkdir /out && head -c 64 /dev/urandom > /out/app

FROM base
COPY --from=builder /out/app /app
COPY greeting.txt /greeting.txt
RUN cat /greeting.txt /app > /both && head -c 16 /dev/urandom > /random
"""


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def _context(path: Path, dockerfile: str) -> Path:
    ctx = make_context(path, dockerfile, {"greeting.txt": "hello\n"})
    (ctx / "busybox").write_bytes(Path(busybox_binary()).read_bytes())
    (ctx / "busybox").chmod(0o755)
    return ctx


def _raw(ref: str) -> dict:
    skopeo = require_tool("skopeo")
    out = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    raw = json.loads(out.stdout)
    if "manifests" in raw:  # an index (attestations): the image manifest for linux
        (m,) = [m for m in raw["manifests"] if (m.get("platform") or {}).get("os") == "linux"]
        return _raw(f"{ref.rsplit(':', 1)[0]}@{m['digest']}")
    return raw


def _stored_blobs(root: Path) -> set[str]:
    return {"sha256:" + p.name for p in (root / "blobs" / "sha256").iterdir()}


def _repo_digest(root: Path, ref: str) -> str:
    out = lamina(root, "inspect", "--format", "{{json .RepoDigests}}", ref)
    assert out.code == 0, out.stderr
    return json.loads(out.stdout)[0].split("@")[1]


def test_a_build_that_only_pushes_downloads_no_layer(reg, tmp_path):
    ctx = _context(tmp_path / "ctx", APP)
    first = build(tmp_path / "a", ctx, "-t", f"{reg}/ci/app:1", "--push",
                  "--cache-to", f"type=registry,ref={reg}/ci/cache:1,mode=max").check()
    # another machine, an empty store: every step a cache hit, pushed under a new name
    b = tmp_path / "b"
    second = build(b, ctx, "--cache-from", f"{reg}/ci/cache:1",
                   "-t", f"{reg}/deploy/app:2", "--push").check()
    assert all(s.cached for s in second.steps if s.title.split("] ", 1)[-1].startswith(
        ("COPY", "RUN"))), second.stderr
    assert second.image_id == first.image_id  # the random bytes came from the cache
    layers = [l["digest"] for l in _raw(f"{reg}/deploy/app:2")["layers"]]
    assert len(layers) == 5
    assert not set(layers) & _stored_blobs(b)  # not one layer downloaded
    # what was pushed is whole: a third store pulls it, skopeo copies it
    c = tmp_path / "c"
    assert lamina(c, "pull", f"{reg}/deploy/app:2").code == 0
    assert _repo_digest(c, f"{reg}/deploy/app:2") == _repo_digest(b, f"{reg}/deploy/app:2")
    assert set(layers) <= _stored_blobs(c)
    skopeo = require_tool("skopeo")
    copied = subprocess.run([skopeo, "copy", "-q", "--src-tls-verify=false",
                             f"docker://{reg}/deploy/app:2", f"oci:{tmp_path / 'oci'}:app"],
                            capture_output=True, text=True)
    assert copied.returncode == 0, copied.stderr
    # the store that did not fetch them is consistent, and fetches them when read
    fsck = lamina(b, "fsck")
    assert fsck.code == 0 and "5 layer blob(s) not fetched yet" in fsck.stdout, fsck.stdout
    # (the container writes to lamina's own stdout: the exit status says what it read)
    ran = lamina(b, "run", "--rm", "--network", "none", f"{reg}/deploy/app:2",
                 "sh", "-c", 'test "$(cat /greeting.txt)" = hello')
    assert ran.code == 0, ran.stderr
    saved = lamina(b, "save", "-o", str(tmp_path / "app.tar"), f"{reg}/deploy/app:2")
    assert saved.code == 0, saved.stderr
    assert set(layers) <= _stored_blobs(b)
    fsck = lamina(b, "fsck")
    assert fsck.code == 0 and "not fetched" not in fsck.stdout, fsck.stdout


BASE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo base > /etc/base-marker
"""


def test_a_from_base_is_fetched_when_a_step_reads_it(reg, tmp_path):
    base_ref = f"{reg}/lazy/base:1"
    build(tmp_path / "a", _context(tmp_path / "base", BASE), "-t", base_ref, "--push").check()
    base_layers = [l["digest"] for l in _raw(base_ref)["layers"]]
    b = tmp_path / "b"
    # metadata only: the base's config is all the build reads
    meta = build(b, make_context(tmp_path / "meta", f"FROM {base_ref}\nENV MODE=prod\n"
                                 "LABEL team=ci\nCMD [\"cat\", \"/etc/base-marker\"]\n"),
                 "-t", f"{reg}/lazy/meta:1", "--push").check()
    assert not set(base_layers) & _stored_blobs(b)
    assert [l["digest"] for l in _raw(f"{reg}/lazy/meta:1")["layers"]] == base_layers
    size_a = int(lamina(tmp_path / "a", "inspect", "--format", "{{.Size}}", base_ref).stdout)
    size_b = int(lamina(b, "inspect", "--format", "{{.Size}}", base_ref).stdout)
    assert 0 < size_b < size_a  # the compressed sizes stand in until the layers are here
    assert json.loads(lamina(b, "inspect", "--format", "{{json .Config.Env}}",
                             meta.image_id).stdout)[-1] == "MODE=prod"
    # a RUN reads the base's files: they are fetched (and checked) then
    run = build(b, make_context(tmp_path / "run", f"FROM {base_ref}\n"
                                "RUN cat /etc/base-marker > /copied\n"), "-t", "uses-base").check()
    assert set(base_layers) <= _stored_blobs(b)
    assert int(lamina(b, "inspect", "--format", "{{.Size}}", base_ref).stdout) == size_a
    out = lamina(b, "run", "--rm", "--network", "none", run.image_id,
                 "sh", "-c", 'test "$(cat /copied)" = base')
    assert out.code == 0, out.stderr


def test_a_layer_that_cannot_be_fetched_is_one_clear_error(tmp_path):
    with registry(tmp_path / "reg") as host:
        base_ref = f"{host}/gone/base:1"
        build(tmp_path / "a", _context(tmp_path / "base", BASE), "-t", base_ref, "--push").check()
        b = tmp_path / "b"
        build(b, make_context(tmp_path / "meta", f"FROM {base_ref}\nENV X=1\n"), "-t", "meta").check()
        # the registry loses the base's last layer
        last = _raw(base_ref)["layers"][-1]["digest"].split(":")[1]
        (tmp_path / "reg" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / last[:2]
         / last / "data").unlink()
        failed = build(b, make_context(tmp_path / "run", f"FROM {base_ref}\nRUN ls /\n"))
    assert failed.code != 0
    assert f"sha256:{last}" in failed.stderr and "gone/base" in failed.stderr, failed.stderr
    assert "cannot be fetched" in failed.stderr and "Traceback" not in failed.stderr
    fsck = lamina(b, "fsck")  # nothing half-fetched stays
    assert fsck.code == 0 and "not fetched yet" in fsck.stdout, fsck.stdout
