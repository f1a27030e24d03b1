"""What a container keeps of the store: its image, from `create` to `rm`.

Every existing container, running or stopped, is a gc root: `create` registers a
store hold (store.holds) named ``container <id>`` on its image's manifest, config and
layers, and removing the container releases it (ContainerStore.remove). A lease
would not do: it lasts only as long as a process, and a stopped container has none.

    hold_image(store, cid, image)        # in create, under the containers' names lock
    release_image(store, cid)            # once the container's dir is gone
    sweep(store, cs)                     # holds of vanished containers released, old
                                         # containers (made before holds) held
    image_users(cs)(manifest_digest)     # what `rmi` is told: docker's conflicts
    container_image(store, c)            # the image, even after `rmi -f` removed it

`rmi` of an image a container uses is refused as docker refuses it ("image is being
used by stopped container 1a2b3c4d5e6f", `-f` allowed; a running container's image
cannot be deleted, `-f` on its last tag only untags it: store.tags.remove_image).
"""

from __future__ import annotations

from typing import Callable

from lamina.builder.containers.state import HOLD_PREFIX, Container, ContainerStore, hold_name
from lamina.store import holds, oci
from lamina.store.errors import ImageNotFound, StoreError
from lamina.store.images import Image
from lamina.store.locks import flocked

def hold_image(store, cid: str, image: Image) -> None:
    holds.hold(store, hold_name(cid), blobs=[image.manifest_digest, image.config_digest],
               layers=[l.diff_id for l in image.layers], images=[image.manifest_digest])


def release_image(store, cid: str) -> None:
    holds.release(store, hold_name(cid))


def sweep(store, cs: ContainerStore) -> None:
    """Release the holds of containers whose dir is gone (a crash between removing the
    dir and releasing), and hold the image of a container that has none (made by a
    lamina before holds) if the image is still there. Under the names lock, so a
    container being created (hold made, dir not yet) is never taken for vanished."""
    if not cs.dir.is_dir():
        return
    with flocked(cs.dir / ".names.lock"):
        held = {n[len(HOLD_PREFIX):] for n in holds.names(store) if n.startswith(HOLD_PREFIX)}
        present = {c.id: c for c in cs.all()}
        for cid in held - set(present):
            if not cs.path(cid).is_dir():
                release_image(store, cid)
        for cid in set(present) - held:
            try:
                hold_image(store, cid, store._load_image(present[cid].manifest))
            except StoreError:
                pass


def image_users(cs: ContainerStore) -> Callable[[str], list[holds.ImageUser]]:
    """For `rmi`: the containers using an image, running ones first (docker names
    the first it finds: a running one is the harder conflict)."""
    def users(manifest_digest: str) -> list[holds.ImageUser]:
        out = []
        for c in cs.listing():
            if c.manifest == manifest_digest:
                running = c.status == "running"
                out.append(holds.ImageUser(f"container {c.short_id}",
                                           "running" if running else "stopped", hard=running))
        return sorted(out, key=lambda u: not u.hard)
    return users


def container_image(store, c: Container) -> Image:
    """The container's image: its stored record, or, after `rmi -f` deleted that,
    rebuilt from the manifest and config blobs and the layers the hold kept."""
    try:
        return store._load_image(c.manifest)
    except ImageNotFound:
        pass
    try:
        manifest = oci.decode(store.blobs.read(c.manifest), f"manifest {c.manifest}")
        config_digest = manifest["config"]["digest"]
        config = oci.decode(store.blobs.read(config_digest), f"config {config_digest}")
        layers = tuple(store.layer(d) for d in config["rootfs"]["diff_ids"])
    except (StoreError, KeyError, TypeError) as exc:
        raise ImageNotFound(f"the image of container {c.short_id} ({c.image}) is gone from "
                            f"the store: {exc}", ref=c.image) from None
    return Image(c.manifest, config_digest, manifest, config, layers, ())
