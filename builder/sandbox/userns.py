"""Rootless lamina: the user namespace an ordinary user's lamina runs in.

Started by a user other than root, lamina re-executes itself, once, at startup,
inside a new user namespace (as ``buildah unshare`` / podman do), before any command
runs (builder.cli.app):

    if userns.needs_reexec(): userns.reexec(store_root)    # never returns

The whole process then runs as root of that namespace: every command (build, images,
save, load, pull, push, gc, fsck...) sees the store as root does, and the IDs the
store records are the image's IDs, not the host's — so a rootless and a root build of
the same inputs give the same layers and the same image ID.

The ID mapping (``plan_mapping``, pure): namespace ID 0 is the user, namespace IDs
1.. are the user's subordinate ranges from /etc/subuid and /etc/subgid, in file
order, written by the setuid ``newuidmap``/``newgidmap`` (Debian package ``uidmap``).
A RUN can then ``chown``, ``apt-get install`` and create files of other users as
under root, up to the size of the ranges (65536 IDs: 0..65536). Without ranges (or
without the tools) the mapping is the user's own ID as 0 only, with one warning: an
image whose files belong to other users cannot be built or extracted.

How (``reexec``): the process forks a helper still outside, unshares CLONE_NEWUSER
itself (it is single-threaded at that point: click has only parsed the options),
lets the helper run newuidmap/newgidmap on its pid, becomes uid/gid 0 of the
namespace and execs its own command line again (/proc/self/cmdline: the same
interpreter, options and arguments). It keeps its pid,
so a SIGKILL to lamina reaches lamina (the sandbox's children die with it as under
root). The store default is decided before the exec ($XDG_DATA_HOME/lamina, passed
as LAMINA_ROOT): inside, lamina is uid 0 and would otherwise pick /var/lib/lamina.

cgroups rootless: only a delegated cgroup v2 subtree is writable by the user;
builder.sandbox.delegation (``settle``, before the namespace is entered or adopted)
moves lamina into a leaf of it so that step cgroups get its controllers, or records
why there are none (limits are then skipped with a note).

Where the kernel refuses overlayfs in the user namespace, every overlay - RUN/COPY/ADD
roots, RUN --mount views of other stages, containers - is fuse-overlayfs
(builder.sandbox.fuseoverlay; /dev/fuse must be open to the user).

``report()`` (``lamina unshare --check``) says what this machine offers a rootless
lamina and what is missing.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from lamina.builder.errors import BuildError
from lamina.store import overlayform

CLONE_NEWUSER = 0x10000000
SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
ROOTLESS_ENV = "LAMINA_ROOTLESS"  # "subids" | "single" (re-executed), "container" (adopted)
OUTER_ENV = "LAMINA_ROOTLESS_IDS"  # "UID:GID" of the user outside
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class IdRange:
    """`count` IDs from `inside` in the namespace are `outside`.. on the host."""
    inside: int
    outside: int
    count: int


@dataclass(frozen=True)
class IdMapping:
    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]

    @property
    def subordinate(self) -> bool:
        """Whether more than the user's own ID is mapped (newuidmap is needed)."""
        return len(self.uids) > 1 or len(self.gids) > 1

    @property
    def size(self) -> int:
        """How many IDs (0..size-1) a RUN can use as both uid and gid."""
        return min(sum(r.count for r in self.uids), sum(r.count for r in self.gids))


