"""What the step's command may do: the last steps of its process before exec.

    prepare(caps=DEFAULT_CAPABILITIES) -> None    in lamina's process, before forking
    enter(uid, gid, groups, caps=DEFAULT_CAPABILITIES) -> None    in the step's process

``enter`` gives the calling process, in this order:

1. a fresh, empty session keyring (keyctl JOIN_SESSION_KEYRING with no name), so that
   nothing lamina's session holds is reachable, even before the filter blocks keyctl;
2. no ambient capabilities and an empty inheritable set (an inheritable capability
   survives execve whatever the bounding set says: a lamina started with inheritable
   CAP_SYS_ADMIN would hand it to every RUN);
3. the seccomp filter of builder.sandbox.seccomp, installed while the process still
   holds CAP_SYS_ADMIN so that no_new_privs stays off, as docker leaves it (setuid
   programs of the image keep working);
4. the step's supplementary groups, gid and uid;
5. permitted = effective = `caps` for root, nothing for another user (as docker:
   a non-root USER starts with no capabilities; a setuid-root program it runs gets
   the bounding set, which the caller has already narrowed to `caps`).

``prepare`` compiles the filter in lamina's process, so that an error is reported
there and the forked step process only loads the cached program.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import platform

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import seccomp
from lamina.builder.sandbox.linux import DEFAULT_CAPABILITIES

_KEYCTL = {"x86_64": 250, "aarch64": 219}
_KEYCTL_JOIN_SESSION_KEYRING = 1
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522

_MACHINE = platform.machine()


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


def _fail(what: str) -> SandboxError:
    err = ctypes.get_errno()
    return SandboxError(f"{what}: {os.strerror(err)} ({errno_mod.errorcode.get(err, err)})")


# --- capability sets (64 bits each, as the kernel's v3 interface) ------------------

def mask(caps: frozenset[int]) -> int:
    return sum(1 << c for c in caps)


def get_capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this process."""
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise _fail("capget")
    def join(field: str) -> int:
        return getattr(data[0], field) | (getattr(data[1], field) << 32)
    return join("effective"), join("permitted"), join("inheritable")


def set_capabilities(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i] = _CapData((effective >> shift) & 0xFFFFFFFF, (permitted >> shift) & 0xFFFFFFFF,
                           (inheritable >> shift) & 0xFFFFFFFF)
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise _fail(f"capset(effective={effective:#x}, permitted={permitted:#x}, "
                    f"inheritable={inheritable:#x})")


def clear_ambient_capabilities() -> None:
    if _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        if ctypes.get_errno() != errno_mod.EINVAL:  # EINVAL: a kernel without ambient sets
            raise _fail("prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


# --- keyrings ---------------------------------------------------------------------

def join_new_session_keyring() -> None:
    """Replace this process's session keyring by a new anonymous, empty one."""
    number = _KEYCTL.get(_MACHINE)
    if number is None:
        raise SandboxError(f"keyctl: no syscall number known for machine {_MACHINE!r} "
                           "(lamina knows x86_64 and aarch64)")
    if _libc.syscall(ctypes.c_long(number), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING),
                     ctypes.c_void_p(None)) < 0:
        if ctypes.get_errno() == errno_mod.ENOSYS:  # a kernel without keyrings
            return
        raise _fail("keyctl(KEYCTL_JOIN_SESSION_KEYRING)")


# --- the whole sequence ------------------------------------------------------------

def prepare(caps: frozenset[int] = DEFAULT_CAPABILITIES) -> None:
    seccomp.filter_program(caps)


def _set_groups(groups: tuple[int, ...] | list[int]) -> None:
    try:
        os.setgroups(list(groups))
    except PermissionError:
        try:
            denied = open("/proc/self/setgroups").read().strip() == "deny"
        except OSError:
            denied = False
        if not denied:
            raise
        # rootless lamina with a single-ID mapping (builder.sandbox.userns): the kernel
        # forbids setgroups there; the step keeps lamina's (unmapped) groups
        if groups:
            raise SandboxError("supplementary groups need subordinate IDs for rootless "
                               "lamina (/etc/subgid)") from None


def enter(uid: int, gid: int, groups: tuple[int, ...] | list[int],
          caps: frozenset[int] = DEFAULT_CAPABILITIES) -> None:
    program = seccomp.filter_program(caps)  # cached by prepare() in lamina's process
    join_new_session_keyring()
    clear_ambient_capabilities()
    effective, permitted, _ = get_capabilities()
    set_capabilities(effective, permitted, 0)
    seccomp.install(program)
    _set_groups(groups)
    os.setgid(gid)
    os.setuid(uid)
    keep = mask(caps) & permitted if uid == 0 else 0
    set_capabilities(keep, keep, 0)
