"""The cgroup of a RUN step: every process of the step in a fresh cgroup lamina
creates, with the build's resource limits, killed and removed after the step.

    cg = StepCgroup.create(limits)   # in lamina (P), before the sandbox forks
    cg.join()                        # in the sandbox's first child, before unshare
    ...                              # the step runs; its children inherit the cgroup
    cg.oom_killed()                  # did the kernel's OOM killer strike inside?
    cg.close()                       # kill whatever is left, rmdir (P, always)

Where (builder.sandbox.cgrouplayout: ``layout()`` finds lamina's own cgroups and what
the host offers): on a cgroup v1 host (this project's CI: hybrid, controllers on
v1, an empty unified hierarchy) one dir per v1 hierarchy lamina uses — pids, memory,
devices (docker's device list, builder.sandbox.devices), freezer (to stop a step's
processes before killing them), cpu and cpuset only when a limit asks — at
``<hierarchy>/<lamina's own cgroup there>/lamina/<step>``: nested in lamina's own
cgroup, so a limit lamina itself runs under (a systemd unit, a CI job) still holds.
On a cgroup v2 host: ``<lamina's own cgroup>/lamina/<step>`` when lamina's cgroup can
delegate the controllers, else ``/sys/fs/cgroup/lamina/<step>``; every process is
killed with ``cgroup.kill`` (Linux >= 5.14; SIGKILL of each member otherwise).
Rootless lamina uses the v2 subtree delegated to it, if any
(builder.sandbox.delegation: ``Layout.delegated``, nothing above it is tried). v2 has
no devices file: there the ``nodev`` mounts of builder.sandbox.devices keep
host devices out of reach (runc would attach a BPF program; lamina does not).

Step cgroups are named ``<pid>-<start time>-<n>`` of the lamina process that made
them; ``StepCgroup.create`` first (once per process) removes those whose owner is
gone — what a SIGKILLed lamina left (its steps' processes died with it: PID
namespace and PDEATHSIG; any left over are killed here). Only the ``lamina`` dirs
under lamina's own cgroups are searched: a step cgroup a killed lamina left under
another parent (lamina started from another cgroup) stays, empty, until a lamina runs
there again. lamina's own ``lamina`` dir is removed whenever no step uses it, so it
never keeps the cgroup lamina runs in from being removed.

Limits: builder.sandbox.limits (``Limits``, what is written to which file), re-exported
here. A limit the user asked for whose controller this host lacks is an error
(``cgrouplayout.check``); a default one (the pids limit) is skipped with one note.

The forked child only calls ``join`` (plain ``os`` calls, no import).
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import time
from pathlib import Path

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox.cgrouplayout import DIR_NAME, Layout, layout, read_or_empty, v2_root
from lamina.builder.sandbox.limits import (DEFAULT_PIDS_LIMIT, Limits, human_bytes,
                                           shares_to_weight, v1_settings, v2_settings)

__all__ = ["DEFAULT_PIDS_LIMIT", "Limits", "StepCgroup", "members", "owner_alive",
           "shares_to_weight", "start_time", "sweep_stale", "v1_settings", "v2_settings"]


def _v2_controller(file: str) -> str:
    return file.split(".", 1)[0]


# --- one step's cgroup --------------------------------------------------------------

_counter = itertools.count(1)
_swept = False


def start_time(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data.rpartition(")")[2].split()[19]


def owner_alive(name: str) -> bool:
    pid, _, rest = name.partition("-")
    start = rest.partition("-")[0]
    if not pid.isdigit():
        return True  # not ours: leave it
    return start_time(int(pid)) == start


def members(d: Path) -> list[int]:
    try:
        return [int(p) for p in (d / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _killmembers(d: Path, v1_freezer: Path | None = None) -> None:
    """SIGKILL every process of cgroup dir `d` (frozen first when a v1 freezer dir is
    given, so none can fork meanwhile), until it is empty."""
    kill_file = d / "cgroup.kill"
    if kill_file.exists():
        try:
            kill_file.write_text("1")
        except OSError:
            pass
    frozen = False
    if v1_freezer is not None and members(d):
        try:
            (v1_freezer / "freezer.state").write_text("FROZEN")
            frozen = True
        except OSError:
            pass
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            pids = members(d)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if frozen:
                (v1_freezer / "freezer.state").write_text("THAWED")  # let them die
                frozen = False
            time.sleep(0.01)
    finally:
        if frozen:
            try:
                (v1_freezer / "freezer.state").write_text("THAWED")
            except OSError:
                pass


def _rmdir(d: Path) -> None:
    for _ in range(200):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    d.rmdir()


def _write(path: Path, value: str, flag_hint: str = "") -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise SandboxError(f"cannot set {path.name}={value} on the step's cgroup {path.parent}: "
                           f"{os.strerror(exc.errno or 0)}{flag_hint}") from None


def sweep_stale(lay: Layout | None = None) -> list[Path]:
    """Remove step cgroups of lamina processes that are gone (killing what is left in
    them); returns the dirs removed."""
    lay = lay or layout()
    bases = {p / DIR_NAME for p in lay.v1.values()}
    for parent in (lay.v2, v2_root(lay)):
        if parent is not None:
            bases.add(parent / DIR_NAME)
    freezer = lay.v1.get("freezer")
    removed = []
    for base in bases:
        try:
            names = [e.name for e in os.scandir(base) if e.is_dir()]
        except OSError:
            continue
        for name in names:
            if owner_alive(name):
                continue
            d = base / name
            frz = freezer / DIR_NAME / name if freezer is not None else None
            if frz is not None and not frz.is_dir():
                frz = None
            try:
                _killmembers(d, frz)
                _rmdir(d)
                removed.append(d)
            except OSError:
                pass
        _remove_base(base)
    return removed


class StepCgroup:
    """The cgroup dirs of one step (one per v1 hierarchy, or one v2 dir)."""

    def __init__(self, version: str, dirs: dict[str, Path], limits: Limits) -> None:
        self.version = version
        self.dirs = dirs
        self.limits = limits
        self._closed = False

    @property
    def denies_devices(self) -> bool:
        """Has this step a device cgroup denying every device outside docker's list
        (a v1 ``devices`` dir with builder.sandbox.devices.v1_rules written)?"""
        return self.version == "v1" and "devices" in self.dirs

    @classmethod
    def create(cls, limits: Limits, lay: Layout | None = None) -> "StepCgroup":
        global _swept
        lay = lay or layout()
        if not _swept:
            _swept = True
            sweep_stale(lay)
        me = os.getpid()
        name = f"{me}-{start_time(me)}-{next(_counter)}"
        if lay.version == "v1":
            return cls._create_v1(limits, lay, name)
        if lay.version == "v2":
            return cls._create_v2(limits, lay, name)
        return cls("off", {}, limits)

    @classmethod
    def _create_v1(cls, limits: Limits, lay: Layout, name: str) -> "StepCgroup":
        settings = v1_settings(limits)
        made = cls("v1", {}, limits)
        try:
            for controller, writes in settings.items():
                own = lay.v1.get(controller)
                if own is None:
                    continue  # check() has said so, or it is optional
                if controller in ("cpu", "cpuset") and not writes:
                    continue
                if controller == "memory" and limits.memory_swap is None:
                    # docker's default swap limit needs swap accounting; without it
                    # (swapaccount=0) docker warns and runs without one: so does lamina
                    writes = tuple(w for w in writes if w[0] != "memory.memsw.limit_in_bytes"
                                   or (own / w[0]).exists())
                base = own / DIR_NAME
                step = base / name
                if any(d == step for d in made.dirs.values()):  # co-mounted controllers
                    made.dirs[controller] = step
                    _apply(step, writes)
                    continue
                _make_step_dir(own, base, step, cpuset=controller == "cpuset")
                made.dirs[controller] = step
                if controller == "cpuset":
                    _inherit_cpuset(base, step)
                _apply(step, writes)
        except BaseException:
            made.close()
            raise
        return made

    @classmethod
    def _create_v2(cls, limits: Limits, lay: Layout, name: str) -> "StepCgroup":
        writes = v2_settings(limits)
        needed = {_v2_controller(f) for f, _ in writes} & set(lay.v2_controllers)
        writes = tuple(w for w in writes if _v2_controller(w[0]) in needed)
        for parent in (lay.v2, v2_root(lay)):
            if parent is None:
                continue
            base = parent / DIR_NAME
            try:
                _enable(parent, needed)
                base.mkdir(exist_ok=True)
                _enable(base, needed)
            except (OSError, SandboxError):
                continue
            step = base / name
            _make_step_dir(parent, base, step, cpuset=False)
            made = cls("v2", {"": step}, limits)
            if limits.memory_swap is None:  # docker's default swap limit needs swap
                writes = tuple(w for w in writes  # accounting: without it, none
                               if w[0] != "memory.swap.max" or (step / w[0]).exists())
            try:
                _apply(step, writes)
            except BaseException:
                made.close()
                raise
            return made
        raise SandboxError(f"cannot create a cgroup for the step under {lay.v2}: lamina's "
                           "cgroup cannot delegate the controllers "
                           f"({', '.join(sorted(needed))}) and /sys/fs/cgroup is not writable")

    # -- in the sandbox's child --------------------------------------------------------

    def join(self) -> None:
        """Move the calling process into every dir of the step (before it unshares its
        cgroup namespace, so the step sees its cgroup as its root)."""
        me = str(os.getpid()).encode()
        for d in dict.fromkeys(self.dirs.values()):
            fd = os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY)
            try:
                os.write(fd, me)
            finally:
                os.close(fd)

    # -- after the step ----------------------------------------------------------------

    def oom_killed(self) -> bool:
        if self.version == "v1" and "memory" in self.dirs:
            text = read_or_empty(self.dirs["memory"] / "memory.oom_control")
        elif self.version == "v2":
            text = read_or_empty(self.dirs[""] / "memory.events")
        else:
            return False
        counts = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                counts[key] = int(value)
        if "oom_kill" in counts:
            return counts["oom_kill"] > 0
        # kernels before 4.13 count no OOM kills: the limit was hit at least
        return self.version == "v1" and read_or_empty(
            self.dirs["memory"] / "memory.failcnt").strip() not in ("", "0")

    def check_exit(self, code: int) -> None:
        """Raise the step's error when it failed because the OOM killer struck."""
        if code != 0 and self.oom_killed():
            limit = self.limits.memory
            shown = f"limit {human_bytes(limit)}" if limit is not None else "no --memory limit"
            raise SandboxError(f"RUN was killed: out of memory ({shown})")

    def pids(self) -> list[int]:
        """Every process in the step's cgroup (the pids one on v1)."""
        d = self.dirs.get("pids") or self.dirs.get("") or next(iter(self.dirs.values()), None)
        return members(d) if d is not None else []

    def close(self) -> None:
        """Kill every process left in the step's cgroups and remove them."""
        if self._closed:
            return
        self._closed = True
        freezer = self.dirs.get("freezer") if self.version == "v1" else None
        failures = []
        for d in dict.fromkeys(self.dirs.values()):
            try:
                _killmembers(d, freezer)
                _rmdir(d)
            except OSError as exc:
                failures.append(f"{d}: {os.strerror(exc.errno or 0)}")
                continue
            _remove_base(d.parent)
        if failures:
            raise SandboxError("cannot remove the step's cgroup: " + "; ".join(failures))


