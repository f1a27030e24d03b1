"""`lamina commit CONTAINER REF`: the container's upper dir becomes one more layer on
its image, as a RUN step's does (store write_layer + adopt_layer_dir).

The upper dir of a container stays its own (it may be running, and may be committed
again), so the layer is made from a copy: every entry with its type, mode, owner,
times, xattrs (the overlay opaque marker included) and hard links, whiteouts as the
0/0 character devices they are. The copy then loses what the sandbox created only
as mount points (/proc, /etc/hostname... builder.sandbox.mountpoints.remove_stubs)
and the kernel's overlay bookkeeping (overlay.finalize_upper). The upper dir of a
fuse-overlayfs container (``Container.overlay``) is flushed first (the kernel's cached
writes of a running one: builder.containers.fuseroot.sync_running) and its copy turned
into the overlay form (builder.sandbox.fuseupper) before the stubs go. The config is the
image's with the container's Env, and its Cmd/Entrypoint when they were given on the
`run` command line (docker's commit); history gets one entry.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Iterator

from lamina.builder.containers.logs import rfc3339_nano
from lamina.builder.containers.state import Container
from lamina.builder.errors import BuildError
from lamina.store.images import Image
from lamina.store.locks import remove_tree
from lamina.store.store import Store


_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class CommitRace(BuildError):
    """An entry of a running container changed type while its upper dir was copied."""


def _pinned(fd: int) -> str:
    """The path of the inode `fd` holds (an O_PATH fd), through /proc: opening it
    reopens that inode, whatever its name points at now."""
    return f"/proc/self/fd/{fd}"


def _xattrs(fd: int) -> list[tuple[str, bytes]]:
    """The xattrs of the inode `fd` (an O_PATH or open fd; a symlink's own through the
    /proc magic link, never its target's). One removed meanwhile is skipped; any other
    failure is an error, never a silently missing xattr (the overlay's opaque marker
    is one: without it, files the container deleted would come back)."""
    path = _pinned(fd)
    try:
        names = os.listxattr(path)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    out = []
    for n in names:
        try:
            out.append((n, os.getxattr(path, n)))
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    return out


def _meta(path: str, st: os.stat_result, xattrs: list[tuple[str, bytes]]) -> None:
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    for name, value in xattrs:
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError:
            pass
    if not stat.S_ISDIR(st.st_mode):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy `src` into the new dir `dst` exactly, never following a symlink.

    `src` may belong to a running container whose processes rename and replace its
    entries while we copy: every directory is walked from a pinned fd, every entry
    opened O_PATH|O_NOFOLLOW relative to it and examined through that fd (its type and
    metadata, its content reopened through /proc/self/fd), so a directory swapped for a
    symlink to a host path can only ever be copied as that symlink."""
    links: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, os.stat_result]] = []
    stack: list[tuple[int, str, Iterator[str]]] = []

    def enter(fd: int, out_dir: str, st: os.stat_result) -> None:
        """Make `out_dir` for the open directory `fd` (closed with the stack from now)."""
        stack.append((fd, out_dir, iter(())))
        os.mkdir(out_dir, 0o700)
        _meta(out_dir, st, _xattrs(fd))
        dirs.append((out_dir, st))
        stack[-1] = (fd, out_dir, iter(sorted(os.listdir(fd))))

    try:
        root = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            root_st = os.fstat(root)
        except BaseException:
            os.close(root)
            raise
        enter(root, str(dst), root_st)
        while stack:
            dfd, out_dir, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(dfd)
                stack.pop()
                continue
            d = os.path.join(out_dir, name)
            try:
                fd = os.open(name, _PATH, dir_fd=dfd)
            except FileNotFoundError:
                raise CommitRace(f"/{os.path.relpath(d, dst)} was removed while the container "
                                 f"was committed: commit again, or stop the container first") from None
            try:
                st = os.fstat(fd)
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    sub = os.open(_pinned(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    enter(sub, d, st)
                    continue
                if stat.S_ISLNK(mode):  # the target and xattrs of this inode, by its fd
                    os.symlink(os.readlink("", dir_fd=fd), d)
                    _meta(d, st, _xattrs(fd))
                    continue
                if st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
                    os.link(links[(st.st_dev, st.st_ino)], d)
                    continue
                if stat.S_ISREG(mode):
                    with open(_pinned(fd), "rb") as f_in, open(d, "xb") as f_out:
                        shutil.copyfileobj(f_in, f_out, 1 << 20)
                    if st.st_nlink > 1:
                        links[(st.st_dev, st.st_ino)] = d
                else:  # fifo, socket, device: made, never opened
                    os.mknod(d, mode, st.st_rdev)
                _meta(d, st, _xattrs(fd))
            finally:
                os.close(fd)
    finally:
        for dfd, _, _ in stack:
            os.close(dfd)
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
        if c.overlay == "fuse":  # what the kernel still caches, into the upper dir
            from lamina.builder.containers.fuseroot import sync_running
            from lamina.builder.containers.state import ContainerStore
            sync_running(ContainerStore(store.root), c)
        scratch = store.temp_path("commit")
        scratch.mkdir()
        try:
            snapshot = scratch / "upper"
            copy_tree(upper, snapshot)
            if c.overlay == "fuse":  # fuse-overlayfs's form -> lamina's, on the copy only
                from lamina.builder.sandbox.fuseupper import convert_upper
                convert_upper(snapshot, [store.layer_dir(l.diff_id)
                                         for l in reversed(image.layers)], since=c.created)
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



