"""The parts of a sandbox child process that a RUN step (builder.sandbox.sandbox) and a
container (builder.sandbox.container) share: checking what is to run, reporting a
child's failure to its parent, dying with the parent, and the last step before the
command — stdio, signals, capabilities, working dir, IDs, exec.

    validate_process(argv, env, cwd, hostname, network, upper_dir, work_dir)
    describe(exc, what) -> str            # a child's exception as one line for the user
    send(channel, msg, fds=())            # one JSON message to the parent (pipe or socket)
    parent_gone(alive_r) -> bool          # arm PDEATHSIG; True if the parent already left
    set_stdio(stdin, stdout, stderr, controlling=False)
    linux.reset_signals()
    make_working_dir(cwd, uid, gid)       # a step's missing working dir, as BuildKit/runc
    exec_command(argv, env, cwd, uid, gid, groups, keep=(), ulimits=())   # never returns
    exit_code(wait_status) -> int         # 128+N for a death by signal N

A child reports with ``send`` and leaves with ``os._exit``: it never returns into
the parent's code.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import termios
from pathlib import Path
from typing import Iterable

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import linux, network as netstack, overlay, privileges
from lamina.builder.sandbox import ulimits as rlimits


def validate_process(argv, env, cwd: str, hostname: str, network: str, upper_dir: Path,
                     work_dir: Path) -> None:
    """What every sandboxed command needs: a command, a sane hostname, a known network
    mode, an absolute working dir, no NUL byte, usable overlay upper/work dirs."""
    if not argv:
        raise SandboxError("nothing to run: empty command")
    if not 0 < len(hostname.encode()) <= 64 or "\0" in hostname:
        raise SandboxError(f"invalid hostname {hostname!r} (1 to 64 bytes)")
    if network not in netstack.MODES:
        raise SandboxError(f"unknown network mode {network!r} "
                           f"(expected one of {', '.join(netstack.MODES)})")
    if not cwd.startswith("/"):
        raise SandboxError(f"working directory {cwd!r} is not an absolute path")
    if any("\0" in a for a in argv) or any("\0" in k + v or "=" in k or not k for k, v in env):
        raise SandboxError("command or environment contains a NUL byte or a bad name")
    overlay.check_upper_work(Path(upper_dir), Path(work_dir))


def describe(exc: BaseException, what: str) -> str:
    """The message a failed child sends its parent: a SandboxError as it is, an
    OSError with its path and errno text, anything else with its type."""
    if isinstance(exc, SandboxError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"{what}:{where} {linux.errno_text(exc.errno or 0)}"
    return f"{what}: {type(exc).__name__}: {exc}"


def send(channel: int | socket.socket, msg: dict, fds: Iterable[int] = ()) -> None:
    """One newline-terminated JSON message: written whole to a pipe fd, or as one
    datagram (with `fds` as SCM_RIGHTS) on a socket. A parent that is gone is no
    error: the child is about to exit anyway."""
    data = json.dumps(msg).encode() + b"\n"
    fds = list(fds)
    if isinstance(channel, socket.socket):
        try:
            if fds:
                socket.send_fds(channel, [data], fds)
            else:
                channel.send(data)
        except OSError:
            pass
        return
    while data:
        try:
            n = os.write(channel, data)
        except OSError:
            return
        data = data[n:]


def parent_gone(alive_r: int, close: bool = True) -> bool:
    """Die with the parent from now on (PR_SET_PDEATHSIG); True if it had already gone
    (EOF on `alive_r`, the read end of a pipe whose write end only the parent holds)
    before that was armed. Closes `alive_r` unless told not to."""
    linux.set_pdeathsig(signal.SIGKILL)
    poller = select.poll()
    poller.register(alive_r, select.POLLIN)
    gone = bool(poller.poll(0))
    if close:
        os.close(alive_r)
    return gone


def set_stdio(stdin: int, stdout: int, stderr: int, controlling: bool = False) -> None:
    """Make the three fds 0, 1, 2 (inheritable); `controlling`: `stdin` is a terminal
    that becomes the session's controlling terminal (the caller called setsid)."""
    if controlling:
        fcntl.ioctl(stdin, termios.TIOCSCTTY, 0)
    for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
        os.dup2(fd, target, inheritable=True)


def make_working_dir(cwd: str, uid: int, gid: int) -> None:
    """Make a step's missing working dir, in its root (after pivot_root, still root),
    as BuildKit does: its executor MkdirAll's the path cleaned as text and resolved in
    the root (fs.RootPath) and gives the dirs it made to the step's user (uid, gid:
    MkdirAllAndChown 0755); then runc, still root, MkdirAll's the process cwd as written,
    which the kernel resolves - `..` after a symlink climbs from the link's target
    (/lnk/../c with /lnk -> /a/b is /a/c, while WORKDIR made /c). What cannot be made is
    left to the chdir to report."""
    old = os.umask(0o022)
    try:
        for path, owner in ((os.path.normpath(cwd), (uid, gid)), (cwd, None)):
            missing = []
            probe = path
            while not os.path.isdir(probe) and probe not in ("/", ""):
                missing.append(probe)
                probe = os.path.dirname(probe)
            if not missing:
                continue
            try:
                os.makedirs(path, 0o755, exist_ok=True)
                for made in missing if owner else ():
                    os.chown(made, *owner)
            except OSError:
                pass
    finally:
        os.umask(old)


def exec_command(argv, env: dict, cwd: str, uid: int, gid: int, groups, keep=(),
                 alive_r: int | None = None, ulimits=()) -> None:
    """Close every fd but stdio (and `keep`, close-on-exec), reset signals, drop the
    capability bounding set to docker's, chdir, set the `ulimits` (--ulimit, while
    still privileged: builder.sandbox.ulimits), enter docker's privileges (fresh
    session keyring, no inheritable/ambient caps, seccomp, groups/gid/uid:
    builder.sandbox.privileges), exec `argv` (argv[0] looked up in env's PATH).

    `alive_r` (see parent_gone): the command must die with its parent. Changing the
    uid clears PR_SET_PDEATHSIG, so it is armed again after the ids are set, and the
    command is not started if the parent left meanwhile."""
    keep = set(keep) | ({alive_r} if alive_r is not None else set())
    for fd in os.listdir("/proc/self/fd"):
        n = int(fd)
        if n > 2 and n not in keep:
            try:
                os.close(n)
            except OSError:
                pass
    linux.reset_signals()
    os.umask(0o022)
    linux.drop_bounding_capabilities()
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise SandboxError(f"cannot change to working directory {cwd}: "
                           f"{linux.errno_text(exc.errno or 0)}") from None
    rlimits.apply(ulimits)
    privileges.enter(uid, gid, tuple(groups))
    if alive_r is not None and parent_gone(alive_r):
        raise SandboxError("the process that started the command went away")
    try:
        os.execvpe(argv[0], list(argv), env)
    except OSError as exc:
        raise SandboxError(f"cannot exec {argv[0]!r}: {linux.errno_text(exc.errno or 0)}"
                           f" (PATH={env.get('PATH', os.defpath)})") from None


def exit_code(status: int) -> int:
    """A wait status as a shell's exit code: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