def parse_subordinate(text: str, user: str, uid: int) -> tuple[tuple[int, int], ...]:
    """The (start, count) ranges of `user` (named, or by numeric `uid`) in /etc/subuid
    or /etc/subgid text, in file order; malformed lines skipped (pure)."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            out.append((start, count))
    return tuple(out)


def plan_mapping(uid: int, gid: int, subuids: tuple[tuple[int, int], ...],
                 subgids: tuple[tuple[int, int], ...]) -> IdMapping:
    """0 -> the user's own ID, then the subordinate ranges from 1 on (pure). The user's
    own ID inside a subordinate range is left out of it (it is mapped once, as 0)."""
    def ranges(own: int, subs: tuple[tuple[int, int], ...]) -> tuple[IdRange, ...]:
        out = [IdRange(0, own, 1)]
        nxt = 1
        for start, count in subs:
            pieces = [(start, count)]
            if start <= own < start + count:
                pieces = [(start, own - start), (own + 1, start + count - own - 1)]
            for s, c in pieces:
                if c > 0:
                    out.append(IdRange(nxt, s, c))
                    nxt += c
        return tuple(out)
    if not subuids or not subgids:
        return IdMapping((IdRange(0, uid, 1),), (IdRange(0, gid, 1),))
    return IdMapping(ranges(uid, subuids), ranges(gid, subgids))


def map_args(ranges: tuple[IdRange, ...]) -> list[str]:
    """newuidmap/newgidmap arguments after the pid (pure)."""
    return [str(v) for r in ranges for v in (r.inside, r.outside, r.count)]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def outer_ids() -> tuple[int, int]:
    """The user's uid and gid on the host (also inside lamina's namespace)."""
    try:
        uid, gid = (int(x) for x in os.environ[OUTER_ENV].split(":"))
        if os.environ.get(ROOTLESS_ENV):
            return uid, gid
    except (KeyError, ValueError):
        pass
    return os.getuid(), os.getgid()


def current_mapping() -> tuple[IdMapping, list[str]]:
    """The mapping this user gets, with the warnings to show (no ranges, no tools)."""
    uid, gid = outer_ids()
    name = user_name(uid)
    subuids = parse_subordinate(_read(SUBUID), name, uid)
    subgids = parse_subordinate(_read(SUBGID), name, uid)
    warnings = []
    if not subuids or not subgids:
        warnings.append(
            f"lamina: warning: user {name} has no subordinate IDs in {SUBUID} and {SUBGID}: "
            f"rootless lamina maps only your own ID (as root); RUN steps cannot use other "
            f"users (chown, USER, apt-get) and images with files of other users cannot be "
            f"used. Add a range, e.g. `usermod --add-subuids 100000-165535 "
            f"--add-subgids 100000-165535 {name}`")
    elif not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        warnings.append(
            "lamina: warning: newuidmap/newgidmap not found (Debian package uidmap): "
            "rootless lamina maps only your own ID (as root); RUN steps cannot use "
            "other users")
        subuids = subgids = ()
    return plan_mapping(uid, gid, subuids, subgids), warnings


def needs_reexec() -> bool:
    """An ordinary user in the host's user namespace: lamina must enter its own."""
    return os.geteuid() != 0 and not overlayform.unprivileged()


def _fail(what: str) -> BuildError:
    err = ctypes.get_errno()
    hint = ""
    if err in (1, 28, 22):  # EPERM, ENOSPC (max_user_namespaces), EINVAL
        hint = (" — unprivileged user namespaces are off or exhausted here: check "
                "`sysctl user.max_user_namespaces` (must be > 0) and, on Debian kernels, "
                "`sysctl kernel.unprivileged_userns_clone` (must be 1)")
    return BuildError(f"rootless lamina: {what}: {os.strerror(err)}{hint}")


def _write(path: str, data: str) -> None:
    with open(path, "w") as f:
        f.write(data)


def _map_helper(target: int, mapping: IdMapping, go_r: int) -> NoReturn:
    """Outside the namespace: wait until `target` has unshared, then map its IDs."""
    code = 1
    try:
        if os.read(go_r, 1) == b"u":
            code = 0
            for tool, ranges in (("newuidmap", mapping.uids), ("newgidmap", mapping.gids)):
                done = subprocess.run([tool, str(target), *map_args(ranges)])
                if done.returncode != 0:
                    code = 2 if tool == "newuidmap" else 3
                    break
    finally:
        os._exit(code)


