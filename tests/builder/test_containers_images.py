"""A container keeps its image from `run` to `rm`, running or stopped (a store hold,
builder.containers.imagehold): gc leaves its layers, `commit` works after the image
was force-removed, and `rmi` refuses an image in use with docker's conflicts
(docker's daemon/images/image_delete.go: a tag that is the image's last needs -f, an
image ID used by a stopped container needs -f, one used by a running container cannot
be deleted at all; -f on its last tag then only untags it)."""

from __future__ import annotations

import pytest

from tests.builder.buildkit import build, make_base, make_context
from tests.builder.test_containers import lamina, wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def own_store(tmp_path):
    """A store of its own: these tests remove images (the shared `bb` must stay)."""
    from lamina.store.store import Store

    root = tmp_path / "store"
    make_base(root, tmp_path / "base")
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo layer > /marker\n", {})
    build(root, ctx, "-t", "keepme").check()
    with Store(root) as s:
        image = s.resolve("keepme")
        dirs = [s.layer_dir(l.diff_id) for l in image.layers]
    yield root, image, dirs
    for cid in lamina(root, "ps", "-aq", "--no-trunc").stdout.split():
        lamina(root, "rm", "-f", cid)


def test_a_stopped_container_keeps_its_image_through_rmi_f_and_gc(own_store):
    root, image, dirs = own_store
    short = image.config_digest.split(":")[1][:12]
    r = lamina(root, "run", "--network", "none", "keepme", "sh", "-c", "echo mine > /added")
    assert r.returncode == 0, r.stderr
    cid = lamina(root, "ps", "-aq", "--no-trunc").stdout.strip()
    refused = lamina(root, "rmi", "keepme")
    assert refused.returncode != 0
    assert (f'conflict: unable to remove repository reference "keepme" (must force) - '
            f"container {cid[:12]} is using its referenced image {short}") in refused.stderr
    refused = lamina(root, "rmi", image.config_digest)
    assert refused.returncode != 0
    assert (f"conflict: unable to delete {short} (must be forced) - image is being used by "
            f"stopped container {cid[:12]}") in refused.stderr
    assert "Traceback" not in refused.stderr
    forced = lamina(root, "rmi", "-f", "keepme")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines() == ["Untagged: keepme:latest", f"Deleted: {image.config_digest}"]
    assert lamina(root, "rmi", "bb").returncode == 0
    assert lamina(root, "prune", "-f").returncode == 0
    assert lamina(root, "gc").returncode == 0
    assert all(d.is_dir() for d in dirs)            # the stopped container's hold
    committed = lamina(root, "commit", cid, "saved:1")
    assert committed.returncode == 0, committed.stderr
    out = lamina(root, "run", "--rm", "--network", "none", "saved:1", "cat", "/marker", "/added")
    assert out.stdout == "layer\nmine\n", out.stderr
    assert lamina(root, "rm", cid).returncode == 0
    assert lamina(root, "rmi", "saved:1").returncode == 0
    assert lamina(root, "gc").returncode == 0
    assert not any(d.exists() for d in dirs)        # released with the container


def test_rmi_of_a_running_containers_image(own_store):
    root, image, dirs = own_store
    short = image.config_digest.split(":")[1][:12]
    cid = lamina(root, "run", "-d", "--network", "none", "keepme", "sleep", "1000").stdout.strip()
    assert len(cid) == 64
    for args in ((image.config_digest,), ("-f", image.config_digest)):
        refused = lamina(root, "rmi", *args)
        assert refused.returncode != 0
        assert (f"conflict: unable to delete {short} (cannot be forced) - image is being used "
                f"by running container {cid[:12]}") in refused.stderr
    untagged = lamina(root, "rmi", "-f", "keepme")
    assert untagged.returncode == 0 and untagged.stdout == "Untagged: keepme:latest\n"
    ids = lamina(root, "images", "-q", "--no-trunc").stdout.split()
    assert image.config_digest in ids               # dangling, as docker leaves it
    assert lamina(root, "stop", "-t", "1", cid).returncode == 0
    assert wait_for(lambda: "exited" in lamina(root, "ps", "-a", "--format", "{{.State}}").stdout)
    stopped = lamina(root, "rmi", image.config_digest)
    assert f"image is being used by stopped container {cid[:12]}" in stopped.stderr
    assert lamina(root, "rm", cid).returncode == 0
    assert lamina(root, "rmi", image.config_digest).returncode == 0
    assert lamina(root, "gc").returncode == 0
    assert lamina(root, "run", "--rm", "--network", "none", "bb", "true").returncode == 0


def test_rm_releases_a_hold_left_by_a_crash_and_holds_older_containers(own_store):
    from lamina.builder.containers.imagehold import hold_name
    from lamina.builder.containers.state import ContainerStore
    from lamina.store import holds
    from lamina.store.store import Store

    root, image, dirs = own_store
    lamina(root, "run", "--network", "none", "--name", "old", "keepme", "true")
    cs = ContainerStore(root)
    old = cs.find("old")
    with Store(root) as s:
        assert holds.holders(s, image=image.manifest_digest) == [hold_name(old.id)]
        holds.release(s, hold_name(old.id))                   # as a lamina before holds
        holds.hold(s, hold_name("f" * 64), images=[image.manifest_digest])  # a crashed rm
    lamina(root, "run", "--network", "none", "--name", "other", "keepme", "true")
    assert lamina(root, "rm", "other").returncode == 0        # rm sweeps
    with Store(root) as s:
        assert holds.holders(s, image=image.manifest_digest) == [hold_name(old.id)]
