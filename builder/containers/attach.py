"""A foreground `lamina run`: show the container's output as it comes, pass its
exit status on, forward signals, and with `-t` drive its pseudo-terminal.

The container does not depend on lamina: its monitor writes every byte of output to
the log and lamina *follows the log* (as `logs -f`), so a lamina killed mid-run
loses nothing and leaves the container to its monitor. Signals lamina receives
(INT, TERM, HUP, QUIT, USR1, USR2) are sent to the container's PID 1 (docker's
sig-proxy). With `-t` lamina receives the pty master from the monitor (SCM_RIGHTS),
puts its own terminal in raw mode (so Ctrl-C is a byte the container's line
discipline turns into SIGINT for its foreground job), copies its stdin to the master
and keeps the window size in step (SIGWINCH). With `-i` alone it copies its stdin to
a pipe, the container's stdin (as docker's attach stream): the container never holds
the user's terminal, whose modes it could change and which it could go on reading
once lamina is gone.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import termios
import time
import tty as ttymod

from lamina.builder.containers.create import check_monitor
from lamina.builder.containers.logs import read_from
from lamina.builder.containers.state import (LOG_FILE, Container, ContainerError, ContainerStore,
                                             process_is)
from lamina.builder.sandbox.container import set_window_size, window_size

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
POLL_SECONDS = 0.02


def _write(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except BrokenPipeError:
            return
        data = data[n:]


def send_signal(c: Container, sig: int) -> bool:
    """Signal the container's PID 1 (checked by pid and start time)."""
    if not process_is(c.init_pid, c.init_start):
        return False
    try:
        os.kill(c.init_pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        raise ContainerError(f"cannot signal container {c.short_id}: permission denied"
                             + (" (it runs in the user namespace of another rootless lamina, "
                                "started at the same time)" if os.environ.get("LAMINA_ROOTLESS")
                                else "")) from None


class Attached:
    def __init__(self, cs: ContainerStore, cid: str, master_sock: socket.socket | None,
                 monitor_pid: int = 0, interactive: bool = False,
                 stdin_pipe: int | None = None) -> None:
        self.cs = cs
        self.cid = cid
        self.master_sock = master_sock
        self.monitor_pid = monitor_pid
        self.interactive = interactive
        self.master: int | None = None
        self.stdin_pipe = stdin_pipe  # write end of the container's stdin (-i without -t)
        self.stdin_pending = b""      # read from our stdin, not yet taken by the container
        if stdin_pipe is not None:
            os.set_blocking(stdin_pipe, False)  # a container that does not read never stalls us
        self.pending: list[int] = []
        self.record: Container | None = None
        self.spawned = time.monotonic()  # check_monitor's start deadline counts from here

    def run(self) -> int:
        old = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        old_winch = signal.signal(signal.SIGWINCH, self._on_winch)
        saved_tty = None
        stdin_open = self.master_sock is not None and self.interactive
        try:
            if stdin_open and os.isatty(0):
                saved_tty = termios.tcgetattr(0)
                ttymod.setraw(0)
            offset = 0
            log = self.cs.path(self.cid) / LOG_FILE
            while True:
                if self.monitor_pid:
                    check_monitor(self.cs, self.cid, self.monitor_pid, self.spawned)
                record = self.cs.reconcile(self.cs.read(self.cid) or self.record)
                if record is None:
                    return 125
                self.record = record
                if self.master_sock is not None and self.master is None \
                        and record.status != "created":
                    self._receive_master()
                self._deliver()
                records, offset = read_from(log, offset)
                for r in records:
                    _write(2 if r.stream == "stderr" else 1, r.data)
                if record.status == "exited":
                    records, offset = read_from(log, offset)
                    for r in records:
                        _write(2 if r.stream == "stderr" else 1, r.data)
                    if record.error:
                        if saved_tty is not None:
                            termios.tcsetattr(0, termios.TCSADRAIN, saved_tty)
                            saved_tty = None
                        print(f"lamina: {record.error}", file=sys.stderr)
                    return record.exit_code if record.exit_code is not None else 125
                if self.stdin_pipe is not None:
                    self._feed_stdin_pipe()
                elif stdin_open and self.master is not None:
                    ready, _, _ = select.select([0], [], [], POLL_SECONDS)
                    if ready:
                        data = os.read(0, 65536)
                        if data:
                            _write(self.master, data)
                        else:
                            stdin_open = False
                            _write(self.master, b"\x04")  # EOF to a canonical-mode reader
                else:
                    time.sleep(POLL_SECONDS)
        finally:
            if saved_tty is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved_tty)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.signal(signal.SIGWINCH, old_winch)
            if self.master is not None:
                os.close(self.master)
            if self.stdin_pipe is not None:
                os.close(self.stdin_pipe)
            if self.master_sock is not None:
                self.master_sock.close()

    def _feed_stdin_pipe(self) -> None:
        """One turn of copying our stdin into the container's (waits at most
        POLL_SECONDS, never for a container that does not read)."""
        pending = self.stdin_pending
        ready, writable, _ = select.select([] if pending else [0],
                                           [self.stdin_pipe] if pending else [], [], POLL_SECONDS)
        try:
            if writable:
                self.stdin_pending = pending[os.write(self.stdin_pipe, pending):]
            elif ready:
                self.stdin_pending = os.read(0, 65536)
                if not self.stdin_pending:  # EOF: the container reads EOF too
                    raise BrokenPipeError
        except BlockingIOError:
            pass
        except BrokenPipeError:  # or the container closed its stdin: nothing more to give
            os.close(self.stdin_pipe)
            self.stdin_pipe, self.stdin_pending = None, b""

    def _receive_master(self) -> None:
        self.master_sock.settimeout(5)
        try:
            msg, fds, _, _ = socket.recv_fds(self.master_sock, 16, 1)
        except (OSError, socket.timeout):
            msg, fds = b"", []
        if fds:
            self.master = fds[0]
            self._on_winch()
        self.master_sock.close()
        self.master_sock = None if not fds else self.master_sock

    def _on_signal(self, sig, frame) -> None:
        self.pending.append(sig)

    def _on_winch(self, *args) -> None:
        if self.master is None:
            return
        for fd in (0, 1, 2):
            if os.isatty(fd):
                size = window_size(fd)
                if size:
                    set_window_size(self.master, *size)
                return

    def _deliver(self) -> None:
        while self.pending and self.record is not None and self.record.status == "running":
            send_signal(self.record, self.pending.pop(0))


