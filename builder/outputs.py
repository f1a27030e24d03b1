"""`lamina build --output`: where a built image goes besides the store, as buildx
names the exporters.

    type=oci,dest=FILE[,compression=gzip|zstd]
                            an OCI image archive (tar of an OCI layout); its layers
                            gzip by default (readable by every tool: zstd layers of
                            the store are recompressed once, see store.recompress,
                            so the archive's manifest digest differs from the stored
                            image's, its image ID does not), zstd: the stored image
    type=docker,dest=FILE   a docker-archive, for `docker load` / `podman load`
    type=tar,dest=FILE      a tarball of the image's root filesystem
    type=local,dest=DIR     the image's root filesystem written into DIR

The root filesystem is the merged, read-only view of the image's layers, mounted
in a private mount namespace (builder.mountedroot) and written with the store's
deterministic tar writer; `local` extracts that tar (safely) into DIR.
A bare `-o DIR` means type=local,dest=DIR, as with buildx. Rootless, `local` files
belong to the user (as BuildKit's client writes them), not to the image's owners.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.errors import BuildError
from lamina.builder.sandbox.overlay import mount_overlay_readonly
from lamina.store import archive
from lamina.store.store import Image, Store
from lamina.store.tarlayer import extract_tar, write_tar

TYPES = ("oci", "docker", "tar", "local")


COMPRESSIONS = ("gzip", "zstd")


@dataclass(frozen=True)
class Output:
    type: str
    dest: Path
    compression: str | None = None  # type=oci only; None: the default (gzip)


def parse_output(text: str) -> Output:
    if "=" not in text:
        return Output("local", Path(text))
    fields = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise BuildError(f"invalid --output {text!r}: expected type=TYPE,dest=PATH")
        fields[key.strip()] = value.strip()
    kind = fields.get("type", "local")
    if kind not in TYPES:
        raise BuildError(f"invalid --output {text!r}: type must be one of {', '.join(TYPES)}")
    dest = fields.get("dest")
    if not dest:
        raise BuildError(f"invalid --output {text!r}: dest= is required")
    comp = fields.get("compression")
    if comp is not None:
        if kind != "oci":
            raise BuildError(f"invalid --output {text!r}: compression= applies to type=oci only "
                             "(a docker archive holds uncompressed layers)")
        if comp not in COMPRESSIONS:
            raise BuildError(f"invalid --output {text!r}: compression must be one of {', '.join(COMPRESSIONS)}")
    return Output(kind, Path(dest), comp)


def _rootfs_tar(store: Store, image: Image, out_fd: int, epoch: int | None) -> None:
    """Write the merged root filesystem of `image` as a tar to the open file `out_fd`."""
    from lamina.builder.sandbox.mountedroot import run_in_namespace

    lowers = tuple(store.layer_dir(l.diff_id) for l in reversed(image.layers))
    scratch = store.temp_path("export")
    scratch.mkdir()

    def work() -> None:
        view = scratch / "view"
        view.mkdir()
        mount_overlay_readonly(lowers, view, scratch)
        with os.fdopen(os.dup(out_fd), "wb") as f:
            write_tar(view, f, source_date_epoch=epoch)

    try:
        run_in_namespace(work)
    finally:
        from lamina.store.locks import remove_tree
        remove_tree(scratch)


def write_output(store: Store, image: Image, out: Output, *, epoch: int | None = None,
                 tags: tuple[str, ...] = ()) -> None:
    """Write `image` as `out` asks. Archives name the image by `tags` (the build's -t,
    as buildx names the docker/oci exporters' images), else only by its ID."""
    if out.type in ("oci", "docker"):
        archive.save(store, list(tags) or [image.config_digest], out.dest, fmt=out.type,
                     compression=out.compression)
        return
    if out.type == "tar":
        # made O_EXCL with an unguessable name: DEST's directory may be a shared one
        # (/tmp) where another user plants a symlink at a predictable temp name
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{out.dest.name}.", suffix=".tmp",
                                       dir=out.dest.parent)
        except OSError as e:
            raise BuildError(f"cannot write {out.dest}: {e.strerror}") from None
        try:
            _rootfs_tar(store, image, fd, epoch)
            os.fchmod(fd, 0o644)
            os.replace(tmp, out.dest)
        finally:
            os.close(fd)
            if os.path.lexists(tmp):
                os.unlink(tmp)
        return
    dest = out.dest
    dest.mkdir(parents=True, exist_ok=True)
    tmp = store.temp_path("rootfs.tar")
    try:
        with open(tmp, "xb") as f:
            _rootfs_tar(store, image, f.fileno(), epoch)
        with open(tmp, "rb") as f:
            # rootless (builder.sandbox.userns): the files are the user's, as BuildKit's
            # client writes them (the image's owners would be subordinate IDs on the host),
            # without setuid/setgid bits, as an unprivileged tar extracts them: a setuid
            # file of the user's own would let anyone who can reach DEST act as the user
            rootless = os.environ.get("LAMINA_ROOTLESS") in ("subids", "single")
            extract_tar(f, dest, same_owner=False if rootless else None, drop_setid=rootless)
    finally:
        if tmp.exists():
            tmp.unlink()
