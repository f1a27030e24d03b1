"""Which devices a RUN may open, and the two mechanisms that enforce it.

A RUN keeps CAP_MKNOD, as in docker: images contain device nodes and a step may
create them (runc's default rules ``c *:* m`` and ``b *:* m``). Opening a device
outside docker's list must fail:

    null 1:3, zero 1:5, full 1:7, random 1:8, urandom 1:9, tty 5:0, console 5:1,
    ptmx 5:2, pts 136:*

Two independent mechanisms, both used where the host has them:

- the device cgroup: on a cgroup v1 host the step's ``devices`` cgroup denies all
  and allows ``ALLOWED`` (``v1_rules()``, written by builder.sandbox.cgroups); an
  open outside the list gets EPERM. (cgroup v2 has no devices file — runc attaches
  a BPF program there; lamina relies on the second mechanism on such hosts.)
- ``nodev`` everywhere (``seal_mounts(root)``, in the sandbox's mount namespace just
  before pivot_root): every mount under the new root is remounted ``nodev`` —
  the overlay root, /dev and /dev/shm, /proc, /sys, every RUN --mount, whatever
  another part of the sandbox mounted — except the mounts that are a single
  allowed character device (the host's null, zero... bind-mounted onto /dev) and
  devpts (which cannot hold a node made by mknod). A node a RUN makes anywhere can
  then not be opened (EACCES), whatever its numbers. An allowed node of /dev that is
  not its own mount yet (made by mknod because the host lacks it) first becomes one:
  a bind mount onto itself, so that /dev's tmpfs itself can be ``nodev``.

Switches (tests force each path; a host without the controller is the other path):
``DEVICE_CGROUP`` (also ``LAMINA_DEVICE_CGROUP=off``) and ``NODEV_MOUNTS``.
Where the step's device cgroup is in force (a v1 host), the image's filesystem (the
overlay root) keeps ``dev``, as in docker: a node a RUN makes there with allowed
numbers (a chroot's own /dev/null, as debootstrap makes) opens, any other gets EPERM
from the cgroup. Every other mount stays ``nodev``; without a device cgroup (cgroup v2,
rootless) the root is ``nodev`` too, and such a node cannot be opened, unlike docker.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from lamina.builder.sandbox import linux

DEVICE_CGROUP = True
NODEV_MOUNTS = True
MOUNT_ATTR_NODEV = 0x4  # fsmount(2) attr flag


@dataclass(frozen=True)
class DeviceRule:
    """One cgroup v1 device rule: kind "c", "b" or "a"; None is the wildcard."""

    kind: str
    major: int | None
    minor: int | None
    access: str

    def line(self) -> str:
        if self.kind == "a":
            return "a"
        num = lambda n: "*" if n is None else str(n)  # noqa: E731
        return f"{self.kind} {num(self.major)}:{num(self.minor)} {self.access}"

    def allows(self, kind: str, major: int, minor: int, access: str = "rw") -> bool:
        return (self.kind in ("a", kind)
                and self.major in (None, major) and self.minor in (None, minor)
                and all(a in self.access for a in access))


ALLOWED: tuple[DeviceRule, ...] = (
    DeviceRule("c", None, None, "m"),   # mknod of any node stays allowed
    DeviceRule("b", None, None, "m"),
    DeviceRule("c", 1, 3, "rwm"),       # null
    DeviceRule("c", 1, 5, "rwm"),       # zero
    DeviceRule("c", 1, 7, "rwm"),       # full
    DeviceRule("c", 1, 8, "rwm"),       # random
    DeviceRule("c", 1, 9, "rwm"),       # urandom
    DeviceRule("c", 5, 0, "rwm"),       # tty
    DeviceRule("c", 5, 1, "rwm"),       # console
    DeviceRule("c", 5, 2, "rwm"),       # ptmx
    DeviceRule("c", 136, None, "rwm"),  # pts
)


def allowed(mode: int, rdev: int, access: str = "rw") -> bool:
    """May a step open the node with this st_mode/st_rdev for `access`?"""
    if stat.S_ISCHR(mode):
        kind = "c"
    elif stat.S_ISBLK(mode):
        kind = "b"
    else:
        return True  # not a device
    major, minor = os.major(rdev), os.minor(rdev)
    return any(r.allows(kind, major, minor, access) for r in ALLOWED)


def v1_rules() -> tuple[tuple[str, str], ...]:
    """(file, line) writes that turn a fresh v1 devices cgroup into docker's list."""
    return (("devices.deny", "a"),) + tuple(("devices.allow", r.line()) for r in ALLOWED)


