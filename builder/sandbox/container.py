"""The namespaces of a long-lived container (`lamina run`, `lamina exec`): the same
sandbox a RUN step gets (builder.sandbox.sandbox), arranged for a process that lives
on after lamina exits.

    start(spec: ContainerSpec, stdin_fd) -> Started      # in the container's monitor
    exec_in(target: ExecTarget, spec: ExecSpec) -> Exec   # `lamina exec`

How ``start`` differs from a RUN step: the caller (the per-container monitor,
builder.containers.monitor) unshares PID/IPC/UTS(/net) itself and stays outside the
container's mount namespace; its child C2 joins the container's cgroup, unshares mount
and cgroup namespaces, mounts the overlay (upper dir kept for the container's life),
/proc, /dev, /sys, /etc/hosts, /etc/resolv.conf, /etc/hostname (docker's three) and
the ``-v`` volumes (bind mounts written through to the host), pivot_roots, and
*execs the command as PID 1* (as docker: no init of lamina's in the container; the
command gets STOPSIGNAL, and the kernel kills the rest when it exits). With a TTY, C2
opens the pseudo-terminal in the container's own devpts instance, makes it the
controlling terminal of a new session and hands the master to the monitor over a
unix socket (SCM_RIGHTS). Capabilities, seccomp, keyring, masked paths: exactly
those of a RUN (builder.sandbox.privileges, rootmounts, devices).

``exec_in`` joins the cgroup and the namespaces (setns: ipc, uts, net, cgroup, pid,
mnt) of a running container's PID 1, forks the command into its PID namespace and
applies the same privileges. The command never gets lamina's own stdio: a pty (``-t``)
or pipes that lamina relays (docker's exec streams), so nothing it leaves running in
the container holds the user's terminal once exec returns (it would read what the
user types next, or change the terminal's modes).

What a RUN step's child does too (checks, error reports, the final exec step) is
builder.sandbox.childproc.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import os
import signal
import socket
import struct
import termios
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import linux, network as netstack, overlay, privileges
from lamina.builder.sandbox.cgroups import Limits, StepCgroup
from lamina.builder.sandbox.childproc import (describe, exec_command, exit_code, parent_gone, send,
                                              set_stdio, validate_process)
from lamina.builder.sandbox.devices import seal_mounts
from lamina.builder.sandbox.mountpoints import StubRecorder
from lamina.builder.sandbox.privateroot import make_private
from lamina.builder.sandbox.rootmounts import bind, mount_system
from lamina.builder.sandbox.sandbox import hosts_file

TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
NAMESPACES = ("ipc", "uts", "net", "cgroup", "pid", "mnt")  # setns order: mnt last

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass(frozen=True)
class Volume:
    """`-v HOST:CTR[:ro]`: a host path bind-mounted at an image path (writes reach the host)."""

    source: Path
    target: str
    readonly: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    lower_dirs: tuple[Path, ...]
    upper_dir: Path
    work_dir: Path
    run_dir: Path          # host dir for the merged mount point and the injected /etc files
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    hostname: str = "localhost"
    network: Literal["default", "none", "host"] = "default"
    volumes: tuple[Volume, ...] = ()
    tty: bool = False
    tty_size: tuple[int, int] | None = None   # rows, columns
    limits: Limits = Limits()
    # the overlay is already mounted on run_dir/root in the monitor's own mount
    # namespace (fuse-overlayfs: builder.containers.fuseroot); C2 only uses it
    root_mounted: bool = False


@dataclass
class Started:
    """What the monitor holds of a started container."""

    pid: int                    # host pid of the container's PID 1
    stdout: int | None          # read ends (no TTY)
    stderr: int | None
    master: int | None          # pty master (TTY)
    stubs: dict = field(default_factory=dict)
    cgroup: StepCgroup | None = None
    network: netstack.UserNetwork | None = None
    alive: int | None = None    # held open by the monitor: its EOF tells PID 1 it is gone

    def close(self) -> None:
        """After PID 1 is reaped: stop the network helper, remove the cgroup."""
        if self.network is not None:
            self.network.stop()
            self.network = None
        if self.cgroup is not None:
            try:
                self.cgroup.close()
            finally:
                self.cgroup = None


def validate(spec: ContainerSpec) -> None:
    validate_process(spec.argv, spec.env, spec.cwd, spec.hostname, spec.network,
                     spec.upper_dir, spec.work_dir)
    for v in spec.volumes:
        if not v.target.startswith("/"):
            raise SandboxError(f"volume target {v.target!r} is not an absolute path")
        if not Path(v.source).exists():
            raise SandboxError(f"volume source {v.source} does not exist")


# --- start (in the monitor) -------------------------------------------------------

def start(spec: ContainerSpec, stdin_fd: int | None = None) -> Started:
    """Create the namespaces and start PID 1. The calling process (the monitor) is
    moved into the new network/IPC/UTS namespaces and its next child is PID 1 of the
    new PID namespace; its mount namespace stays the host's (or, with `root_mounted`,
    the private one in which it mounted the container's fuse-overlayfs root)."""
    validate(spec)
    privileges.prepare()
    run_dir = Path(spec.run_dir)
    (run_dir / "root").mkdir(parents=True, exist_ok=True)
    hosts = hosts_file(spec.hostname).encode()
    if spec.network == "host":  # docker: a copy of the host's (libnetwork's originHostsPath)
        try:
            hosts = Path("/etc/hosts").read_bytes()
        except OSError:
            hosts = b""
    for name, data in (("hosts", hosts),
                       ("resolv.conf", netstack.resolv_conf(spec.network)),
                       ("hostname", spec.hostname.encode() + b"\n")):
        (run_dir / name).write_bytes(data)
        (run_dir / name).chmod(0o644)
    cgroup = StepCgroup.create(spec.limits)
    stack = None
    try:
        stack = netstack.UserNetwork.prepare() if spec.network == "default" else None
        flags = linux.CLONE_NEWPID | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS
        if netstack.own_namespace(spec.network):
            flags |= linux.CLONE_NEWNET
        linux.unshare(flags)
        if stack is not None:
            stack.attach()
        return _fork_init(spec, stdin_fd, cgroup, stack)
    except BaseException:
        if stack is not None:
            stack.stop()
        cgroup.close()
        raise


