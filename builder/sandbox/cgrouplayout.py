"""Where the cgroups are: the cgroup interface this host gives lamina (v1 hierarchies,
the v2 unified hierarchy, a v2 subtree delegated to rootless lamina, or none), lamina's
own cgroup dir in each, and whether the build's resource limits can apply there
(``check``). Creating, joining and removing a step's cgroup is builder.sandbox.cgroups.

``layout()`` reads /proc/self/mountinfo and /proc/self/cgroup: on a cgroup v1 host
(this project's CI: hybrid, controllers on v1, an empty unified hierarchy) one dir per
v1 hierarchy lamina uses (pids, memory, devices, freezer, cpu, cpuset); on a v2 host
lamina's own v2 cgroup with the controllers it has. Rootless lamina with a delegated
v2 subtree (builder.sandbox.delegation sets ``PARENT_ENV``) gets only that subtree.
``VERSION`` (or ``LAMINA_CGROUPS=v1|v2|off``) forces an interface; "auto" picks v2 when
it has pids or memory, else v1, else off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import devices
from lamina.builder.sandbox.limits import DEFAULT_PIDS_LIMIT, Limits

__all__ = ["DIR_NAME", "PARENT_ENV", "VERSION", "Layout", "check", "device_cgroup_available",
           "layout", "read_or_empty", "v2_root"]

# "auto" | "v1" | "v2" | "off": which cgroup interface lamina uses (tests force each);
# also LAMINA_CGROUPS=v1|v2|off
VERSION = "auto"
DIR_NAME = "lamina"
# the delegated v2 cgroup rootless lamina moved itself out of, to put step cgroups
# under (set by builder.sandbox.delegation, inherited by lamina's children)
PARENT_ENV = "LAMINA_CGROUP_PARENT"


@dataclass(frozen=True)
class Layout:
    """lamina's own cgroup dir in each v1 hierarchy (controller -> dir; co-mounted
    controllers share a dir) and in the v2 hierarchy, with v2's available controllers."""

    v1: Mapping[str, Path] = field(default_factory=dict)
    v2: Path | None = None
    v2_controllers: frozenset[str] = frozenset()
    delegated: bool = False  # v2 is the subtree delegated to rootless lamina: nothing above

    @property
    def version(self) -> str:
        mode = os.environ.get("LAMINA_CGROUPS") or VERSION
        if mode in ("v1", "v2", "off"):
            return mode
        if self.v2 is not None and {"pids", "memory"} & self.v2_controllers:
            return "v2"
        if self.v1:
            return "v1"
        return "v2" if self.v2 is not None else "off"


def _mountinfo_cgroups() -> tuple[dict[str, Path], Path | None]:
    """v1 hierarchy mount points by controller, and the cgroup2 mount point."""
    v1: dict[str, Path] = {}
    v2 = None
    for entry in devices.parse_mountinfo(Path("/proc/self/mountinfo").read_text()):
        if entry.fstype == "cgroup2" and v2 is None:
            v2 = Path(entry.mount_point)
        elif entry.fstype == "cgroup":
            for opt in entry.super_options:
                if opt not in ("rw", "ro"):
                    v1.setdefault(opt, Path(entry.mount_point))
    return v1, v2


def layout() -> Layout:
    v1_mounts, v2_mount = _mountinfo_cgroups()
    v1: dict[str, Path] = {}
    v2 = None
    parent = os.environ.get(PARENT_ENV)
    if (parent and v2_mount is not None and os.environ.get("LAMINA_CGROUPS") == "v2"
            and os.environ.get("LAMINA_ROOTLESS")):  # set with it by builder.sandbox.userns
        v2 = Path(parent)  # rootless, delegated: builder.sandbox.delegation
        return Layout(v2=v2, v2_controllers=frozenset(read_or_empty(v2 / "cgroup.controllers").split()),
                      delegated=True)
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            if v2_mount is not None:
                v2 = v2_mount / rel
            continue
        for c in controllers.split(","):
            if c in v1_mounts:
                v1[c] = v1_mounts[c] / rel
    available: frozenset[str] = frozenset()
    if v2 is not None:
        try:
            available = frozenset((v2 / "cgroup.controllers").read_text().split())
        except OSError:
            available = frozenset()
        if not available and v2 != v2_mount:
            try:
                available = frozenset((v2_mount / "cgroup.controllers").read_text().split())
            except OSError:
                pass
    wanted = ("pids", "memory", "devices", "freezer", "cpu", "cpuset")
    return Layout(v1={c: p for c, p in v1.items() if c in wanted}, v2=v2,
                  v2_controllers=available)


def check(limits: Limits, lay: Layout | None = None) -> list[str]:
    """Raise SandboxError if a limit the user asked for cannot be applied here; return
    notes (once per build) about what lamina cannot do on this host."""
    limits.validate()
    lay = lay or layout()
    have = controllers(lay)
    missing = sorted({flag for flag, c in limits.asked().items() if c not in have})
    if lay.version == "v1" and limits.memory_swap not in (None, -1) and "memory" in have:
        if not (lay.v1["memory"] / "memory.memsw.limit_in_bytes").exists():
            missing.append("--memory-swap")
    if lay.version == "off" and os.environ.get("LAMINA_ROOTLESS"):  # set by builder.sandbox.userns
        skipped = f" ({', '.join(missing)} skipped)" if missing else ""
        why = os.environ.get("LAMINA_CGROUPS_WHY")  # builder.sandbox.delegation
        return [f"note: rootless lamina has no step cgroups{f' ({why})' if why else ''}: "
                f"RUN steps run without resource limits{skipped}; host devices are kept "
                "out by nodev mounts"]
    if missing:
        why = ("cgroups are switched off" if lay.version == "off" else
               f"this host's cgroup {lay.version} lacks the controller")
        raise SandboxError(f"cannot apply {', '.join(missing)}: {why} "
                           f"(available: {', '.join(sorted(have)) or 'none'})")
    notes = []
    if "pids" not in have and limits.pids is None:
        notes.append(f"note: no pids cgroup controller here: RUN steps run without the "
                     f"default limit of {DEFAULT_PIDS_LIMIT} processes")
    if lay.version == "v2" or "devices" not in have:
        notes.append("note: no device cgroup here: host devices are kept out of RUN steps "
                     "by nodev mounts only")
    return notes


def controllers(lay: Layout) -> set[str]:
    if lay.version == "v1":
        return set(lay.v1)
    if lay.version == "v2":
        return set(lay.v2_controllers)
    return set()


def v2_root(lay: Layout) -> Path | None:
    if lay.v2 is None or lay.delegated:
        return None
    p = lay.v2
    while not (p / "cgroup.controllers").exists() or (p.parent / "cgroup.controllers").exists():
        if p.parent == p:
            return None
        p = p.parent
    return p


def read_or_empty(path: Path) -> str:
    """The text of a cgroup file, "" when it cannot be read."""
    try:
        return path.read_text()
    except OSError:
        return ""


def device_cgroup_available() -> bool:
    """Does this host have a cgroup v1 devices hierarchy lamina can use?"""
    return "devices" in layout().v1