def device_cgroup_wanted() -> bool:
    return DEVICE_CGROUP and os.environ.get("LAMINA_DEVICE_CGROUP", "on") != "off"


# --- nodev on every mount of the step's root --------------------------------------

@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (the fields lamina needs)."""

    mount_id: int
    mount_point: str
    options: frozenset[str]  # per-mount options: ro, nosuid, nodev, noexec, ...
    fstype: str
    super_options: tuple[str, ...] = ()  # e.g. a cgroup v1 mount's controllers


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split(" ")
        tail = right.split(" ")
        entries.append(MountEntry(mount_id=int(fields[0]), mount_point=_unescape(fields[4]),
                                  options=frozenset(fields[5].split(",")), fstype=tail[0],
                                  super_options=tuple(tail[2].split(",")) if len(tail) > 2
                                  else ()))
    return entries


_OPTION_FLAGS = (("ro", linux.MS_RDONLY), ("nosuid", linux.MS_NOSUID),
                 ("noexec", linux.MS_NOEXEC))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _keeps_dev(entry: MountEntry) -> bool:
    """A mount that may stay dev: devpts, or one allowed character device."""
    if entry.fstype == "devpts":
        return True
    try:
        st = os.stat(entry.mount_point, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and allowed(st.st_mode, st.st_rdev)


def _own_allowed_nodes(root: str) -> None:
    """Turn every allowed node directly in root/dev that is not a mount point into a
    bind mount of itself (so /dev's tmpfs can be nodev and the node still works)."""
    dev = os.path.join(root, "dev")
    points = {e.mount_point for e in parse_mountinfo(_read_mountinfo())}
    try:
        names = os.listdir(dev)
    except OSError:
        return
    for name in names:
        path = os.path.join(dev, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and allowed(st.st_mode, st.st_rdev) and path not in points:
            linux.mount(path, path, None, linux.MS_BIND)


def _read_mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def seal_mounts(root: str | os.PathLike, *, root_keeps_dev: bool = False) -> None:
    """Remount every mount at or under `root` nodev, keeping its other per-mount
    flags; allowed single-node mounts and devpts keep (or get back) dev. Runs in the
    sandbox's private mount namespace (each remount changes only that namespace's
    mount), before pivot_root. No-op when ``NODEV_MOUNTS`` is off.

    `root_keeps_dev`: the mount at `root` itself (the image's filesystem, mounted
    nodev) gets dev back - for a step whose device cgroup already denies every device outside the
    list, where docker relies on that cgroup alone: a node the step makes there with
    allowed numbers (a chroot's own /dev/null, as debootstrap makes) opens as in
    docker, any other still fails (EPERM from the cgroup)."""
    if not NODEV_MOUNTS:
        return
    root = os.path.realpath(os.fspath(root))
    _own_allowed_nodes(root)
    # later entries are mounted on top of earlier ones at the same point: only the
    # top one is reachable by path, so remount the last entry of each mount point
    top: dict[str, MountEntry] = {}
    for entry in parse_mountinfo(_read_mountinfo()):
        if _under(entry.mount_point, root):
            top[entry.mount_point] = entry
    for point, entry in top.items():
        flags = linux.MS_BIND | linux.MS_REMOUNT
        for option, bit in _OPTION_FLAGS:
            if option in entry.options:
                flags |= bit
        if _keeps_dev(entry) or (root_keeps_dev and point == root):  # (mounted nodev first)
            if "nodev" not in entry.options:
                continue
        else:
            if "nodev" in entry.options:
                continue
            flags |= linux.MS_NODEV
        linux.mount(None, point, None, flags)
