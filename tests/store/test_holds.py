"""Holds (store.holds): named gc roots no process keeps alive - what gc keeps for them,
that release gives it back, and rmi's conflicts with an image's users. The conflict
texts are docker's (daemon/images/image_delete.go: "unable to remove repository
reference ... (must force) - container X is using its referenced image Y", "unable
to delete Y (must be forced|cannot be forced) - image is being used by stopped|
running container X")."""

from __future__ import annotations

import pytest

from lamina.store import holds
from lamina.store.errors import StoreError
from lamina.store.store import Store
from tests.store.test_gc import commit, make_layer


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def _dirs(s, image):
    return [s.layer_dir(l.diff_id) for l in image.layers]


def test_a_hold_keeps_an_image_deleted_by_rmi_through_gc_until_released(store, tmp_path):
    a = make_layer(store, tmp_path, "a", b"a" * 100)
    b = make_layer(store, tmp_path, "b", b"b" * 100)
    img = commit(store, [a, b], "app:1")
    dirs = _dirs(store, img)
    holds.hold(store, "container c1", blobs=[img.manifest_digest, img.config_digest],
               layers=[a.diff_id, b.diff_id], images=[img.manifest_digest])
    assert holds.holders(store, image=img.manifest_digest) == ["container c1"]
    assert holds.names(store) == ["container c1"]
    out = store.remove_image("app:1", force=True)   # -f: allowed, the image row goes
    assert out[-1] == f"Deleted: {img.config_digest}"
    report = store.gc()
    assert report.layers_removed == 0 and all(d.is_dir() for d in dirs)
    for digest in (img.manifest_digest, img.config_digest, a.digest, b.digest):
        assert store.blobs.exists(digest)
    rep = store.fsck()                               # held blobs are referenced, not strays
    assert not rep.problems and not any("unreferenced" in n for n in rep.notes), rep.notes
    holds.release(store, "container c1")
    holds.release(store, "container c1")            # twice: nothing to do
    assert holds.names(store) == []
    report = store.gc()
    assert report.layers_removed == 2 and not any(d.exists() for d in dirs)
    assert not store.blobs.exists(img.manifest_digest)


def test_holds_before_any_hold_was_made(store):
    assert holds.names(store) == [] and holds.holders(store, image="sha256:" + "0" * 64) == []
    holds.release(store, "nobody")
    with pytest.raises(StoreError):
        holds.hold(store, "", layers=["x"])


def _short(img) -> str:
    return img.config_digest.split(":")[1][:12]


def test_rmi_of_an_image_a_stopped_container_uses(store, tmp_path):
    img = commit(store, [make_layer(store, tmp_path, "a", b"a")], "app:1")
    stopped = [holds.ImageUser("container 1a2b3c4d5e6f", "stopped")]
    users = lambda md: stopped if md == img.manifest_digest else []  # noqa: E731
    with pytest.raises(StoreError) as e:
        store.remove_image("app:1", users=users)
    assert str(e.value).startswith(
        f'conflict: unable to remove repository reference "app:1" (must force) - container '
        f"1a2b3c4d5e6f is using its referenced image {_short(img)}")
    with pytest.raises(StoreError) as e:
        store.remove_image(img.config_digest, users=users)
    assert str(e.value).startswith(
        f"conflict: unable to delete {_short(img)} (must be forced) - image is being used by "
        "stopped container 1a2b3c4d5e6f")
    # another tag of it goes without force: the image keeps a name
    store.tag("app:2", "app:1")
    assert store.remove_image("app:2", users=users) == ["Untagged: app:2"]
    assert store.remove_image(img.config_digest, force=True, users=users) == [
        "Untagged: app:1", f"Deleted: {img.config_digest}"]


def test_rmi_of_an_image_a_running_container_uses(store, tmp_path):
    img = commit(store, [make_layer(store, tmp_path, "a", b"a")], "app:1")
    users = lambda md: [holds.ImageUser("container 1a2b3c4d5e6f", "running", hard=True)]  # noqa: E731
    for force in (False, True):
        with pytest.raises(StoreError) as e:
            store.remove_image(img.config_digest, force=force, users=users)
        assert str(e.value).startswith(
            f"conflict: unable to delete {_short(img)} (cannot be forced) - image is being used "
            "by running container 1a2b3c4d5e6f")
    # -f on its last tag: untagged, the image stays (dangling, as docker leaves it)
    assert store.remove_image("app:1", force=True, users=users) == ["Untagged: app:1"]
    assert [i.manifest_digest for i in store.images()] == [img.manifest_digest]


def test_rmi_without_a_users_callback_refuses_a_held_image(store, tmp_path):
    img = commit(store, [make_layer(store, tmp_path, "a", b"a")], "app:1")
    holds.hold(store, "container abc", images=[img.manifest_digest])
    with pytest.raises(StoreError, match="container abc is using its referenced image"):
        store.remove_image("app:1")
    holds.release(store, "container abc")
    assert store.remove_image("app:1")[-1] == f"Deleted: {img.config_digest}"
