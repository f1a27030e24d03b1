"""Thin ctypes bindings to the Linux system calls the sandbox needs and Python 3.11
does not offer: unshare, mount/umount2, pivot_root, sethostname, prctl (parent-death
signal, dumpable, capability bounding set, process title), the new mount API
(fsopen/fsconfig/fsmount/move_mount), statfs's filesystem magic and bringing a
network interface up.

Every call that fails raises `builder.errors.SandboxError` whose message names what
was attempted and the errno text, e.g.
``mount overlay on /x/root: Invalid argument (EINVAL) [overlay: failed to ...]``.

Syscall numbers are given for x86_64 and aarch64; other machines get a clear error
for the raw syscalls (the libc wrappers still work).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import fcntl
import os
import platform
import signal
import socket
import struct

from lamina.builder.errors import SandboxError

# --- constants ------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_MM = 35
PR_SET_MM_ARG_START = 8
PR_SET_MM_ARG_END = 9
PR_SET_MM_ENV_START = 10
PR_SET_MM_ENV_END = 11

FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_SYMLINKS = 0x10
AT_FDCWD = -100

OVERLAYFS_SUPER_MAGIC = 0x794C7630
TMPFS_MAGIC = 0x01021994

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# The capability set docker gives a build container (moby's default), by number.
DEFAULT_CAPABILITIES = frozenset({
    0,   # CAP_CHOWN
    1,   # CAP_DAC_OVERRIDE
    3,   # CAP_FOWNER
    4,   # CAP_FSETID
    5,   # CAP_KILL
    6,   # CAP_SETGID
    7,   # CAP_SETUID
    8,   # CAP_SETPCAP
    10,  # CAP_NET_BIND_SERVICE
    13,  # CAP_NET_RAW
    18,  # CAP_SYS_CHROOT
    27,  # CAP_MKNOD
    29,  # CAP_AUDIT_WRITE
    31,  # CAP_SETFCAP
})

_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
               "fsmount": 432},
    "aarch64": {"pivot_root": 41, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
                "fsmount": 432},
}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


def _b(value: str | bytes | os.PathLike | None) -> bytes | None:
    if value is None:
        return None
    return os.fsencode(value)


def errno_text(err: int) -> str:
    name = errno_mod.errorcode.get(err, str(err))
    return f"{os.strerror(err)} ({name})"


def _fail(what: str, err: int | None = None, detail: str = "") -> SandboxError:
    err = ctypes.get_errno() if err is None else err
    msg = f"{what}: {errno_text(err)}"
    if detail:
        msg += f" [{detail}]"
    exc = SandboxError(msg)
    exc.errno = err  # type: ignore[attr-defined]
    return exc


_MACHINE = platform.machine()  # looked up once: forked sandbox children must not import


def syscall_number(name: str) -> int:
    machine = _MACHINE
    table = _SYSCALLS.get(machine)
    if table is None:
        raise SandboxError(f"{name}: no syscall number known for machine {machine!r} "
                           "(lamina knows x86_64 and aarch64)")
    return table[name]


# --- namespaces, mounts ---------------------------------------------------------

def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise _fail(f"unshare({_clone_names(flags)})")


def _clone_names(flags: int) -> str:
    names = [n for n, f in (("NEWNS", CLONE_NEWNS), ("NEWPID", CLONE_NEWPID),
                            ("NEWIPC", CLONE_NEWIPC), ("NEWUTS", CLONE_NEWUTS),
                            ("NEWNET", CLONE_NEWNET), ("NEWCGROUP", CLONE_NEWCGROUP))
             if flags & f]
    return "|".join("CLONE_" + n for n in names) or hex(flags)


def mount(source: str | bytes | os.PathLike | None, target: str | bytes | os.PathLike,
          fstype: str | None = None, flags: int = 0, data: str | bytes | None = None) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        kind = fstype or ("bind" if flags & MS_BIND else "propagation/remount")
        raise _fail(f"mount {kind} {os.fsdecode(source) if source else ''} on "
                    f"{os.fsdecode(target)} (flags {flags:#x}"
                    f"{', data ' + repr(os.fsdecode(data)[:200]) if data else ''})", err)


def umount2(target: str | bytes | os.PathLike, flags: int = 0) -> None:
    if _libc.umount2(_b(target), flags) != 0:
        raise _fail(f"umount {os.fsdecode(target)}")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = syscall_number("pivot_root")
    if _libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)) != 0:
        raise _fail(f"pivot_root({new_root!r}, {put_old!r})")


def sethostname(name: str) -> None:
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) != 0:
        raise _fail(f"sethostname({name!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    res = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if res < 0:
        raise _fail(f"prctl({option}, {arg2})")
    return res


def set_pdeathsig(sig: int) -> None:
    """Have the kernel send `sig` to this process when its parent thread exits."""
    prctl(PR_SET_PDEATHSIG, sig)


def drop_bounding_capabilities(keep: frozenset[int] = DEFAULT_CAPABILITIES) -> None:
    """Drop every capability not in `keep` from the bounding set: after execve a root
    process then holds at most `keep`. Needs CAP_SETPCAP (call before setuid)."""
    try:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())
    except OSError:
        last = 40
    for cap in range(last + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)


def set_process_title(title: bytes) -> None:
    """Overwrite this process's argv and environment memory so that /proc/<pid>/cmdline
    shows `title` and /proc/<pid>/environ shows nothing (hides host paths and host
    environment from the sandbox). Best effort for the shortening of the areas."""
    fields = open("/proc/self/stat", "rb").read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state); arg_start..env_end are fields 48..51.
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    if arg_end > arg_start:
        size = arg_end - arg_start
        payload = title[: size - 1] + b"\0"
        ctypes.memset(arg_start, 0, size)
        ctypes.memmove(arg_start, payload, len(payload))
        try:
            prctl(PR_SET_MM, PR_SET_MM_ARG_END, arg_start + len(payload))
        except SandboxError:
            pass
    if env_end > env_start:
        ctypes.memset(env_start, 0, env_end - env_start)
        try:
            prctl(PR_SET_MM, PR_SET_MM_ENV_END, env_start)
        except SandboxError:
            pass


# --- new mount API --------------------------------------------------------------

def fsopen(fstype: str) -> int:
    fd = _libc.syscall(ctypes.c_long(syscall_number("fsopen")), _b(fstype),
                       ctypes.c_uint(FSOPEN_CLOEXEC))
    if fd < 0:
        raise _fail(f"fsopen({fstype!r})")
    return fd


def fs_context_log(fsfd: int) -> str:
    """The messages the kernel queued on a filesystem context ("e overlay: ...")."""
    lines = []
    os.set_blocking(fsfd, False)
    for _ in range(16):
        try:
            data = os.read(fsfd, 1024)
        except OSError:
            break
        if not data:
            break
        lines.append(data.decode(errors="replace").strip())
    return "; ".join(lines)


def fsconfig(fsfd: int, cmd: int, key: str | None = None, value: str | bytes | None = None,
             aux: int = 0) -> None:
    res = _libc.syscall(ctypes.c_long(syscall_number("fsconfig")), ctypes.c_int(fsfd),
                        ctypes.c_uint(cmd), _b(key), _b(value), ctypes.c_int(aux))
    if res < 0:
        err = ctypes.get_errno()
        what = "create" if cmd == FSCONFIG_CMD_CREATE else f"{key}={os.fsdecode(value) if value else ''}"
        raise _fail(f"fsconfig {what}", err, fs_context_log(fsfd))


def fsmount(fsfd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    fd = _libc.syscall(ctypes.c_long(syscall_number("fsmount")), ctypes.c_int(fsfd),
                       ctypes.c_uint(flags), ctypes.c_uint(attr_flags))
    if fd < 0:
        raise _fail("fsmount", None, fs_context_log(fsfd))
    return fd


def move_mount_fd(mntfd: int, target: str | os.PathLike) -> None:
    # T_SYMLINKS: a final symlink of the target is followed, as mount(2) does, so that
    # a mount point held open can be named /proc/self/fd/N (builder.sandbox.rootmounts)
    res = _libc.syscall(ctypes.c_long(syscall_number("move_mount")), ctypes.c_int(mntfd),
                        b"", ctypes.c_int(AT_FDCWD), _b(target),
                        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS))
    if res < 0:
        raise _fail(f"move_mount onto {os.fsdecode(target)}")


# --- filesystem queries ---------------------------------------------------------

def statfs_type(path: str | os.PathLike) -> int:
    """The f_type magic of the filesystem holding `path`."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(_b(path), buf) != 0:
        raise _fail(f"statfs {os.fsdecode(path)}")
    # struct statfs starts with a word-sized f_type on 64-bit Linux.
    return struct.unpack_from("l" if ctypes.sizeof(ctypes.c_long) == 8 else "i", buf.raw)[0]


# --- network --------------------------------------------------------------------

def interface_up(name: str = "lo") -> None:
    """Set IFF_UP on a network interface of the current network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 0) as sock:
        ifreq = struct.pack("16sh22x", name.encode(), 0)
        try:
            res = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq)
            flags = struct.unpack_from("16sh", res)[1]
            ifreq = struct.pack("16sh22x", name.encode(), flags | IFF_UP)
            fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, ifreq)
        except OSError as exc:
            raise _fail(f"bring interface {name} up", exc.errno or 0) from None


def reset_signals() -> None:
    """Every signal to its default action, none blocked (what an exec'd command expects)."""
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
