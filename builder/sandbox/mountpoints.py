"""Mount points the sandbox creates in an image root, and their removal afterwards.

To mount /proc, /dev, /etc/hosts or a RUN --mount target the sandbox may have to
create the mount point, and creating it writes through the overlay into the upper
dir (with a copy-up of the parent dirs). Such stubs are not part of the step's
result; docker removes them, and so does lamina:

- ``StubRecorder(root)`` runs in the sandbox before pivot_root: ``ensure(path,
  kind)`` resolves an image path inside the merged root (symlinks followed, never
  out of the root: each step an openat O_NOFOLLOW from the previous directory's
  descriptor), creates what is missing and records it; ``ensure_fd`` gives the mount
  point as a descriptor instead, for targets that may lie in a dir another process
  writes (a cache mount shared with concurrent builds); ``report()`` gives a
  JSON-able dict: the created paths (in creation order) and, for every pre-existing
  dir on the overlay that was traversed, its metadata before and its mtime after
  the creations.
- ``remove_stubs(upper, report, keep)`` runs after the step, with nothing mounted, on the
  upper dir (dir fds, never following a symlink): removes each created path that is
  still an empty dir / empty file, restores parent mtimes (to the original if the
  step itself did not change the dir), and drops copied-up dirs that are again
  identical to the lower one (empty in upper, not opaque, same mode, owner, mtime
  and xattrs) so that they do not appear in the layer. A RUN keeps runc's
  ``RUNC_MOUNT_POINTS`` (``keep``), as BuildKit's layers do.
"""

from __future__ import annotations

import errno
import os
import stat

from lamina.builder.errors import SandboxError
from lamina.store import overlayform

XATTR_PREFIX = overlayform.prefix()
OPAQUE_XATTR = overlayform.opaque_xattr()

_MAX_HOPS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _xattrs(target: str | int) -> dict[str, str]:
    """The xattrs of a path (not followed) or an open fd, minus overlay's own."""
    kw = {} if isinstance(target, int) else {"follow_symlinks": False}
    try:
        names = os.listxattr(target, **kw)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(XATTR_PREFIX):  # trusted.overlay. (user.overlay. rootless)
            continue
        try:
            out[name] = os.getxattr(target, name, **kw).hex()
        except OSError:
            pass
    return out


