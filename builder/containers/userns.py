"""Rootless containers: which user namespace a rootless lamina enters.

A rootless lamina runs in a user namespace (builder.sandbox.userns), a new one per
invocation - and a detached container lives in the namespace of the lamina that
started it (its monitor, and so its PID 1 and their namespaces, were made there).
A later `exec`, `stop`, `kill` or `rm` in a namespace of its own could neither enter
the container's namespaces (setns needs CAP_SYS_ADMIN in the namespace that owns
them) nor signal a PID 1 that runs as a subordinate ID (kill needs CAP_KILL there).

So a rootless lamina about to run a container command (CONTAINER_COMMANDS) joins
the user namespace of a live monitor of its store (setns on /proc/<monitor>/ns/user,
done outside, where the user owns that namespace) instead of making one: the
monitor of a container its command line names if there is one, else the newest.
The monitors are the namespace holders; since a `run` joins too, every container
running at a time shares one namespace (two `run -d` racing with none running may
still make two). With no live monitor lamina makes a new namespace, as before.

    namespace_to_join(store_root, command, argv) -> pid | None    # pure but for reads
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lamina.builder.containers.state import STATE_FILE, boot_id, process_is

CONTAINER_COMMANDS = frozenset({"run", "exec", "stop", "kill", "rm", "commit"})


def namespace_to_join(store_root: Path, command: str | None, argv: list[str]) -> int | None:
    """The pid of the monitor whose user namespace a rootless `command` should join,
    or None (not a container command, no live monitor). Reads the state files only:
    it runs outside lamina's namespace, before anything else."""
    if command not in CONTAINER_COMMANDS:
        return None
    d = Path(store_root) / "containers"
    try:
        entries = sorted(os.listdir(d))
    except OSError:
        return None
    this_boot = boot_id()
    live = []
    for entry in entries:
        if entry.startswith("."):
            continue
        try:
            rec = json.loads((d / entry / STATE_FILE).read_bytes())
            pid, started = int(rec.get("monitor_pid") or 0), str(rec.get("monitor_start") or "")
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if rec.get("boot_id") == this_boot and process_is(pid, started):
            live.append((rec, pid))
    if not live:
        return None
    words = {a.lstrip("/") for a in argv}
    for rec, pid in live:
        cid = str(rec.get("id") or "")
        if rec.get("name") in words or any(w and cid.startswith(w) for w in words):
            return pid
    return max(live, key=lambda x: float(x[0].get("started") or x[0].get("created") or 0))[1]
