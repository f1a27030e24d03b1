"""The mounts of a sandbox's root, made inside its private mount namespace before
pivot_root: the system ones (/proc with docker's read-only and masked paths, a
minimal /dev, /sys read-only with the cgroup hierarchies at /sys/fs/cgroup (as
BuildKit's runc mounts them: ``mount_cgroups``), /etc/hosts and /etc/resolv.conf as read-only bind
mounts — BuildKit's pair: a RUN has no /etc/hostname) and the RUN --mount ones.

The RUN --mount types (frozen dataclasses, re-exported by builder.sandbox):
``BindMount`` (a host path; rw writes are discarded: an overlay on a tmpfs upper for a
dir, a tmpfs copy for a file), ``TmpfsMount``, ``CacheMount`` (a persistent host dir,
rw), ``SecretMount`` (a tmpfs copy with mode/uid/gid, bind-mounted read-only),
``LayerMount`` (a path of another stage's or image's merged layers). Where the step's
overlays are fuse-overlayfs, the views of a ``LayerMount`` and of a writable dir
``BindMount`` come already mounted (their ``view``: builder.sandbox.fuseviews).

Every mount point is created through ``StubRecorder`` so that the ones the sandbox
had to create are removed from the upper dir after the step (builder.mountpoints).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.sandbox import devices, linux, overlay
from lamina.builder.errors import SandboxError
from lamina.builder.sandbox.mountpoints import StubRecorder
from lamina.builder.sandbox.kernelpaths import protect_kernel_paths
from lamina.builder.sandbox.rootpath import RootDir, resolve_in_root  # at import: the forked child must not import

_DEV_NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
              "urandom": (1, 9), "tty": (5, 0)}


@dataclass(frozen=True)
class BindMount:
    source: Path
    target: str
    readonly: bool = True
    view: Path | None = None  # rw dir: its fuse-overlayfs view, mounted (builder.sandbox.fuseviews)


@dataclass(frozen=True)
class TmpfsMount:
    target: str
    size: int | None = None


@dataclass(frozen=True)
class CacheMount:
    source: Path
    target: str
    readonly: bool = False
    subdir: str = ""  # `source=` of the cache: resolved inside it, in the step's namespace


@dataclass(frozen=True)
class SecretMount:
    source: Path
    target: str
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class LayerMount:
    """`RUN --mount=type=bind,from=<stage|image>`: `source` (an image path) of the
    merged view of `lower_dirs` (top-most first); writes (readonly=False) discarded."""

    lower_dirs: tuple[Path, ...]
    source: str
    target: str
    readonly: bool = True
    what: str = ""  # for messages: "stage build", "image alpine"
    view: Path | None = None  # the merged view, mounted with fuse-overlayfs (builder.sandbox.fuseviews)


Mount = BindMount | TmpfsMount | CacheMount | SecretMount | LayerMount


def bind(source: str | Path, target: str, readonly: bool) -> None:
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
    if readonly:
        linux.mount(None, target, None,
                    linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID
                    | linux.MS_NODEV)


def _ordinary_dir(rec: StubRecorder, name: str, fstype: str) -> None:
    """runc's rule: proc and sysfs go on an ordinary directory of the image (or one the
    sandbox makes), never through a symlink. Docker's masked and read-only paths are
    applied under /proc and /sys: with `/proc -> /p` the kernel filesystem would land
    on /p and the masks nowhere, leaving /proc/sys (core_pattern!) writable."""
    try:
        st = os.lstat(os.path.join(rec.root, name))
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise SandboxError(f"/{name} in the image is {what}: {fstype} can only be mounted on "
                           f"an ordinary directory (as runc refuses)")


def mount_system(rec: StubRecorder, hosts: Path, resolv: Path) -> None:
    """Mount /proc, /dev, /sys and the injected /etc files on the merged root."""
    _ordinary_dir(rec, "proc", "proc")
    _ordinary_dir(rec, "sys", "sysfs")
    # /proc
    proc = rec.ensure("/proc", "dir")
    linux.mount("proc", proc, "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    # /dev
    dev = rec.ensure("/dev", "dir")
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_STRICTATIME,
                "mode=755,size=65536k")
    for name, (major, minor) in _DEV_NODES.items():
        node = f"{dev}/{name}"
        os.close(os.open(node, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            bind(f"/dev/{name}", node, readonly=False)
            # the host's own inode: read-only, so the step's chmod/chown/touch cannot
            # change the host's /dev/null (reads and writes of a device still work)
            linux.mount(None, node, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY
                        | _kept_flags(node))
        except SandboxError:  # no such node on the host: make one
            os.unlink(node)
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(node, 0o666)
    os.mkdir(f"{dev}/pts", 0o755)
    try:
        linux.mount("devpts", f"{dev}/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                    "newinstance,ptmxmode=0666,mode=0620,gid=5")
    except SandboxError as exc:
        if getattr(exc, "errno", None) != errno.EINVAL:
            raise
        # rootless with a single-ID mapping (builder.sandbox.userns): gid 5 (tty) unmapped
        linux.mount("devpts", f"{dev}/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                    "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm", 0o1777)
    linux.mount("shm", f"{dev}/shm", "tmpfs",
                linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, "mode=1777,size=65536k")
    os.mkdir(f"{dev}/mqueue", 0o755)
    try:
        linux.mount("mqueue", f"{dev}/mqueue", "mqueue",
                    linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    except SandboxError:
        pass  # optional: an empty /dev/mqueue where the kernel lacks POSIX mqueues
    links = [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]
    if os.path.exists(f"{proc}/kcore"):  # as runc: /dev/core only where there is a kcore
        links.append(("core", "/proc/kcore"))
    for name, target in links:
        os.symlink(target, f"{dev}/{name}")
    # /sys, read-only
    sys_dir = rec.ensure("/sys", "dir")
    try:
        linux.mount("sysfs", sys_dir, "sysfs",
                    linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    except SandboxError as exc:
        # optional, like docker's: some nested setups refuse a fresh sysfs; an empty
        # /sys is better than no build - read-only too, so no write lands in the layer
        if getattr(exc, "errno", None) not in (1, 13):  # EPERM, EACCES
            raise
        linux.mount("tmpfs", sys_dir, "tmpfs", linux.MS_RDONLY | linux.MS_NOSUID
                    | linux.MS_NODEV | linux.MS_NOEXEC, "mode=755")
    else:
        mount_cgroups(f"{sys_dir}/fs/cgroup")
    # docker's read-only and masked /proc and /sys paths (builder.sandbox.kernelpaths)
    protect_kernel_paths(rec.root, f"{dev}/null")
    # injected files: bind mounts, so they never land in the upper dir. BuildKit's
    # runc executor mounts exactly these two (ro, nosuid, nodev, noexec) and no
    # /etc/hostname; a stub it had to create is removed after the step (as here).
    for image_path, host in (("/etc/hosts", hosts), ("/etc/resolv.conf", resolv)):
        target = rec.ensure(image_path, "file")
        bind(host, target, readonly=True)
        linux.mount(None, target, None,
                    linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID
                    | linux.MS_NODEV | linux.MS_NOEXEC)


_CGROUP2_MAGIC = 0x63677270
_KERNEL_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def cgroup_hierarchies(proc_self_cgroup: str) -> list[tuple[str, str]]:
    """The cgroup v1 hierarchies of /proc/self/cgroup ("4:memory:/x", "1:name=systemd:/")
    as (directory, mount data): the directory as runc names it under /sys/fs/cgroup
    ("memory", "cpu,cpuacct", "systemd": a named one without its "name="), the data the
    controllers field ("cpu,cpuacct", "name=systemd"). The v2 line (0::) is not one."""
    out: list[tuple[str, str]] = []
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] != "0" and parts[1]:
            name = ",".join(c.removeprefix("name=") for c in parts[1].split(","))
            if name and "/" not in name and name not in (".", "..") \
                    and name not in (n for n, _ in out):
                out.append((name, parts[1]))
    return out


def mount_cgroups(target: str, host_cgroup: str = "/sys/fs/cgroup") -> None:
    """/sys/fs/cgroup as BuildKit has runc mount it in every RUN (executor/oci
    withCGroup: type cgroup, ro,nosuid,noexec,nodev), seen from the step's cgroup
    namespace (its own cgroup is the root): on a cgroup v2 host one cgroup2 mount; on a
    v1 or hybrid host runc's mountCgroupV1 layout - a tmpfs (rw as runc leaves it: the
    step's own, in its mount namespace, kept in no layer; nosuid,nodev,noexec,
    mode=755) with each v1 hierarchy mounted read-only in a directory of its name and a
    symlink per controller of a co-mounted one (cpu -> cpu,cpuacct). Without it a RUN
    saw an empty /sys/fs/cgroup (what a JVM, a Go runtime or a test suite reads for its
    limits). Optional, like sysfs: where the kernel refuses (cgroup v1 inside a user
    namespace), /sys/fs/cgroup stays as sysfs has it."""
    try:
        v2 = linux.statfs_type(host_cgroup) == _CGROUP2_MAGIC
        with open("/proc/self/cgroup") as f:
            hierarchies = [] if v2 else cgroup_hierarchies(f.read())
    except (OSError, SandboxError):
        return
    if not os.path.isdir(target) or not (v2 or hierarchies):
        return
    if v2:
        try:
            linux.mount("cgroup", target, "cgroup2", linux.MS_RDONLY | _KERNEL_FLAGS)
        except SandboxError as exc:
            if getattr(exc, "errno", None) not in _REFUSED:
                raise
        return
    try:
        linux.mount("tmpfs", target, "tmpfs", _KERNEL_FLAGS, "mode=755")
    except SandboxError as exc:
        if getattr(exc, "errno", None) not in _REFUSED:
            raise
        return
    try:
        for name, data in hierarchies:
            os.mkdir(f"{target}/{name}", 0o755)
            linux.mount("cgroup", f"{target}/{name}", "cgroup", linux.MS_RDONLY | _KERNEL_FLAGS,
                        data)
        for name, _ in hierarchies:
            for controller in name.split(",") if "," in name else ():
                if not os.path.lexists(f"{target}/{controller}"):
                    os.symlink(name, f"{target}/{controller}")
    except SandboxError as exc:
        if getattr(exc, "errno", None) not in _REFUSED:
            raise
        linux.umount2(target, linux.MNT_DETACH)  # all or nothing: sysfs's empty dir again


_REFUSED = (errno.EPERM, errno.EACCES, errno.EINVAL, errno.ENODEV, errno.EBUSY)


# statvfs flag -> mount flag: what a bind remount must keep (a user namespace may not
# clear flags locked on the source mount: EPERM)
_KEPT = ((os.ST_RDONLY, linux.MS_RDONLY), (os.ST_NOSUID, linux.MS_NOSUID),
         (os.ST_NOEXEC, linux.MS_NOEXEC), (os.ST_NOATIME, 1 << 10),
         (os.ST_NODIRATIME, 1 << 11), (os.ST_RELATIME, 1 << 21))


def _kept_flags(path: str | Path) -> int:
    f_flag = os.statvfs(path).f_flag
    return sum(mount_flag for st_flag, mount_flag in _KEPT if f_flag & st_flag)


def mount_user(m: Mount, scratch: Path, rec: StubRecorder, api: str = "auto") -> None:
    """Mount one RUN --mount on the merged root; `scratch` is a fresh path on a
    tmpfs of the sandbox for copies and discarded writes. Every target is mounted on
    ``/proc/self/fd/N`` of the mount point (StubRecorder.ensure_fd), never on a path
    resolved again: it may lie in a cache dir that a RUN of a concurrent build
    rewrites (a dir swapped for a symlink to / would move the mount to the host)."""
    opened: list[int] = []

    def _target(rec: StubRecorder, path: str, kind: str) -> str:
        fd = rec.ensure_fd(path, kind)
        opened.append(fd)
        return f"/proc/self/fd/{fd}"

    def bind_at(source: str | Path, target: str, readonly: bool) -> None:
        # /proc/self/fd/N names the mount point, not what is mounted on it, so the bind
        # is made and remounted on a staging point of the scratch tmpfs first, then
        # moved onto the target. It is nodev from the start: seal_mounts finds mounts
        # again by path, and a cache dir a concurrent build rewrites could hide one
        staging = Path(f"{scratch}.bind")
        if os.path.isdir(source):
            staging.mkdir(mode=0o755)
        else:
            os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        linux.mount(source, staging, None, linux.MS_BIND | linux.MS_REC)
        flags = linux.MS_BIND | linux.MS_REMOUNT | _kept_flags(staging)
        if devices.NODEV_MOUNTS:
            flags |= linux.MS_NODEV
        if readonly:
            flags |= linux.MS_RDONLY | linux.MS_NOSUID
        linux.mount(None, staging, None, flags)
        linux.mount(staging, target, None, linux.MS_MOVE)

    try:
        _mount_user(m, scratch, rec, api, _target, bind_at)
    finally:
        for fd in opened:
            os.close(fd)


def _mount_user(m: Mount, scratch: Path, rec: StubRecorder, api: str, _target, bind) -> None:
    if isinstance(m, TmpfsMount):
        target = _target(rec, m.target, "dir")
        data = "mode=1777" + (f",size={m.size}" if m.size else "")
        linux.mount("tmpfs", target, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, data)
    elif isinstance(m, CacheMount):
        target = _target(rec, m.target, "dir")
        if not m.subdir:
            bind(m.source, target, readonly=m.readonly)
        else:
            # resolved here, never through a link out of the cache (a concurrent RUN
            # cannot swap a component between check and mount: the fd is the dir)
            with RootDir(m.source) as r:
                fd = r.open_dir(m.subdir)
            try:
                bind(f"/proc/self/fd/{fd}", target, readonly=m.readonly)
            finally:
                os.close(fd)
    elif isinstance(m, SecretMount):
        target = _target(rec, m.target, "file")
        scratch.mkdir()
        copy = scratch / "secret"
        copy.write_bytes(Path(m.source).read_bytes())
        os.chown(copy, m.uid, m.gid)
        os.chmod(copy, m.mode)
        bind(copy, target, readonly=True)
    elif isinstance(m, BindMount):
        source = Path(m.source)
        is_dir = source.is_dir()
        target = _target(rec, m.target, "dir" if is_dir else "file")
        if m.readonly:
            bind(source, target, readonly=True)
        elif is_dir and m.view is not None:  # fuse-overlayfs, writes discarded
            bind(m.view, target, readonly=False)
        elif is_dir:
            # writes go to an overlay upper on the scratch tmpfs: discarded
            for sub in ("", "/u", "/w"):
                os.mkdir(f"{scratch}{sub}", 0o755)
            overlay.mount_overlay((source,), scratch / "u", scratch / "w", Path(target),
                                  scratch, api=api)
        else:
            scratch.mkdir()
            copy = scratch / "file"
            shutil.copy2(source, copy)
            st = os.stat(source)
            os.chown(copy, st.st_uid, st.st_gid)
            bind(copy, target, readonly=False)
    elif isinstance(m, LayerMount):
        # the merged view of the other stage/image, over an upper on the scratch tmpfs
        view = m.view
        if view is None:
            for sub in ("", "/view", "/u", "/w"):
                os.mkdir(f"{scratch}{sub}", 0o755)
            overlay.mount_overlay(tuple(m.lower_dirs), scratch / "u", scratch / "w",
                                  scratch / "view", scratch, api=api)
            view = scratch / "view"
        source = resolve_in_root(view, m.source or "/")
        if not os.path.lexists(source):
            raise SandboxError(f"mount source {m.source!r} does not exist in {m.what or 'its stage'}")
        target = _target(rec, m.target, "dir" if source.is_dir() else "file")
        bind(source, target, readonly=m.readonly)
    else:
        raise SandboxError(f"unknown mount type {type(m).__name__}")

