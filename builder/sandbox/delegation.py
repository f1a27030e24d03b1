"""Rootless lamina's step cgroups: claiming the delegated cgroup v2 subtree it runs in.

An ordinary user can write only a cgroup v2 subtree delegated to them (systemd's
``Delegate=yes``: ``systemd-run --user --scope -p Delegate=yes lamina build .``, the
user's ``user@UID.service``, a container whose cgroup namespace root is writable).
cgroup v2 lets a cgroup hand its controllers to children only while it holds no
process itself, and lamina starts *in* that cgroup. So, before anything else runs
(``settle``, called by builder.sandbox.userns before it enters or adopts the user
namespace), lamina:

1. finds its own v2 cgroup ``OWN`` (``own_v2_cgroup``) and checks it is delegated
   (``delegated``: OWN, its ``cgroup.procs`` and ``cgroup.subtree_control`` are
   writable by this user);
2. refuses to go on if OWN holds any process but lamina (a shell, a CI runner): lamina
   never moves processes it did not start — it says how to give it a cgroup of its
   own instead;
3. moves itself into a leaf ``OWN/lamina-<pid>-<start time>`` (``claim``), after
   removing the leaves of lamina processes that are gone;
4. records ``LAMINA_CGROUPS=v2`` and ``LAMINA_CGROUP_PARENT=OWN`` in its environment,
   which builder.sandbox.cgroups reads: step cgroups are then ``OWN/lamina/<step>``
   with OWN's controllers enabled for them, exactly as root's v2 step cgroups.

Anything else (no cgroup2 mount, not delegated, other processes, a refused move)
gives ``LAMINA_CGROUPS=off`` and ``LAMINA_CGROUPS_WHY`` (the reason, shown once in
the build's note that limits are skipped). ``LAMINA_CGROUPS=v2`` set by the user
forces the attempt even when OWN offers no pids/memory controller (membership and
``cgroup.kill`` still hold every process of a step); ``=off`` skips it.

The process leaf stays until lamina exits (a process cannot remove the cgroup it is
in); the next lamina that claims OWN removes it, and systemd removes it with the
scope.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import cgrouplayout, cgroups

LEAF_PREFIX = "lamina-"
WHY_ENV = "LAMINA_CGROUPS_WHY"
USEFUL = frozenset({"pids", "memory", "cpu", "cpuset"})


def own_v2_cgroup(proc_cgroup: str, mountinfo: str) -> Path | None:
    """This process's cgroup v2 dir from /proc/self/cgroup and /proc/self/mountinfo
    text; None without a cgroup2 mount or a v2 entry (pure)."""
    mount = next((ln.split(" - ", 1)[0].split()[4] for ln in mountinfo.splitlines()
                  if " - cgroup2 " in ln), None)
    rel = next((ln.split(":", 2)[2] for ln in proc_cgroup.splitlines() if ln.startswith("0::")),
               None)
    if mount is None or rel is None:
        return None
    return Path(mount) / rel.lstrip("/")


def _read(path: Path | str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def current() -> Path | None:
    return own_v2_cgroup(_read("/proc/self/cgroup"), _read("/proc/self/mountinfo"))


def delegated(own: Path) -> bool:
    """May this user make child cgroups of `own` and hand them its controllers?"""
    return all(os.access(p, os.W_OK) for p in
               (own, own / "cgroup.procs", own / "cgroup.subtree_control"))


def controllers(own: Path) -> frozenset[str]:
    return frozenset(_read(own / "cgroup.controllers").split())


def leaf_name(pid: int, start: str | None) -> str:
    return f"{LEAF_PREFIX}{pid}-{start}"


def _stale_leaf(name: str) -> bool:
    """`name` is the process leaf of a lamina that is gone (pure but for /proc)."""
    if not name.startswith(LEAF_PREFIX):
        return False
    return not cgroups.owner_alive(name[len(LEAF_PREFIX):])


def sweep_leaves(own: Path) -> list[Path]:
    """Remove the (empty) process leaves lamina processes that are gone left in `own`."""
    removed = []
    try:
        names = [e.name for e in os.scandir(own) if e.is_dir()]
    except OSError:
        return removed
    for name in names:
        if _stale_leaf(name):
            try:
                (own / name).rmdir()  # a leaf with a process left in it stays
                removed.append(own / name)
            except OSError:
                pass
    return removed


def claim(own: Path, pid: int | None = None) -> Path:
    """Move process `pid` (this one) out of `own` into its leaf, so that `own` holds no
    process and can enable controllers for step cgroups; the leaf. Raises
    SandboxError with the reason when it cannot."""
    pid = pid if pid is not None else os.getpid()
    others = [p for p in cgroups.members(own) if p != pid]
    if others:
        raise SandboxError(
            f"its cgroup {own} holds other processes too ({len(others)}: lamina moves only "
            "itself) — start lamina in a cgroup of its own, e.g. `systemd-run --user "
            "--scope -p Delegate=yes lamina ...`")
    sweep_leaves(own)
    leaf = own / leaf_name(pid, cgroups.start_time(pid))
    try:
        leaf.mkdir(exist_ok=True)
        fd = os.open(leaf / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
    except OSError as exc:
        try:
            leaf.rmdir()
        except OSError:
            pass
        raise SandboxError(f"cannot move lamina into {leaf}: "
                                   f"{os.strerror(exc.errno or 0)}") from None
    return leaf


def settle(environ: MutableMapping[str, str], own: Path | None = None) -> None:
    """Decide rootless lamina's cgroups before it enters (or adopts) its user
    namespace, and record the decision in `environ` (see the module docstring)."""
    asked = environ.get("LAMINA_CGROUPS", "auto")
    if asked == "off" or (asked == "v2" and environ.get(cgrouplayout.PARENT_ENV)):
        return  # switched off, or settled by the lamina that started this one
    own = own if own is not None else current()
    why = None
    if own is None:
        why = "no cgroup v2 hierarchy here"
    elif not delegated(own):
        why = f"its cgroup {own} is not delegated to this user"
    elif asked != "v2" and not controllers(own) & USEFUL:
        why = f"its delegated cgroup {own} offers no pids, memory or cpu controller"
    else:
        try:
            claim(own)
        except SandboxError as exc:
            why = str(exc)
    if why is not None:
        environ["LAMINA_CGROUPS"] = "off"
        environ[WHY_ENV] = why
        environ.pop(cgrouplayout.PARENT_ENV, None)
        return
    environ["LAMINA_CGROUPS"] = "v2"
    environ[cgrouplayout.PARENT_ENV] = str(own)
    environ.pop(WHY_ENV, None)


def report(environ: MutableMapping[str, str]) -> str:
    """One line for `lamina unshare --check`: what rootless step cgroups this run has."""
    if environ.get("LAMINA_CGROUPS") == "v2" and environ.get(cgrouplayout.PARENT_ENV):
        parent = Path(environ[cgrouplayout.PARENT_ENV])
        offered = ", ".join(sorted(controllers(parent))) or "none"
        return (f"cgroups: step cgroups under the delegated {parent} "
                f"(controllers: {offered})")
    why = environ.get(WHY_ENV, "LAMINA_CGROUPS=off")
    return f"cgroups: resource limits are skipped: {why}"
