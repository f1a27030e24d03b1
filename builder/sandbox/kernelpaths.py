"""Docker's masked and read-only paths of a sandbox's /proc and /sys, as data, and
the mounts that apply them on a merged root before pivot_root.

    MASKED_PATHS, READONLY_PATHS        docker's default lists (moby's oci defaults)
    masked_paths(root) -> tuple[str]    MASKED_PATHS plus the per-CPU thermal_throttle
                                        dirs present under root/sys (docker adds those)
    protect_kernel_paths(root, dev_null)

A masked file gets the sandbox's /dev/null bind-mounted on it (reads give nothing,
writes vanish), a masked directory an empty read-only tmpfs; a read-only path is
bind-mounted on itself and remounted read-only (nosuid, nodev, noexec, as /proc is).
Paths this kernel does not have are skipped, as runc does. /proc and /sys must be
mounted fresh first: every path here lies on those kernel filesystems, never on a
layer, so no path of the image can redirect these mounts.
"""

from __future__ import annotations

import glob
import os
import stat

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import linux

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)

READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_THERMAL_THROTTLE = "/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle"
_RO_FLAGS = (linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID
             | linux.MS_NODEV | linux.MS_NOEXEC)


def masked_paths(root: str) -> tuple[str, ...]:
    """Docker's masked paths for the root mounted at `root` (host path of its /)."""
    root = root.rstrip("/")
    cpus = sorted(p[len(root):] for p in glob.glob(root + _THERMAL_THROTTLE))
    return MASKED_PATHS + tuple(cpus)


def _kind(host: str) -> str | None:
    try:
        mode = os.lstat(host).st_mode
    except FileNotFoundError:
        return None
    return "dir" if stat.S_ISDIR(mode) else "file"


def protect_kernel_paths(root: str, dev_null: str) -> None:
    """Apply docker's read-only and masked paths under `root`; `dev_null` is the
    sandbox's own /dev/null (checked to be the null device before it is used)."""
    st = os.stat(dev_null)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        raise SandboxError(f"{dev_null} is not the null device: cannot mask /proc paths")
    root = root.rstrip("/")
    for path in READONLY_PATHS:
        host = root + path
        if _kind(host) is None:
            continue
        linux.mount(host, host, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(None, host, None, _RO_FLAGS)
    for path in masked_paths(root):
        host = root + path
        kind = _kind(host)
        if kind == "dir":
            linux.mount("tmpfs", host, "tmpfs",
                        linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                        "mode=755")
        elif kind == "file":
            linux.mount(dev_null, host, None, linux.MS_BIND)