def _fork_init(spec: ContainerSpec, stdin_fd: int | None, cgroup: StepCgroup,
               stack) -> Started:
    ctl_parent, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    out = err = None
    if not spec.tty:
        out, err = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)  # EOF in the child: the monitor is gone
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            gc.disable()
            ctl_parent.close()
            os.close(alive_w)
            if out is not None:
                os.close(out[0])
                os.close(err[0])
            _init(spec, stdin_fd, cgroup, ctl_child, out[1] if out else None,
                  err[1] if err else None, alive_r)
        except BaseException as exc:  # noqa: BLE001 - the child must never return
            send(ctl_child, {"error": describe(exc, "container setup")})
            code = 127 if "cannot exec" in str(exc) else 125
        finally:
            os._exit(code)
    ctl_child.close()
    os.close(alive_r)
    if out is not None:
        os.close(out[1])
        os.close(err[1])
    started = Started(pid=pid, stdout=out[0] if out else None, stderr=err[0] if err else None,
                      master=None, cgroup=cgroup, network=stack, alive=alive_w)
    errors: list[str] = []
    with ctl_parent:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(ctl_parent, 1 << 20, 4)
            except InterruptedError:
                continue
            if not data:
                break
            msg = json.loads(data)
            if "stubs" in msg:
                started.stubs = msg["stubs"]
            if "master" in msg and fds:
                started.master = fds[0]
            if "error" in msg:
                errors.append(msg["error"])
    if errors:
        for fd in (started.stdout, started.stderr, started.master):
            if fd is not None:
                os.close(fd)
        os.waitpid(pid, 0)
        started.close()
        raise SandboxError(errors[0])
    return started