def enter(mapping: IdMapping) -> None:
    """Move the calling (single-threaded) process into a new user namespace with
    `mapping`, as uid/gid 0 there."""
    helper = None
    if mapping.subordinate:
        go_r, go_w = os.pipe()
        helper = os.fork()
        if helper == 0:
            os.close(go_w)
            _map_helper(os.getppid(), mapping, go_r)
        os.close(go_r)
    try:
        if _libc.unshare(CLONE_NEWUSER) != 0:
            raise _fail("cannot create a user namespace")
        if helper is not None:
            os.write(go_w, b"u")
    finally:
        if helper is not None:
            os.close(go_w)
    if helper is not None:
        _, status = os.waitpid(helper, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tool = "newgidmap" if code == 3 else "newuidmap"
            raise BuildError(f"rootless lamina: {tool} refused the subordinate IDs of "
                             f"{SUBUID}/{SUBGID} (see its message above)")
    else:
        uid, gid = mapping.uids[0].outside, mapping.gids[0].outside
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1\n")
        _write("/proc/self/gid_map", f"0 {gid} 1\n")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    # the user's supplementary groups stay (unmapped, they read as nogroup inside):
    # lamina keeps reading a context the user reads through a group; every RUN step
    # sets its own groups (builder.sandbox.privileges)


def own_command_line() -> list[str]:
    """This process's argv as the kernel holds it (interpreter, its options, script or
    -m/-c, arguments): exec'd again it is the same invocation."""
    data = Path("/proc/self/cmdline").read_bytes()
    return [os.fsdecode(a) for a in data.split(b"\0")[:-1]]


def reexec(store_root: Path, join: int | None = None) -> NoReturn:
    """Enter the user namespace and exec this same command line there. `join`: the
    pid of a process in a namespace of this user's to enter instead of making a new
    one (a detached container's monitor: builder.containers.userns); a new one if it
    cannot be joined."""
    argv = own_command_line()
    mapping, warnings = current_mapping()
    env = dict(os.environ)
    env.setdefault("LAMINA_ROOT", str(store_root))
    from lamina.builder.sandbox import delegation  # only rootless pays for its imports
    delegation.settle(env)  # step cgroups: see the module docstring
    env[OUTER_ENV] = f"{os.getuid()}:{os.getgid()}"
    joined = join_namespace(join) if join else None
    if joined is None:
        for w in warnings:
            print(w, file=sys.stderr, flush=True)
        env[ROOTLESS_ENV] = "subids" if mapping.subordinate else "single"
        enter(mapping)
    else:
        env[ROOTLESS_ENV] = joined
    os.execve(sys.executable, argv, env)
    raise AssertionError("unreachable")


def join_namespace(pid: int) -> str | None:
    """Enter the user namespace of `pid` if it is one this user made (root inside is
    this user outside) and become root there; its ROOTLESS_ENV value ("subids" or
    "single"), or None (gone, not ours, refused) with nothing changed."""
    uid, gid = os.getuid(), os.getgid()
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ino == os.stat("/proc/self/ns/user").st_ino:
            return None
        uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
        gid_map = Path(f"/proc/{pid}/gid_map").read_text().split()
        if uid_map[:3] != ["0", str(uid), "1"] or gid_map[:3] != ["0", str(gid), "1"]:
            return None
        if _libc.setns(fd, CLONE_NEWUSER) != 0:
            return None
    except (OSError, IndexError):
        return None
    finally:
        os.close(fd)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    return "subids" if len(uid_map) > 3 else "single"


def adopt_namespace() -> None:
    """lamina started as root of a user namespace it did not make (an unprivileged
    container, `unshare -U -r`): no re-exec, but the same rootless rules — a cgroup
    only where a delegated v2 subtree is writable (LAMINA_CGROUPS), and the rootless
    note. Nothing to do in the host's user namespace or in lamina's own."""
    if not overlayform.unprivileged() or os.environ.get(ROOTLESS_ENV):
        return
    os.environ[ROOTLESS_ENV] = "container"
    from lamina.builder.sandbox import delegation
    delegation.settle(os.environ)


def report() -> list[str]:
    """What this machine offers a rootless lamina, one finding a line."""
    mode = os.environ.get(ROOTLESS_ENV)
    uid, _ = outer_ids()
    if overlayform.unprivileged():
        lines = [f"running as: root of a user namespace (uid {uid} outside"
                 + (f", {'subordinate IDs' if mode == 'subids' else 'single-ID mapping'})" if mode else ")")]
    else:
        lines = [f"running as: {'root' if uid == 0 else f'uid {uid}: lamina enters a user namespace'}"]
    release = os.uname().release
    try:
        ok = tuple(int(x) for x in release.split("-")[0].split(".")[:2]) >= (5, 11)
    except ValueError:
        ok = False
    lines.append(f"kernel {release}: " + ("overlayfs in a user namespace (>= 5.11)" if ok else
                                          "older than 5.11: no overlayfs in a user namespace"))
    if uid == 0 and not mode:
        return lines
    if not overlayform.unprivileged():
        for knob in ("/proc/sys/user/max_user_namespaces",
                     "/proc/sys/kernel/unprivileged_userns_clone"):
            value = _read(knob).strip()
            if value:
                lines.append(f"{knob}: {value}" + (" (none allowed)" if value == "0" else ""))
    mapping, warnings = current_mapping()
    if mapping.subordinate:
        lines.append(f"subordinate IDs: 0..{mapping.size - 1} usable in images (0 = you)")
    lines.extend(w.removeprefix("lamina: ") for w in warnings)
    from lamina.builder.sandbox import delegation
    lines.append(delegation.report(os.environ))
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
        lines.append("/dev/net/tun: usable (RUN's default network)")
    except OSError as e:
        lines.append(f"/dev/net/tun: {e.strerror}: RUN needs --network none "
                     "(or chmod 0666 /dev/net/tun, udev's default)")
    lines.append(f"slirp4netns: {shutil.which('slirp4netns') or 'missing: RUN needs --network none'}")
    return lines
