"""Each sample built twice in two stores gives the same image (the issue's "Done when"):

- "CI": a checkout of the sample, umask 022, lamina's clock faked to 2031-02-03
  (libfaketime preloaded into lamina: `faketime '2031-02-03 04:05:06' lamina ...`), a
  store writing gzip layer blobs (`--store-compression gzip`), SOURCE_DATE_EPOCH unset
  (so 0);
- "elsewhere": `lamina verify` at the real time, under umask 077, from another copy of
  the context (other mtimes, files created in the reverse order), rebuilding into a
  zstd store (the default).

The image IDs must be equal; the manifest digests differ (gzip vs zstd blobs) and
verify says that the difference is the compression only, layer by layer. The faked
clock is checked to have reached lamina (the tag time it records is in 2031), so the
test would notice a build that put the wall clock into the image. (faketime reaches
lamina's own process, not a RUN's: a step runs with the image's environment, and the
samples' busybox is static. What a RUN writes gets the kernel's real time, which the
commit clamps to SOURCE_DATE_EPOCH.)

The busybox samples go through an OCI archive into a clean store; python-app (a
debootstrap base, slow: CI or LAMINA_SLOW_TESTS=1) is verified in its own store, which
holds the base image its provenance names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.builder.buildkit import REPO, busybox_binary, lamina, lamina_argv, python_env
from tests.builder.test_repro_compression import manifest_layers
from tests.builder.test_verify import context_copy
from tests.conftest import IN_CI, require_tool

pytestmark = pytest.mark.root

FAKED = "2031-02-03 04:05:06"
SLOW = pytest.mark.skipif(not (IN_CI or os.environ.get("LAMINA_SLOW_TESTS")),
                          reason="debootstrap base (~2 min): runs in CI, or with LAMINA_SLOW_TESTS=1")


@pytest.mark.parametrize("sample", ["hello", "multistage", "moby-style", pytest.param("python-app", marks=SLOW)])
def test_sample_builds_the_same_another_day_in_another_store(tmp_path, tmp_path_factory, sample):
    faketime = require_tool("faketime")
    ctx = tmp_path / "ctx"
    shutil.copytree(REPO / "samples" / sample, ctx, ignore=shutil.ignore_patterns("busybox", "__pycache__"))
    ci = tmp_path / "ci"
    ref = f"{sample}:1"
    if sample == "python-app":
        from tests.builder.test_differential import DEBIAN_REF, debian_rootfs_tar

        imported = lamina(ci, "import", debian_rootfs_tar(tmp_path_factory), DEBIAN_REF)
        assert imported.code == 0, imported.stderr
        out = []
    else:
        shutil.copy2(busybox_binary(), ctx / "busybox")
        archive = tmp_path / f"{sample}.tar"
        out = ["--output", f"type=oci,dest={archive}"]  # gzip: the stored (gzip) blobs as they are
    env = {k: v for k, v in python_env().items() if k not in ("SOURCE_DATE_EPOCH", "LAMINA_STORE_COMPRESSION")}
    p = subprocess.run([faketime, FAKED, *lamina_argv(ci, "--store-compression", "gzip", "build", "-q", "-t", ref,
                                                      *out, ctx)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=900, umask=0o022)
    assert p.returncode == 0, p.stderr
    image_id = p.stdout.strip().splitlines()[-1]
    # the clock lamina saw was the faked one
    tagged = json.loads(lamina(ci, "inspect", ref).stdout)[0]["Metadata"]["LastTagTime"]
    assert tagged.startswith("2031-02-03T04:0"), tagged
    config, manifest, layers = manifest_layers(ci, ref)
    assert config == image_id
    gzip_layers = [i for i, (_, kind) in enumerate(layers) if kind == "gzip"]
    assert gzip_layers and layers[-1] == ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip")

    checkout = context_copy(ctx, tmp_path / "checkout")
    old = os.umask(0o077)
    try:
        if sample == "python-app":
            result = lamina(ci, "verify", "--format", "json", ref, checkout)
        else:
            result = lamina(tmp_path / "elsewhere", "verify", "--format", "json", archive, checkout)
    finally:
        os.umask(old)
    assert result.code == 0, result.stdout + result.stderr
    got = json.loads(result.stdout)
    assert got["identical"] is True
    assert got["original"] == {"id": image_id, "manifest": manifest}
    assert got["rebuilt"]["id"] == image_id and got["rebuilt"]["manifest"] != manifest
    head, *per_layer = got["explanation"]
    assert head.startswith("image ID identical; the manifest digests differ only in the compressed layer bytes")
    assert [int(line.split()[1].rstrip(":")) - 1 for line in per_layer] == gzip_layers
    assert all("other compressed bytes (gzip sha256:" in line and "-> zstd sha256:" in line for line in per_layer)