def _init(spec: ContainerSpec, stdin_fd: int | None, cgroup: StepCgroup,
          ctl: socket.socket, out_w: int | None, err_w: int | None, alive_r: int) -> None:
    """C2, PID 1: build the root, pivot into it, set up stdio, exec the command."""
    if parent_gone(alive_r, close=False):  # EOF: the monitor died before PDEATHSIG was armed
        raise SandboxError("the container's monitor went away during setup")
    cgroup.join()
    linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWCGROUP)
    make_private(root_mount=True)
    run_dir = Path(spec.run_dir)
    root = run_dir / "root"
    recorder = None
    try:
        if not spec.root_mounted:
            overlay.mount_overlay(tuple(Path(p) for p in spec.lower_dirs), Path(spec.upper_dir),
                                  Path(spec.work_dir), root, run_dir)
        recorder = StubRecorder(str(root))
        mount_system(recorder, run_dir / "hosts", run_dir / "resolv.conf")
        bind(run_dir / "hostname", recorder.ensure("/etc/hostname", "file"), readonly=False)
        for v in spec.volumes:
            kind = "dir" if Path(v.source).is_dir() else "file"
            bind(v.source, recorder.ensure(v.target, kind), readonly=v.readonly)
    finally:
        if recorder is not None:
            send(ctl, {"stubs": recorder.report()})
    seal_mounts(root)
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")
    linux.sethostname(spec.hostname)
    if netstack.own_namespace(spec.network):
        linux.interface_up("lo")
    if not os.path.isdir(spec.cwd):  # docker creates a missing working dir
        try:
            os.makedirs(spec.cwd, 0o755, exist_ok=True)
            os.chown(spec.cwd, spec.uid, spec.gid)
        except OSError:
            pass
    os.setsid()
    if spec.tty:
        master, slave = open_pty()
        if spec.tty_size:
            set_window_size(master, *spec.tty_size)
        send(ctl, {"master": True}, (master,))
        os.close(master)
        set_stdio(slave, slave, slave, controlling=True)
    else:
        stdin = stdin_fd if stdin_fd is not None else os.open("/dev/null", os.O_RDONLY)
        set_stdio(stdin, out_w, err_w)
    exec_command(spec.argv, dict(spec.env), spec.cwd, spec.uid, spec.gid, spec.groups,
                 keep=(ctl.fileno(),), alive_r=alive_r, ulimits=spec.limits.ulimits)


# --- terminals (PID 1 and exec) ---------------------------------------------------