def _remove_base(base: Path) -> None:
    """Remove lamina's dir in a hierarchy once no step uses it, so that it never keeps
    the cgroup lamina runs in (a CI job's, a systemd unit's) from being removed."""
    try:
        base.rmdir()
    except OSError:
        pass  # another step (of this or another build) still has its cgroup there


def _apply(step: Path, writes) -> None:
    for file, value in writes:
        _write(step / file, value)


def _make_step_dir(own: Path, base: Path, step: Path, cpuset: bool) -> None:
    """mkdir base (lamina's dir) and step under it; another lamina may remove an empty
    base between the two (``_remove_base``): then again."""
    for attempt in range(5):
        base.mkdir(exist_ok=True)
        if cpuset:
            _inherit_cpuset(own, base)
        try:
            step.mkdir()
            return
        except FileNotFoundError:
            if attempt == 4:
                raise


def _inherit_cpuset(parent: Path, child: Path) -> None:
    """A fresh v1 cpuset cgroup has no cpus and mems: copy the parent's."""
    for f in ("cpuset.cpus", "cpuset.mems"):
        if not (child / f).read_text().strip():
            _write(child / f, (parent / f).read_text().strip() or "0")


def _enable(parent: Path, controllers: set[str]) -> None:
    """Enable `controllers` for the children of v2 cgroup `parent`."""
    have = set(read_or_empty(parent / "cgroup.subtree_control").split())
    todo = controllers - have
    if todo:
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(todo)))
