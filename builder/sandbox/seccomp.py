"""The seccomp filter of a RUN step: docker's default policy, compiled from data.

    policy_rules(caps, machine, kernel) -> tuple[Rule, ...]     pure: what the data says
    filter_program(caps=DEFAULT_CAPABILITIES) -> bytes           classic BPF, cached
    install(program) -> None                                     in the step's process

The policy lives in ``seccomp_profile.json`` next to this module (its "about" field
says how to read it): deny everything with EPERM, allow what docker's default profile
allows, with its argument conditions (clone without namespace flags, clone3 answered
with ENOSYS so that libc falls back to clone, a few personality values, no AF_ALG /
AF_VSOCK sockets) and its capability-conditional groups evaluated against the
capabilities the step holds.

The rules are compiled with libseccomp (``libseccomp.so.2``, Debian's libseccomp2)
through ctypes into one program covering every architecture the machine runs
(x86_64 also x86 and x32; aarch64 also arm): libseccomp maps each syscall name to
each architecture's number and skips names an architecture lacks. A syscall newer
than the installed libseccomp gets its number from the policy's table, on the
native architecture only (a filter of its own, merged with the others'). Compiling happens
in lamina's process (errors become a ``SandboxError`` there); the forked step
process only hands the bytes to the kernel.

``install`` does not set no_new_privs, as docker does not: the caller must still hold
CAP_SYS_ADMIN, so that setuid programs of the image (su, sudo) keep working. Without
CAP_SYS_ADMIN (an unprivileged lamina) it sets no_new_privs and installs anyway: a
step never runs without the filter.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import functools
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox.linux import DEFAULT_CAPABILITIES

PROFILE_PATH = Path(__file__).with_name("seccomp_profile.json")

# libseccomp's action encodings and constants (seccomp.h)
_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_ATTR_CTL_NNP = 3
_ATTR_CTL_OPTIMIZE = 8
_NR_ERROR = -1
_CMP = {"!=": 1, "<": 2, "<=": 3, "==": 4, ">=": 5, ">": 6, "masked==": 7}

# prctl / seccomp(2)
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_INSN_SIZE = 8
_BPF_MAXINSNS = 4096


@dataclass(frozen=True)
class Condition:
    index: int
    op: str          # one of _CMP's keys
    value: int
    mask: int = 0    # for "masked==": (arg & mask) == value


@dataclass(frozen=True)
class Rule:
    syscall: str
    action: str                          # "allow" or an errno name
    conditions: tuple[Condition, ...] = ()


# --- the policy: data -> rules (pure) ------------------------------------------

@functools.lru_cache(maxsize=1)
def load_profile() -> dict:
    try:
        return json.loads(PROFILE_PATH.read_text())
    except (OSError, ValueError) as exc:
        raise SandboxError(f"cannot read the seccomp policy {PROFILE_PATH}: {exc}") from None


def _kernel_at_least(release: str, wanted: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        nums = []
        for piece in text.split("-")[0].split(".")[:3]:
            digits = "".join(ch for ch in piece if ch.isdigit())
            nums.append(int(digits) if digits else 0)
        return tuple(nums)
    return parts(release) >= parts(wanted)


def _condition(raw: dict) -> Condition:
    op = raw["op"]
    if op not in _CMP:
        raise SandboxError(f"seccomp policy: unknown comparison {op!r}")
    return Condition(int(raw["index"]), op, int(raw["value"]), int(raw.get("mask", 0)))


def policy_rules(caps: frozenset[int] = DEFAULT_CAPABILITIES, machine: str | None = None,
                 kernel: str | None = None, profile: dict | None = None) -> tuple[Rule, ...]:
    """The rules that apply to a step holding `caps`, on `machine` (platform.machine()
    names) under kernel release `kernel`. A syscall allowed without conditions is
    listed once, and never again with conditions (they would add nothing)."""
    profile = load_profile() if profile is None else profile
    machine = machine or platform.machine()
    kernel = kernel or platform.release()
    cap_numbers = profile["capability_numbers"]

    def cap_set(names: list[str]) -> set[int]:
        try:
            return {cap_numbers[n] for n in names}
        except KeyError as exc:
            raise SandboxError(f"seccomp policy: unknown capability {exc.args[0]}") from None

    selected: list[dict] = []
    for raw in profile["rules"]:
        if "machines" in raw and machine not in raw["machines"]:
            continue
        if "min_kernel" in raw and not _kernel_at_least(kernel, raw["min_kernel"]):
            continue
        if "with_caps" in raw and not cap_set(raw["with_caps"]) <= caps:
            continue
        if "without_caps" in raw and cap_set(raw["without_caps"]) & caps:
            continue
        selected.append(raw)

    unconditional = {name for raw in selected
                     if raw["action"] == "allow" and not raw.get("args") and not raw.get("args_any")
                     for name in raw["syscalls"]}
    rules: list[Rule] = []
    seen: set[Rule] = set()
    for raw in selected:
        if raw.get("args_any"):
            variants = [(_condition(c),) for c in raw["args_any"]]
        else:
            variants = [tuple(_condition(c) for c in raw.get("args", ()))]
        for name in raw["syscalls"]:
            for conds in variants:
                if conds and name in unconditional:
                    continue
                rule = Rule(name, raw["action"], conds)
                if rule not in seen:
                    seen.add(rule)
                    rules.append(rule)
    return tuple(rules)


def architectures(machine: str | None = None, profile: dict | None = None) -> tuple[str, ...]:
    """libseccomp names of the architectures a filter covers on `machine`: the native
    one first, then those the machine can also run (32-bit, x32)."""
    profile = load_profile() if profile is None else profile
    machine = machine or platform.machine()
    return tuple(profile["architectures"].get(machine, ["native"]))


# --- libseccomp binding ----------------------------------------------------------

class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@functools.lru_cache(maxsize=1)
def _libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        raise SandboxError("libseccomp is not installed (Debian package libseccomp2): "
                           "lamina runs no RUN step without its seccomp filter") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_native.argtypes = []
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_remove.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_merge.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SandboxError(f"seccomp: {what}: {os.strerror(-rc)}")


def _action(name: str, default_errno: int) -> int:
    if name == "allow":
        return _ACT_ALLOW
    number = getattr(errno_mod, name, None)
    if not isinstance(number, int):
        raise SandboxError(f"seccomp policy: unknown action {name!r}")
    return _ACT_ERRNO | (number & 0xFFFF)


def _syscall_number(lib: ctypes.CDLL, name: str, extra: dict, machine: str
                    ) -> tuple[int, bool] | None:
    """(number, known) for `name`: libseccomp's number (the native architecture's, a
    negative "pseudo" number for syscalls only other architectures have; libseccomp
    derives every other architecture's number from it), known=True; else the
    policy's number table's, known=False (usable on the native architecture only);
    None if neither knows the name."""
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number != _NR_ERROR:
        return number, True
    number = {**extra.get("every", {}), **extra.get(machine, {})}.get(name)
    return None if number is None else (number, False)


def _arch_filter(lib: ctypes.CDLL, arches: tuple[str, ...], native_only: bool,
                 rules: tuple[Rule, ...], default_errno: int, extra: dict, machine: str) -> int:
    """A libseccomp filter context for the native architecture (native_only) or for
    `arches` without it, holding `rules`."""
    ctx = lib.seccomp_init(_ACT_ERRNO | default_errno)
    if not ctx:
        raise SandboxError("seccomp: seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0), "leave no_new_privs alone")
        # a binary search over the syscall numbers: the kernel runs the filter for every
        # syscall number when it loads it (its per-syscall cache), a linear list of a
        # thousand instructions makes loading cost ~10 ms per step
        _check(lib.seccomp_attr_set(ctx, _ATTR_CTL_OPTIMIZE, 2), "optimize the filter")
        if not native_only:
            native = lib.seccomp_arch_native()
            for arch in arches:
                token = lib.seccomp_arch_resolve_name(arch.encode())
                if token == 0:
                    raise SandboxError(f"seccomp: libseccomp does not know architecture {arch!r}")
                _check(lib.seccomp_arch_add(ctx, token), f"add architecture {arch}")
            _check(lib.seccomp_arch_remove(ctx, native), "remove the native architecture")
        for rule in rules:
            found = _syscall_number(lib, rule.syscall, extra, machine)
            if found is None or (not found[1] and not native_only):
                continue  # no number for this syscall on these architectures
            args = (_ArgCmp * max(1, len(rule.conditions)))()
            for i, c in enumerate(rule.conditions):
                if c.op == "masked==":
                    args[i] = _ArgCmp(c.index, _CMP[c.op], c.mask, c.value)
                else:
                    args[i] = _ArgCmp(c.index, _CMP[c.op], c.value, 0)
            rc = lib.seccomp_rule_add_array(ctx, _action(rule.action, default_errno), found[0],
                                            len(rule.conditions), args)
            if rc == -errno_mod.EEXIST:
                continue
            _check(rc, f"rule for {rule.syscall}")
        return ctx
    except BaseException:
        lib.seccomp_release(ctx)
        raise


def _compile(lib: ctypes.CDLL, arches: tuple[str, ...], rules: tuple[Rule, ...],
             default_errno: int, extra: dict, machine: str) -> bytes:
    ctx = _arch_filter(lib, (), True, rules, default_errno, extra, machine)
    try:
        if arches[1:]:
            other = _arch_filter(lib, arches[1:], False, rules, default_errno, extra, machine)
            rc = lib.seccomp_merge(ctx, other)
            if rc < 0:
                lib.seccomp_release(other)
                _check(rc, "merge the filters of " + ", ".join(arches))
        fd = os.memfd_create("lamina-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "export the filter")
            return os.pread(fd, os.lseek(fd, 0, os.SEEK_CUR), 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


@functools.lru_cache(maxsize=8)
def filter_program(caps: frozenset[int] = DEFAULT_CAPABILITIES) -> bytes:
    """The step's seccomp filter as classic BPF (struct sock_filter array), built once
    per process and capability set."""
    profile = load_profile()
    machine = platform.machine()
    rules = policy_rules(caps, machine, platform.release(), profile)
    default_errno = getattr(errno_mod, profile["default_errno"])
    program = _compile(_libseccomp(), architectures(machine, profile), rules, default_errno,
                       profile.get("numbers_libseccomp_may_lack", {}), machine)
    if not program or len(program) % _BPF_INSN_SIZE or len(program) // _BPF_INSN_SIZE > _BPF_MAXINSNS:
        raise SandboxError(f"seccomp: the compiled filter has an invalid size ({len(program)} bytes)")
    return program


# --- in the step's process ---------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


def install(program: bytes) -> None:
    """Load `program` as this process's seccomp filter (inherited by everything it
    execs and forks). Keeps no_new_privs off when CAP_SYS_ADMIN allows it."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // _BPF_INSN_SIZE, ctypes.addressof(buf))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno_mod.EACCES:  # no CAP_SYS_ADMIN: the kernel insists on no_new_privs
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 and \
                _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) == 0:
            return
        err = ctypes.get_errno()
    raise SandboxError(f"cannot install the seccomp filter: {os.strerror(err)} "
                       f"({errno_mod.errorcode.get(err, err)})")
