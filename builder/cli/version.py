"""`lamina version`: lamina's version, Python, the kernel, and what the host allows
the sandbox to use - overlayfs, user namespaces, the cgroup version, seccomp and a
user-mode network helper (slirp4netns / pasta). Every probe is a cheap read of /proc
or /sys or a PATH lookup: nothing is mounted, nothing started."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import click

from lamina.builder.cli.app import cli


@dataclass(frozen=True)
class HostFeatures:
    overlay: str          # "yes" | "module" (loadable) | "no"
    user_namespaces: str  # "yes (max N)" | "no (...)"
    cgroup: str           # "v2" | "v1 (hybrid: v2 unified hierarchy too)" | "v1" | "none"
    seccomp: str          # "yes" | "no"
    network_helper: str   # "slirp4netns (/usr/bin/slirp4netns)" ... | "none found"
    running_as: str       # "root" | "uid N (rootless)"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def probe_overlay(proc: str = "/proc") -> str:
    fs = _read(f"{proc}/filesystems") or ""
    if any(line.split()[-1:] == ["overlay"] for line in fs.splitlines()):
        return "yes"
    modules = Path("/lib/modules") / platform.release() / "kernel" / "fs" / "overlayfs"
    return "module (loaded on first mount)" if modules.is_dir() else "no"


def probe_user_namespaces(proc: str = "/proc") -> str:
    raw = _read(f"{proc}/sys/user/max_user_namespaces")
    if raw is None:
        return "no (kernel without user namespaces)"
    n = int(raw.strip() or 0)
    if n <= 0:
        return "no (user.max_user_namespaces = 0)"
    clone = _read(f"{proc}/sys/kernel/unprivileged_userns_clone")
    if clone is not None and clone.strip() == "0" and os.geteuid() != 0:
        return "root only (kernel.unprivileged_userns_clone = 0)"
    return f"yes (max {n})"


def probe_cgroup(mountinfo: str | None = None) -> str:
    text = mountinfo if mountinfo is not None else (_read("/proc/self/mountinfo") or "")
    types: dict[str, str] = {}
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            types[fields[4]] = right.split()[0]
    top = types.get("/sys/fs/cgroup")
    if top == "cgroup2":
        return "v2"
    if top is not None or any(t == "cgroup" for t in types.values()):
        if types.get("/sys/fs/cgroup/unified") == "cgroup2":
            return "v1 (hybrid: v2 unified hierarchy too)"
        return "v1"
    return "none"


def probe_seccomp(proc: str = "/proc") -> str:
    status = _read(f"{proc}/self/status") or ""
    return "yes" if any(line.startswith("Seccomp:") for line in status.splitlines()) else "no"


def probe_network_helper() -> str:
    found = [f"{name} ({path})" for name in ("slirp4netns", "pasta") if (path := shutil.which(name))]
    return ", ".join(found) if found else "none found (RUN gets no outbound network; install slirp4netns)"


def host_features() -> HostFeatures:
    uid = os.geteuid()
    return HostFeatures(overlay=probe_overlay(), user_namespaces=probe_user_namespaces(),
                        cgroup=probe_cgroup(), seccomp=probe_seccomp(),
                        network_helper=probe_network_helper(),
                        running_as=_running_as(uid))


def _running_as(uid: int) -> str:
    mode = os.environ.get("LAMINA_ROOTLESS")  # builder.sandbox.userns
    if uid == 0 and mode:
        outside = os.environ.get("LAMINA_ROOTLESS_IDS", "?").split(":")[0]
        ids = {"subids": "subordinate IDs", "single": "own ID only"}.get(mode, "adopted namespace")
        return f"root of a user namespace (rootless: uid {outside} outside, {ids})"
    return "root" if uid == 0 else f"uid {uid} (rootless)"


def lamina_version() -> str:
    try:
        return metadata.version("lamina")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


@cli.command("version")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text, or one JSON object.")
def version_cmd(fmt: str) -> None:
    """Show lamina's version, Python, the kernel and the host features lamina can use."""
    info = {"lamina": lamina_version(),
            "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
            "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
            **asdict(host_features())}
    if fmt == "json":
        click.echo(json.dumps(info))
        return
    labels = {"lamina": "lamina", "python": "Python", "kernel": "Kernel", "overlay": "overlayfs",
              "user_namespaces": "User namespaces", "cgroup": "cgroups", "seccomp": "seccomp",
              "network_helper": "Network helper", "running_as": "Running as"}
    width = max(len(v) for v in labels.values()) + 1
    for key, label in labels.items():
        click.echo(f"{label + ':':<{width}} {info[key]}")
