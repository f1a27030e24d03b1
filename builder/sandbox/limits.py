"""Resource limits of a RUN step, with docker's flags and meaning, and the cgroup
files they become (pure: builder.sandbox.cgroups writes them).

``Limits`` (docker's ``build``/``run`` flags): ``memory`` (bytes), ``memory_swap``
(memory + swap, docker's meaning: unset = twice ``memory``, -1 = unlimited), ``pids``
(None = ``DEFAULT_PIDS_LIMIT``, -1 = unlimited), ``cpu_shares``, ``cpu_quota`` /
``cpu_period`` (microseconds), ``cpuset_cpus``; and ``ulimits`` (``--ulimit``: rlimits
set in the command's process before it execs, not in the cgroup: builder.sandbox.ulimits).

The default pids limit: docker build sets none; lamina sets ``DEFAULT_PIDS_LIMIT``
(4096, twice podman's default) so that a fork bomb in a Dockerfile stops at the step
and never fills the host's process table, while a parallel build (make -j, cargo, a
JVM's threads: the pids controller counts threads) stays far below it. The limit
counts lamina's two sandbox processes (the namespace's init and its parent) too.

``v1_settings(limits)`` (controller -> ordered file writes, docker's device list
included, builder.sandbox.devices) and ``v2_settings(limits)`` (ordered file writes;
cpu.shares becomes cpu.weight with runc's formula, swap is memory.swap.max alone).
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import devices
from lamina.builder.sandbox.ulimits import Ulimit

DEFAULT_PIDS_LIMIT = 4096


# --- what the build asks for --------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    memory: int | None = None
    memory_swap: int | None = None
    pids: int | None = None
    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpuset_cpus: str | None = None
    ulimits: tuple[Ulimit, ...] = ()  # --ulimit: setrlimit before the exec, not cgroup files

    def asked(self) -> dict[str, str]:
        """flag -> controller, for every limit the user set."""
        out = {}
        for name, flag, controller in (("memory", "--memory", "memory"),
                                       ("memory_swap", "--memory-swap", "memory"),
                                       ("pids", "--pids-limit", "pids"),
                                       ("cpu_shares", "--cpu-shares", "cpu"),
                                       ("cpu_quota", "--cpu-quota", "cpu"),
                                       ("cpu_period", "--cpu-period", "cpu"),
                                       ("cpuset_cpus", "--cpuset-cpus", "cpuset")):
            if getattr(self, name) is not None:
                out[flag] = controller
        return out

    def pids_max(self) -> int | None:
        """The pids limit to apply (None: unlimited)."""
        if self.pids is None:
            return DEFAULT_PIDS_LIMIT
        return None if self.pids <= 0 else self.pids

    def validate(self) -> None:
        if self.memory is not None and self.memory < 6 * 1024 * 1024:
            raise SandboxError(f"--memory {self.memory}: the minimum is 6MiB (as docker)")
        if self.memory_swap is not None and self.memory_swap != -1:
            if self.memory is None:
                raise SandboxError("--memory-swap needs --memory (as docker)")
            if self.memory_swap < self.memory:
                raise SandboxError("--memory-swap must be at least --memory "
                                   "(it is memory plus swap; -1 for unlimited swap)")
        if self.cpu_shares is not None and not 2 <= self.cpu_shares <= 262144:
            raise SandboxError(f"--cpu-shares {self.cpu_shares}: expected 2 to 262144")
        if self.cpu_period is not None and not 1000 <= self.cpu_period <= 1000000:
            raise SandboxError(f"--cpu-period {self.cpu_period}: expected 1000 to 1000000 µs")
        if self.cpu_quota is not None and self.cpu_quota != -1 and self.cpu_quota < 1000:
            raise SandboxError(f"--cpu-quota {self.cpu_quota}: at least 1000 µs (-1: none)")
        if self.cpuset_cpus is not None and not all(
                part.strip().replace("-", "").isdigit()
                for part in self.cpuset_cpus.split(",")):
            raise SandboxError(f"--cpuset-cpus {self.cpuset_cpus!r}: expected a list such as "
                               "0-3 or 0,1")


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def _swap_total(limits: Limits) -> int | None:
    """memory+swap bytes to set (None: unlimited/unset), docker's rules."""
    if limits.memory is None or limits.memory_swap == -1:
        return None
    return limits.memory_swap if limits.memory_swap is not None else 2 * limits.memory


def v1_settings(limits: Limits) -> dict[str, tuple[tuple[str, str], ...]]:
    """controller -> ordered (file, value) writes for a fresh v1 step cgroup."""
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    pids = limits.pids_max()
    out["pids"] = (("pids.max", "max" if pids is None else str(pids)),)
    mem: list[tuple[str, str]] = []
    if limits.memory is not None:
        mem.append(("memory.limit_in_bytes", str(limits.memory)))
        swap = _swap_total(limits)
        if swap is not None:
            mem.append(("memory.memsw.limit_in_bytes", str(swap)))
    out["memory"] = tuple(mem)
    cpu: list[tuple[str, str]] = []
    if limits.cpu_shares is not None:
        cpu.append(("cpu.shares", str(limits.cpu_shares)))
    if limits.cpu_period is not None:
        cpu.append(("cpu.cfs_period_us", str(limits.cpu_period)))
    if limits.cpu_quota is not None:
        cpu.append(("cpu.cfs_quota_us", str(limits.cpu_quota)))
    if cpu:
        out["cpu"] = tuple(cpu)
    if limits.cpuset_cpus is not None:
        out["cpuset"] = (("cpuset.cpus", limits.cpuset_cpus),)
    if devices.device_cgroup_wanted():
        out["devices"] = devices.v1_rules()
    out["freezer"] = ()
    return out


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), runc's formula."""
    return 1 + ((shares - 2) * 9999) // 262142


def v2_settings(limits: Limits) -> tuple[tuple[str, str], ...]:
    """Ordered (file, value) writes for a fresh v2 step cgroup."""
    out: list[tuple[str, str]] = []
    pids = limits.pids_max()
    out.append(("pids.max", "max" if pids is None else str(pids)))
    if limits.memory is not None:
        out.append(("memory.max", str(limits.memory)))
        swap = _swap_total(limits)
        out.append(("memory.swap.max", "max" if swap is None else str(swap - limits.memory)))
    if limits.cpu_shares is not None:
        out.append(("cpu.weight", str(shares_to_weight(limits.cpu_shares))))
    if limits.cpu_quota is not None or limits.cpu_period is not None:
        quota = limits.cpu_quota
        period = limits.cpu_period or 100000
        out.append(("cpu.max", f"{'max' if quota in (None, -1) else quota} {period}"))
    if limits.cpuset_cpus is not None:
        out.append(("cpuset.cpus", limits.cpuset_cpus))
    return tuple(out)


