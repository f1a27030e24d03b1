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
    type=image[,name=REF[,REF...]][,push=true][,compression=gzip|zstd]
                            the image tagged REF in the store (default: the build's -t
                            tags), and with push=true pushed to each REF's registry
                            (as `lamina push`; compression of the pushed layers)
    type=registry[,name=...]  shorthand for type=image,push=true (as buildx)

`--push` is type=registry too: every name is tagged once and pushed once, whichever
of the three asked for it (`image_names`; bake hands its targets' image and registry
outputs to `lamina build` through the same parser). Several names go in one quoted
CSV field as with buildx: `-o 'type=registry,"name=r/a:1,r/a:latest"'`.

The root filesystem is the merged, read-only view of the image's layers, mounted
in a private mount namespace (builder.mountedroot) and written with the store's
deterministic tar writer; `local` extracts that tar (safely) into DIR.
A bare `-o DIR` means type=local,dest=DIR, as with buildx. Rootless, `local` files
belong to the user (as BuildKit's client writes them), not to the image's owners.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.errors import BuildError
from lamina.builder.sandbox.overlay import mount_overlay_readonly
from lamina.store import archive
from lamina.store.store import Image, Store
from lamina.store.tarlayer import extract_tar, write_tar

FILE_TYPES = ("oci", "docker", "tar", "local")
IMAGE_TYPES = ("image", "registry")
TYPES = FILE_TYPES + IMAGE_TYPES


COMPRESSIONS = ("gzip", "zstd")

_TRUE = ("1", "t", "true")      # buildx reads push= as Go's ParseBool
_FALSE = ("0", "f", "false")


@dataclass(frozen=True)
class Output:
    type: str
    dest: Path | None = None        # file types
    compression: str | None = None  # type=oci: the archive's; type=image: the pushed layers'
    names: tuple[str, ...] = ()     # type=image: name= (empty: the build's -t tags)
    push: bool = False              # type=image,push=true / type=registry


def parse_output(text: str) -> Output:
    """One `--output` value, as buildx reads it (CSV: a quoted field may hold commas)."""
    if "=" not in text:
        return Output("local", Path(text))
    fields = {}
    try:
        (parts,) = csv.reader([text])
    except (csv.Error, ValueError):
        raise BuildError(f"invalid --output {text!r}: not comma-separated key=value fields") from None
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            raise BuildError(f"invalid --output {text!r}: expected type=TYPE,dest=PATH")
        fields[key.strip().lower()] = value.strip()
    return output_from_fields(fields, text)


def output_from_fields(fields: dict[str, str], text: str) -> Output:
    """An output from its fields (`lamina build -o`, a bake target's `output` entry)."""
    kind = fields.get("type", "local")
    if kind not in TYPES:
        raise BuildError(f"invalid --output {text!r}: type must be one of {', '.join(TYPES)}")
    comp = fields.get("compression")
    if comp is not None and comp not in COMPRESSIONS:
        raise BuildError(f"invalid --output {text!r}: compression must be one of {', '.join(COMPRESSIONS)}")
    if kind in IMAGE_TYPES:
        push = fields.get("push", "true" if kind == "registry" else "false").lower()
        if push not in _TRUE + _FALSE:
            raise BuildError(f"invalid --output {text!r}: push must be true or false")
        if kind == "registry" and push in _FALSE:
            raise BuildError(f"invalid --output {text!r}: type=registry always pushes "
                             "(type=image,push=false only tags)")
        names = tuple(n.strip() for n in fields.get("name", "").split(",") if n.strip())
        for name in names:
            _check_name(name, text)
        return Output("image", None, comp, names, push in _TRUE)
    dest = fields.get("dest")
    if not dest:
        raise BuildError(f"invalid --output {text!r}: dest= is required")
    if comp is not None and kind != "oci":
        raise BuildError(f"invalid --output {text!r}: compression= applies to type=oci only "
                         "(a docker archive holds uncompressed layers)")
    return Output(kind, Path(dest), comp)


def _check_name(name: str, text: str) -> None:
    from lamina.store import refs
    from lamina.store.errors import StoreError

    try:
        ref = refs.parse(name)
    except StoreError as e:
        raise BuildError(f"invalid --output {text!r}: name {name!r}: {e}") from None
    if ref.digest is not None:
        raise BuildError(f"invalid --output {text!r}: name {name!r} is a digest; name a tag")


def image_names(outputs, tags: tuple[str, ...], push: bool = False) -> tuple[tuple[str, ...], dict[str, str]]:
    """What the image outputs (and `--push`, which is type=registry) ask, once each:
    the names to tag in the store, and the names to push with their layer compression.
    An image output without name= names the build's -t tags, as buildx's exporter."""
    wanted = [o for o in outputs if o.type == "image"]
    if push:
        wanted.append(Output("image", push=True))
    tagged: dict[str, None] = {}
    pushed: dict[str, str] = {}
    for out in wanted:
        names = out.names or tuple(tags)
        if not names:
            raise BuildError("pushing needs a name: -t NAME:TAG, or name= in the output"
                             if out.push else "--output type=image needs a name: -t NAME:TAG or name=")
        for name in names:
            tagged[name] = None
            if out.push:
                pushed.setdefault(name, out.compression or "gzip")
    return tuple(tagged), pushed


def deliver_image(store: Store, image: Image, outputs, tags: tuple[str, ...], push: bool = False,
                  progress_for=None, report=None) -> None:
    """Tag and push `image` as the image outputs ask (`image_names`). `progress_for(ref)`
    makes the per-blob progress of one push; `report(pushed)` hears each push's result."""
    from lamina.store.registry.push import push_image

    tagged, pushed = image_names(outputs, tags, push)
    for name in tagged:
        if name not in tags:  # the -t tags are the build's own
            store.tag(name, image.manifest_digest)
    for name, compression in pushed.items():
        # the built image itself, not what `name` names when its push starts (a
        # concurrent build may have moved the tag since)
        result = push_image(store, image.manifest_digest, name, compression=compression,
                            progress=progress_for(name) if progress_for else None)
        if report:
            report(result)


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
    if out.type == "image":
        return  # tagged and pushed by deliver_image
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
