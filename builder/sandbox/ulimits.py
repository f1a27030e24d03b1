"""Process resource limits (rlimits) of a RUN step or a container, with docker's
`--ulimit TYPE=SOFT[:HARD]` syntax and meaning (go-units' ParseUlimit), and their
application in the command's own process, right before it execs.

    parse_ulimit("nofile=1024:2048") -> Ulimit(name="nofile", soft=1024, hard=2048)
    parse_ulimits(["nofile=10", "fsize=1024"]) -> (Ulimit, ...)   # by name, last wins
    apply(ulimits)                                # setrlimit each one (the child only)

Names: core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss,
rtprio, rttime, sigpending, stack (docker leaves out `as`). Values are int64; `-1` (or
`infinity`) is unlimited; `SOFT` alone sets the hard limit too; a soft limit above
the hard one, or an unlimited soft limit under a finite hard one, is refused.

Without any --ulimit a step keeps the limits it inherits (as BuildKit, whose steps
inherit its daemon's). Raising a hard limit above lamina's own needs CAP_SYS_RESOURCE
in the host's user namespace: as root it works; rootless (or in a container without
that capability) it is a clear error naming the current limits.
"""

from __future__ import annotations

import errno
import os
import re
import resource
from dataclasses import dataclass
from typing import Iterable

from lamina.builder.errors import BuildError, SandboxError

# the kernel's resource numbers (asm-generic, as on x86-64 and arm64): Python's
# `resource` module lacks some (RLIMIT_LOCKS)
RESOURCES = {
    "core": 4,
    "cpu": 0,
    "data": 2,
    "fsize": 1,
    "locks": 10,
    "memlock": 8,
    "msgqueue": 12,
    "nice": 13,
    "nofile": 7,
    "nproc": 6,
    "rss": 5,
    "rtprio": 14,
    "rttime": 15,
    "sigpending": 11,
    "stack": 3,
}

_INT64 = (-(1 << 63), (1 << 63) - 1)


class UlimitError(BuildError):
    """A --ulimit the user wrote wrong (a usage error)."""


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int   # -1: unlimited
    hard: int   # -1: unlimited

    def __str__(self) -> str:  # docker's form, and what the cache key / provenance hold
        return f"{self.name}={self.soft}:{self.hard}"


def _value(text: str, spec: str) -> int:
    if text == "infinity":
        return -1
    if not re.fullmatch(r"[+-]?[0-9]+", text):  # ASCII digits only, as Go's ParseInt
        raise UlimitError(f"invalid ulimit {spec!r}: {text!r} is not a number "
                          "(an integer, -1 or infinity for unlimited)")
    sign = "-" if text.startswith("-") else ""
    digits = text.lstrip("+-").lstrip("0") or "0"
    # past 19 digits it is out of int64 anyway (and int() refuses more than 4300)
    value = int(sign + ("9" * 20 if len(digits) > 19 else digits), 10)
    if not _INT64[0] <= value <= _INT64[1]:
        raise UlimitError(f"invalid ulimit {spec!r}: {text} is out of range (int64)")
    return value


def parse_ulimit(spec: str) -> Ulimit:
    """`TYPE=SOFT[:HARD]` as docker reads it; UlimitError with docker's wording."""
    name, sep, values = spec.partition("=")
    if not sep:
        raise UlimitError(f"invalid ulimit argument: {spec} (expected TYPE=SOFT[:HARD])")
    if name not in RESOURCES:
        raise UlimitError(f"invalid ulimit type: {name} (one of {', '.join(RESOURCES)})")
    parts = values.split(":")
    if len(parts) > 2:
        raise UlimitError(f"too many limit value arguments - {values}, can only have up to "
                          "two, `soft[:hard]`")
    soft = _value(parts[0], spec)
    hard = _value(parts[1], spec) if len(parts) == 2 else soft
    if hard != -1:
        if soft == -1:
            raise UlimitError("ulimit soft limit must be less than or equal to hard limit: "
                              f"soft: -1 (unlimited), hard: {hard}")
        if soft > hard:
            raise UlimitError("ulimit soft limit must be less than or equal to hard limit: "
                              f"{soft} > {hard}")
    if soft < -1 or hard < -1:
        raise UlimitError(f"invalid ulimit {spec!r}: a limit is a count, -1 for unlimited")
    return Ulimit(name, soft, hard)


def parse_ulimits(specs: Iterable[str]) -> tuple[Ulimit, ...]:
    """Every --ulimit, one per name (the last of a name wins, as docker's map), sorted by
    name: the canonical form the cache key and the provenance hold."""
    by_name = {}
    for spec in specs:
        u = parse_ulimit(str(spec))
        by_name[u.name] = u
    return tuple(by_name[n] for n in sorted(by_name))


def _rlim(value: int) -> int:
    return resource.RLIM_INFINITY if value == -1 else value


def apply(ulimits: Iterable[Ulimit]) -> None:
    """setrlimit each limit in this process (the sandbox's command process, right
    before it execs: the command and its children are bound, lamina is not)."""
    for u in ulimits:
        try:
            resource.setrlimit(RESOURCES[u.name], (_rlim(u.soft), _rlim(u.hard)))
        except (OSError, ValueError) as exc:
            # CPython reports EPERM and EINVAL as ValueError, without an errno
            denied = getattr(exc, "errno", None) == errno.EPERM or "not allowed" in str(exc)
            why = str(exc) if not isinstance(exc, OSError) else os.strerror(exc.errno or 0)
            if denied and u.name == "nofile" and (u.hard == -1 or u.hard > _nr_open()):
                why = f"not permitted: nofile can never exceed fs.nr_open ({_nr_open()})"
            elif denied:
                why = ("not permitted: raising a hard limit above lamina's own "
                       f"({_current(u.name)}) needs CAP_SYS_RESOURCE in the host's user "
                       "namespace, which this lamina lacks (rootless, or a container "
                       "without it)")
            raise SandboxError(f"cannot set --ulimit {u}: {why}") from None


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default


def _current(name: str) -> str:
    soft, hard = resource.getrlimit(RESOURCES[name])
    show = (lambda v: "unlimited" if v == resource.RLIM_INFINITY else str(v))
    return f"soft {show(soft)}, hard {show(hard)}"


def within_own(ulimits: Iterable[Ulimit]) -> tuple[tuple[Ulimit, ...], tuple[str, ...]]:
    """`ulimits` with every hard limit above lamina's own lowered to it (and a soft one
    with it): what a rebuild may take from a recorded, possibly hostile, build (verify
    of someone else's image) - it never gets more than lamina has (no rtprio/nice for
    real-time or raised priority, no memlock beyond lamina's, ...). Also the words
    saying what was lowered."""
    kept, lowered = [], []
    for u in ulimits:
        own = resource.getrlimit(RESOURCES[u.name])[1]
        own_hard = -1 if own == resource.RLIM_INFINITY else own
        hard = u.hard
        if own_hard != -1 and (hard == -1 or hard > own_hard):
            hard = own_hard
        soft = u.soft if hard == -1 or (u.soft != -1 and u.soft <= hard) else hard
        v = Ulimit(u.name, soft, hard)
        if v != u:
            lowered.append(f"--ulimit {u} recorded; rebuilt with {v}: never above lamina's own limits")
        kept.append(v)
    return tuple(kept), tuple(lowered)
