"""What lamina does to an existing container: wait for it, stop it (its STOPSIGNAL,
then SIGKILL after the timeout, as docker), kill it, remove it, exec into it.

Signals go straight to the container's PID 1 (a host pid, checked with its start
time so a recycled pid is never hit); the monitor notices the exit and records it.
"""

from __future__ import annotations

import os
import signal
import time

from lamina.builder.containers.attach import send_signal
from lamina.builder.containers.create import signal_number
from lamina.builder.containers.state import (Container, ContainerError, ContainerStore, boot_id,
                                             process_is)

DEFAULT_STOP_TIMEOUT = 10


def wait_exited(cs: ContainerStore, c: Container, timeout: float | None) -> Container:
    """Poll until the record says exited (or the timeout passes): the monitor writes
    it once PID 1 is reaped and the cgroup removed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = cs.reconcile(cs.read(c.id) or c)
        if current.status != "running" and current.status != "created":
            return current
        if current.status == "created" and not current.monitor_pid:
            return current
        if deadline is not None and time.monotonic() >= deadline:
            return current
        time.sleep(0.02)


def _wait_monitor_gone(c: Container, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while process_is(c.monitor_pid, c.monitor_start) and time.monotonic() < deadline:
        time.sleep(0.02)


def stop(cs: ContainerStore, c: Container, timeout: int | None = None) -> Container:
    if c.status != "running":
        return c
    send_signal(c, signal_number(c.stop_signal))
    done = wait_exited(cs, c, DEFAULT_STOP_TIMEOUT if timeout is None else timeout)
    if done.status == "running":
        send_signal(done, signal.SIGKILL)
        done = wait_exited(cs, c, 30)
    return done


def kill(cs: ContainerStore, c: Container, sig: str | int = "SIGKILL") -> None:
    if c.status != "running":
        raise ContainerError(f"cannot kill container: {c.short_id}: container "
                             f"{c.id} is not running")
    number = signal_number(sig)
    if not send_signal(c, number):
        raise ContainerError(f"cannot kill container: {c.short_id}: it is not running")


def remove(cs: ContainerStore, c: Container, force: bool = False) -> None:
    if c.status == "running":
        if not force:
            raise ContainerError(
                f"cannot remove container \"/{c.name}\": container is running: stop the "
                "container before removing or force remove")
        send_signal(c, signal.SIGKILL)
        c = wait_exited(cs, c, 30)
        if c.status == "running":
            raise ContainerError(f"container {c.short_id} did not exit after SIGKILL")
    if c.boot_id == boot_id():
        _wait_monitor_gone(c, 10)  # it may still be writing the record or removing (--rm)
    if cs.path(c.id).is_dir():
        cs.remove(c)


def exec_in(c: Container, argv, *, tty: bool, interactive: bool, env=(), user=None,
            workdir=None, layer_dirs=()) -> int:
    """`lamina exec`: run `argv` in the running container `c`; its exit status."""
    from lamina.builder.containers.attach import terminal_size
    from lamina.builder.containers.create import _env_item, merge_env, process_groups
    from lamina.builder.containers.attach import relay_pipes, relay_tty
    from lamina.builder.sandbox.container import ExecSpec, ExecTarget, exec_in as enter
    from lamina.builder.sandbox.users import resolve_user_in_layers

    if c.status != "running" or not process_is(c.init_pid, c.init_start):
        raise ContainerError(f"container {c.short_id} is not running")
    items = [x for e in env for x in _env_item(e, "-e")]
    environ = merge_env(c.env, items)
    uid, gid, groups = c.uid, c.gid, c.groups
    if user is not None:  # looked up in the container's files: upper dir over the image
        who = resolve_user_in_layers(tuple(layer_dirs), user)
        uid, gid, groups = who.uid, who.gid, process_groups(who)
    spec = ExecSpec(argv=tuple(argv), env=tuple(tuple(e.split("=", 1)) for e in environ),
                    cwd=workdir or c.workdir, uid=uid, gid=gid, groups=tuple(groups), tty=tty,
                    interactive=interactive, tty_size=terminal_size() if tty else None)
    target = ExecTarget(pid=c.init_pid, cgroup_dirs=c.cgroup_dirs)
    started = enter(target, spec)
    pid = started.pid
    if started.master is not None:
        return relay_tty(pid, started.master, stdin=interactive)
    forwarded = {}

    def forward(sig, frame):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        forwarded[sig] = signal.signal(sig, forward)
    try:
        status = relay_pipes(pid, started.stdin, started.stdout, started.stderr)
    finally:
        for sig, h in forwarded.items():
            signal.signal(sig, h)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
