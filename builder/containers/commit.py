"""`lamina commit CONTAINER REF`: the container's upper dir becomes one more layer on
its image, as a RUN step's does (store write_layer + adopt_layer_dir).

The upper dir of a container stays its own (it may be running, and may be committed
again), so the layer is made from a copy: every entry with its type, mode, owner,
times, xattrs (the overlay opaque marker included) and hard links, whiteouts as the
0/0 character devices they are. The copy then loses what the sandbox created only
as mount points (/proc, /etc/hostname... builder.sandbox.mountpoints.remove_stubs)
and the kernel's overlay bookkeeping (overlay.finalize_upper). The config is the
image's with the container's Env, and its Cmd/Entrypoint when they were given on the
`run` command line (docker's commit); history gets one entry.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from lamina.builder.containers.logs import rfc3339_nano
from lamina.builder.containers.state import Container
from lamina.store.images import Image
from lamina.store.locks import remove_tree
from lamina.store.store import Store


def copy_tree(src: Path, dst: Path) -> None:
    """Copy `src` into the new dir `dst` exactly (never following symlinks)."""
    links: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, os.stat_result]] = []

    def meta(path: str, st: os.stat_result, src_path: str) -> None:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        try:
            for name in os.listxattr(src_path, follow_symlinks=False):
                os.setxattr(path, name, os.getxattr(src_path, name, follow_symlinks=False),
                            follow_symlinks=False)
        except OSError:
            pass
        if not stat.S_ISDIR(st.st_mode):
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    st = os.lstat(src)
    os.mkdir(dst, 0o700)
    meta(str(dst), st, str(src))
    dirs.append((str(dst), st))
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out_dir = os.path.normpath(os.path.join(dst, rel))
        for name in dirnames + filenames:
            s = os.path.join(dirpath, name)
            d = os.path.join(out_dir, name)
            st = os.lstat(s)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(d, 0o700)
                dirs.append((d, st))
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(s), d)
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
                os.link(links[(st.st_dev, st.st_ino)], d)
                continue
            elif stat.S_ISREG(mode):
                shutil.copyfile(s, d, follow_symlinks=False)
                if st.st_nlink > 1:
                    links[(st.st_dev, st.st_ino)] = d
            else:
                os.mknod(d, mode, st.st_rdev)
            meta(d, st, s)
        # os.walk does not descend into symlinked dirs (followlinks=False): good
    for d, st in reversed(dirs):
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))


def commit_config(image: Image, c: Container, message: str = "", author: str = "") -> dict:
    config = {k: v for k, v in image.config.items() if k not in ("rootfs", "history")}
    inner = dict(config.get("config") or {})
    inner["Env"] = list(c.env)
    if c.entrypoint is not None:
        inner["Entrypoint"] = list(c.entrypoint) or None
        inner["Cmd"] = list(c.args) or None
    elif c.args:
        inner["Cmd"] = list(c.args)
    inner = {k: v for k, v in inner.items() if v is not None}
    config["config"] = inner
    config["created"] = rfc3339_nano()
    if author:
        config["author"] = author
    history = list(image.config.get("history") or [])
    entry = {"created": config["created"], "created_by": " ".join(c.argv)}
    if message:
        entry["comment"] = message
    if author:
        entry["author"] = author
    history.append(entry)
    config["history"] = history
    return config


def commit(store: Store, c: Container, upper: Path, ref: str | None, *, message: str = "",
           author: str = "") -> Image:
    """Make the image; `ref` tags it (None: untagged, as `docker commit` without REF)."""
    from lamina.builder.containers.imagehold import container_image
    from lamina.builder.sandbox.mountpoints import remove_stubs
    from lamina.builder.sandbox.overlay import finalize_upper

    with store.lease() as lease:
        with store.writing():
            image = container_image(store, c)
            lease.hold(layers=[l.diff_id for l in image.layers], images=[c.manifest])
        scratch = store.temp_path("commit")
        scratch.mkdir()
        try:
            snapshot = scratch / "upper"
            copy_tree(upper, snapshot)
            if c.stubs:
                remove_stubs(str(snapshot), c.stubs)
            finalize_upper(snapshot)
            layer = store.write_layer(snapshot, lease=lease)
            store.adopt_layer_dir(layer.diff_id, snapshot)
            config = commit_config(image, c, message, author)
            config["rootfs"] = {"type": "layers",
                                "diff_ids": [l.diff_id for l in image.layers] + [layer.diff_id]}
            return store.commit_image(config, list(image.layers) + [layer],
                                      tags=[ref] if ref else [])
        finally:
            if scratch.exists():
                remove_tree(scratch)