def terminal_size() -> tuple[int, int] | None:
    for fd in (0, 1, 2):
        if os.isatty(fd):
            return window_size(fd)
    return None


def relay_pipes(pid: int, stdin: int | None, stdout: int, stderr: int) -> int:
    """`exec` without -t: lamina's stdin to the command's pipe (`stdin`, with -i) and
    its stdout/stderr pipes to lamina's, until the child `pid` (the exec's helper)
    exits, then what the pipes already hold; its wait status. A process the command
    left running in the container keeps only these pipes, closed here - never the
    user's terminal (as docker's exec streams)."""
    outs = {stdout: 1, stderr: 2}
    pending = b""
    if stdin is not None:
        os.set_blocking(stdin, False)  # a command that does not read never stalls its output

    def close_stdin() -> None:
        nonlocal stdin, pending
        if stdin is not None:
            os.close(stdin)
        stdin, pending = None, b""

    def copy_out(ready) -> None:
        for fd in ready:
            if fd in outs:
                data = os.read(fd, 65536)
                if data:
                    _write(outs[fd], data)
                else:
                    del outs[fd]

    status = None
    try:
        while status is None:
            wanted = list(outs) + ([0] if stdin is not None and not pending else [])
            ready, writable, _ = select.select(wanted, [stdin] if pending else [], [], 0.05)
            copy_out(ready)
            if 0 in ready:
                pending = os.read(0, 65536)
                if not pending:
                    close_stdin()  # EOF: the command reads EOF too
            if writable and pending:
                try:
                    pending = pending[os.write(stdin, pending):]
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    close_stdin()
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
        while outs:  # written before the command exited; a process it left may hold them
            ready, _, _ = select.select(list(outs), [], [], 0.05)
            if not ready:
                break
            copy_out(ready)
    finally:
        close_stdin()
        for fd in (stdout, stderr):
            os.close(fd)
    return status


def relay_tty(pid: int, master: int, stdin: bool) -> int:
    """`exec -t`: lamina is the hub between its terminal and the exec's pty master
    until the child `pid` (the exec's helper) exits; its exit status."""
    saved = None
    if stdin and os.isatty(0):
        saved = termios.tcgetattr(0)
        ttymod.setraw(0)

    def winch(*args) -> None:
        size = terminal_size()
        if size:
            set_window_size(master, *size)

    old_winch = signal.signal(signal.SIGWINCH, winch)
    winch()
    status = None
    try:
        fds = [master] + ([0] if stdin else [])
        while True:
            ready, _, _ = select.select(fds, [], [], 0.1)
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if data:
                    _write(1, data)
                else:
                    fds.remove(master)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    _write(master, data)
                else:
                    fds.remove(0)
                    _write(master, b"\x04")
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                # what is left in the pty
                while True:
                    r, _, _ = select.select([master], [], [], 0.05)
                    if not r:
                        break
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    _write(1, data)
                break
            if master not in fds and not stdin:
                _, status = os.waitpid(pid, 0)
                break
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        os.close(master)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