def open_pty() -> tuple[int, int]:
    """A pseudo-terminal of the devpts instance mounted at /dev/pts (ours after
    pivot_root / setns): (master, slave), both close-on-exec."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    return master, slave


def set_window_size(fd: int, rows: int, cols: int) -> None:
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError:
        pass


def window_size(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


# --- exec (in lamina) --------------------------------------------------------------

@dataclass(frozen=True)
class ExecTarget:
    pid: int                        # host pid of the container's PID 1
    cgroup_dirs: tuple[str, ...]    # its cgroup dirs (cgroup.procs joined first)


@dataclass(frozen=True)
class ExecSpec:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    tty: bool = False
    interactive: bool = False
    tty_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Exec:
    """A started exec: X's pid (its exit status is the command's), and lamina's ends
    of the command's stdio: the pty master (TTY), else pipes (stdin's only with -i)."""

    pid: int
    master: int | None = None
    stdin: int | None = None    # write end
    stdout: int | None = None   # read ends
    stderr: int | None = None


def _stdio_pipes(spec: ExecSpec) -> tuple[tuple, tuple]:
    """(the command's ends (stdin, stdout, stderr), lamina's ends) of the pipes of an
    exec without a TTY; stdin None (the command reads /dev/null) without -i."""
    if spec.tty:
        return (), ()
    inp = os.pipe2(os.O_CLOEXEC) if spec.interactive else None
    out, err = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
    return ((inp[0] if inp else None, out[1], err[1]),
            (inp[1] if inp else None, out[0], err[0]))


def exec_in(target: ExecTarget, spec: ExecSpec) -> Exec:
    """Fork X, which enters the container and forks the command into its PID
    namespace; X's exit status is the command's (`wait_exec`)."""
    if not spec.argv:
        raise SandboxError("nothing to run: empty command")
    privileges.prepare()
    ns_fds = []
    try:
        for name in NAMESPACES:
            ns_fds.append(os.open(f"/proc/{target.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        for fd in ns_fds:
            os.close(fd)
        raise SandboxError(f"cannot enter the container's namespaces: "
                           f"{linux.errno_text(exc.errno or 0)}") from None
    ctl_parent, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs, ours = _stdio_pipes(spec)
    pid = os.fork()
    if pid == 0:
        code = 126
        try:
            gc.disable()
            ctl_parent.close()
            for fd in ours:
                if fd is not None:
                    os.close(fd)
            code = _exec_child(target, spec, ns_fds, ctl_child, theirs)
        except BaseException as exc:  # noqa: BLE001
            send(ctl_child, {"error": describe(exc, "exec")})
        finally:
            os._exit(code)
    for fd in ns_fds:
        os.close(fd)
    for fd in theirs:
        if fd is not None:
            os.close(fd)
    ctl_child.close()
    master = None
    errors = []
    with ctl_parent:
        while True:
            data, fds, _, _ = socket.recv_fds(ctl_parent, 65536, 4)
            if not data:
                break
            msg = json.loads(data)
            if "master" in msg and fds:
                master = fds[0]
            if "error" in msg:
                errors.append(msg["error"])
            if "started" in msg:
                break
    if errors:
        os.waitpid(pid, 0)
        for fd in ours:
            if fd is not None:
                os.close(fd)
        raise SandboxError(errors[0])
    if spec.tty:
        return Exec(pid, master=master)
    return Exec(pid, stdin=ours[0], stdout=ours[1], stderr=ours[2])


def _exec_child(target: ExecTarget, spec: ExecSpec, ns_fds: list[int],
                ctl: socket.socket, stdio: tuple = ()) -> int:
    for d in target.cgroup_dirs:
        try:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass
    for name, fd in zip(NAMESPACES, ns_fds):
        if _libc.setns(fd, 0) != 0:
            err = ctypes.get_errno()
            raise SandboxError(f"setns({name}): {linux.errno_text(err)}")
        os.close(fd)
    master = slave = None
    if spec.tty:
        master, slave = open_pty()
        if spec.tty_size:
            set_window_size(master, *spec.tty_size)
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)  # EOF in the child: this process is gone
    child = os.fork()  # the first process of ours in the container's PID namespace
    if child == 0:
        try:
            # until execve, nothing in the container may read this process's memory or
            # fds (/proc/PID/fd: the control socket) while it drops its privileges
            linux.prctl(linux.PR_SET_DUMPABLE, 0)
            os.close(alive_w)
            if parent_gone(alive_r, close=False):
                raise SandboxError("lamina exec went away")
            # a session of its own, as runc gives every process it starts: else the
            # user's terminal stays its controlling terminal (/dev/tty names it), and
            # TIOCSTI on it types commands into the user's shell once exec returns
            os.setsid()
            if spec.tty:
                set_stdio(slave, slave, slave, controlling=True)
            else:
                stdin, stdout, stderr = stdio
                if stdin is None:
                    stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                set_stdio(stdin, stdout, stderr)
            exec_command(spec.argv, dict(spec.env), spec.cwd, spec.uid, spec.gid, spec.groups,
                         keep=(ctl.fileno(),), alive_r=alive_r)
        except BaseException as exc:  # noqa: BLE001
            send(ctl, {"error": describe(exc, "exec")})
        finally:
            os._exit(126)
    os.close(alive_r)  # alive_w stays open until this process exits
    for fd in stdio:  # the command holds them now: EOF once it and its children close them
        if fd is not None:
            os.close(fd)
    if master is not None:
        send(ctl, {"master": True}, (master,))
        os.close(master)
        os.close(slave)
    ctl.close()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda s, f, c=child: _forward(c, s))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    return exit_code(status)


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