class StubRecorder:
    """Creates and records mount points inside a merged overlay root `root`."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") or "/"
        self.overlay_dev = os.stat(self.root).st_dev
        self.created: list[list[str]] = []          # [relpath, "dir"|"file"]
        self.dirs: dict[str, dict] = {}             # relpath -> pre metadata

    def _host(self, rel: str) -> str:
        return self.root + ("/" + rel if rel else "")

    def _note_dir(self, rel: str, fd: int) -> None:
        if rel in self.dirs or any(c[0] == rel for c in self.created):
            return
        st = os.fstat(fd)
        if st.st_dev != self.overlay_dev:
            return
        self.dirs[rel] = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                          "mtime": st.st_mtime_ns, "xattrs": _xattrs(fd)}

    def ensure(self, path: str, kind: str) -> str:
        """Host path of image path `path`, creating it (a dir, or an empty file if
        kind == "file") and missing parents when absent. For a mount on a root that
        nothing else writes (the overlay's own dirs); a target that may lie in a dir
        other processes write (a cache mount) is mounted through `ensure_fd`."""
        rel, fd = self._walk(path, kind)
        os.close(fd)
        return self._host(rel)

    def ensure_fd(self, path: str, kind: str) -> int:
        """Like ensure, but an O_PATH descriptor (caller closes) of the mount point:
        mount on ``/proc/self/fd/N`` so that a component swapped for a symlink after
        the walk (by a RUN of a concurrent build sharing a cache mount) cannot move
        the mount, as runc mounts. The walk itself only ever creates through
        descriptors opened O_NOFOLLOW inside the root."""
        return self._walk(path, kind)[1]

    def _walk(self, path: str, kind: str) -> tuple[str, int]:
        if not path.startswith("/"):
            raise SandboxError(f"mount target {path!r} is not an absolute path")
        parts = [p for p in path.split("/") if p and p != "."]
        done: list[str] = []
        fds = [os.open(self.root, _DIR_FLAGS)]  # fds[i]: the dir done[:i]
        hops = 0
        try:
            self._note_dir("", fds[0])
            while parts:
                name = parts.pop(0)
                if name == "..":
                    if done:
                        done.pop()
                        os.close(fds.pop())
                    continue
                rel = "/".join(done + [name])
                last = not parts
                try:
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                except FileNotFoundError:
                    self._create(fds[-1], name, rel, path, file=last and kind == "file")
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > _MAX_HOPS:
                        raise SandboxError(f"mount target {path}: too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=fds[-1])
                    if target.startswith("/"):
                        done = []
                        for fd in fds[1:]:
                            os.close(fd)
                        del fds[1:]
                    parts = [p for p in target.split("/") if p and p != "."] + parts
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if last and kind == "file":
                        raise SandboxError(f"cannot mount a file on {path}: it is a directory "
                                           "in the image")
                    fds.append(self._open(fds[-1], name, _DIR_FLAGS, path, rel))
                    done.append(name)
                    self._note_dir(rel, fds[-1])
                    continue
                if not last or kind == "dir":
                    raise SandboxError(f"cannot mount on {path}: /{rel} is not a directory "
                                       "in the image")
                fds.append(self._open(fds[-1], name, _FILE_FLAGS, path, rel))
                done.append(name)
            return "/".join(done), fds.pop()
        finally:
            for fd in fds:
                os.close(fd)

    def _create(self, parent: int, name: str, rel: str, path: str, *, file: bool) -> None:
        on_overlay = os.fstat(parent).st_dev == self.overlay_dev
        try:
            if file:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o644, dir_fd=parent))
            else:
                os.mkdir(name, 0o755, dir_fd=parent)
                # 0755 whatever lamina's umask: a RUN keeps runc's mount points in its
                # layer (RUNC_MOUNT_POINTS), so their mode is image content
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=parent)
                try:
                    os.fchmod(fd, 0o755 | (os.fstat(fd).st_mode & stat.S_ISGID))
                finally:
                    os.close(fd)
        except FileExistsError:
            # made meanwhile by a step of a concurrent build (or stage) sharing this cache
            # mount: not ours to record; the caller looks at what is there now
            return
        except OSError as exc:
            raise SandboxError(f"cannot create mount point {path} (/{rel}) in the image: "
                               f"{os.strerror(exc.errno or 0)}") from None
        if on_overlay:
            self.created.append([rel, "file" if file else "dir"])

    @staticmethod
    def _open(parent: int, name: str, flags: int, path: str, rel: str) -> int:
        try:
            return os.open(name, flags, dir_fd=parent)
        except OSError as exc:  # swapped for something else since the stat
            raise SandboxError(f"cannot mount on {path}: /{rel} changed while the mount "
                               f"point was made ({os.strerror(exc.errno or 0)})") from None

    def report(self) -> dict:
        for rel, meta in self.dirs.items():
            try:
                meta["post"] = os.lstat(self._host(rel)).st_mtime_ns
            except OSError:
                meta["post"] = None
        return {"created": self.created, "dirs": self.dirs}


# --- after the step: on the upper dir -------------------------------------------

def _open_dir(root_fd: int, rel: str) -> int | None:
    """A dir fd for `rel` under root_fd, never through a symlink; None if absent."""
    fd = os.dup(root_fd)
    for name in [p for p in rel.split("/") if p]:
        try:
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = nfd
    return fd


def _split(rel: str) -> tuple[str, str]:
    head, _, tail = rel.rpartition("/")
    return head, tail


def _lstat_at(root_fd: int, rel: str) -> os.stat_result | None:
    head, name = _split(rel)
    pfd = _open_dir(root_fd, head)
    if pfd is None:
        return None
    try:
        return os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(pfd)


# runc's own mount points: a RUN on a root without them (FROM scratch + a static
# binary) leaves them in BuildKit's layer - its stub cleaner (executor/stubs.go) removes
# only /etc/hosts, /etc/resolv.conf and RUN --mount targets - so a RUN step keeps them
# (`keep`) and the image is docker's; a container's commit drops them, as docker's does
RUNC_MOUNT_POINTS = ("dev", "proc", "sys")


def remove_stubs(upper: str, report: dict, keep: tuple[str, ...] = ()) -> None:
    created: list[list[str]] = [c for c in report.get("created", [])
                                if not (c[1] == "dir" and c[0] in keep)]
    dirs: dict[str, dict] = report.get("dirs", {})
    root_fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = {rel: _lstat_at(root_fd, rel) if rel else os.fstat(root_fd) for rel in dirs}
        for rel, kind in reversed(created):
            head, name = _split(rel)
            pfd = _open_dir(root_fd, head)
            if pfd is None:
                continue
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if kind == "dir" and stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=pfd)
                elif kind == "file" and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    os.unlink(name, dir_fd=pfd)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                    raise
            finally:
                os.close(pfd)
        # deepest first, so a parent sees its children already dropped
        for rel in sorted(dirs, key=lambda r: (r.count("/") if r else -1), reverse=True):
            meta = dirs[rel]
            st0 = before.get(rel)
            if st0 is None or not stat.S_ISDIR(st0.st_mode):
                continue
            untouched = meta.get("post") is not None and st0.st_mtime_ns == meta["post"]
            mtime = meta["mtime"] if untouched else st0.st_mtime_ns
            head, name = _split(rel)
            pfd = _open_dir(root_fd, head) if rel else None
            try:
                if rel:
                    os.utime(name, ns=(st0.st_atime_ns, mtime), dir_fd=pfd,
                             follow_symlinks=False)
                else:
                    os.utime(root_fd, ns=(st0.st_atime_ns, mtime))
                if not rel or not untouched:
                    continue
                dfd = _open_dir(root_fd, rel)
                if dfd is None:
                    continue
                try:
                    empty = not os.listdir(dfd)
                    opaque = _has_opaque(dfd)
                    xattrs = _xattrs(dfd)
                finally:
                    os.close(dfd)
                if (empty and not opaque and st0.st_mode == meta["mode"]
                        and st0.st_uid == meta["uid"] and st0.st_gid == meta["gid"]
                        and xattrs == meta["xattrs"]):
                    os.rmdir(name, dir_fd=pfd)
            finally:
                if pfd is not None:
                    os.close(pfd)
    finally:
        os.close(root_fd)


def _has_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False
