"""The per-container monitor (what conmon is to podman): one small process per
container, started detached by `lamina run` (builder.containers.create.spawn_monitor)
and living exactly as long as the container.

    python -m lamina.builder.containers.monitor ROOT ID [--stdin=3] [--attach=4]

It records itself (pid, start time, boot id) in the container's state, holds a store
lease on the image (besides the hold every container has from `create` to `rm`:
builder.containers.imagehold), mounts the container's fuse-overlayfs root in a mount
namespace of its own when the record says so (builder.containers.fuseroot), starts the
container (builder.sandbox.container.start: its next child is the container's PID 1,
with PDEATHSIG, so killing the monitor kills the container), records it running,
writes its stdout/stderr (or the pty's output) to the log file, reaps PID 1, removes
its cgroup and network helper, unmounts (flushes) a fuse root, and records the exit
status. With `--rm` it removes
the container afterwards, once no attached `lamina run` holds attach.lock.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path

from lamina.builder.containers.logs import LogWriter
from lamina.builder.containers.state import (LOG_FILE, ContainerStore, boot_id, start_time)
from lamina.store.locks import flocked

DRAIN_SECONDS = 2.0


def main(argv: list[str]) -> int:
    root, cid = Path(argv[0]), argv[1]
    opts = dict(a[2:].split("=", 1) for a in argv[2:] if a.startswith("--") and "=" in a)
    stdin_fd = int(opts["stdin"]) if "stdin" in opts else None
    attach_fd = int(opts["attach"]) if "attach" in opts else None
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    cs = ContainerStore(root)
    me = os.getpid()
    record = cs.update(cid, monitor_pid=me, monitor_start=start_time(me), boot_id=boot_id())
    if record is None:
        return 1
    code = 125
    error = ""
    try:
        code = _supervise(root, cs, record, stdin_fd, attach_fd)
    except BaseException as exc:  # noqa: BLE001 - said in the record, for `lamina run`
        error = f"the container's monitor failed: {type(exc).__name__}: {exc}"
        traceback.print_exc()  # to monitor.err
    finally:
        current = cs.read(cid)
        if current is not None and current.status != "exited":
            cs.update(cid, status="exited", exit_code=code, finished=time.time(),
                      error=current.error or error)
    record = cs.read(cid)
    if record is not None and record.auto_remove:
        d = cs.path(cid)
        with flocked(d / "attach.lock"):  # an attached run has read the exit status
            cs.remove(record)
    return 0


def _supervise(root: Path, cs: ContainerStore, record, stdin_fd, attach_fd) -> int:
    from lamina.builder.containers.fuseroot import end_root, mount_root
    from lamina.builder.containers.imagehold import container_image
    from lamina.builder.errors import SandboxError, BuildError
    from lamina.builder.sandbox.container import ContainerSpec, Volume, start
    from lamina.builder.sandbox.limits import Limits
    from lamina.builder.sandbox.ulimits import parse_ulimits
    from lamina.builder.sandbox.overlay import empty_dir
    from lamina.store.errors import StoreError
    from lamina.store.store import Store

    d = cs.path(record.id)
    log = LogWriter(d / LOG_FILE)
    fuse = None  # the fuse-overlayfs root, mounted here (builder.containers.fuseroot)
    try:
        with Store(root) as store, store.lease() as lease:
            try:
                with store.writing():
                    image = container_image(store, record)
                    lease.hold(layers=[l.diff_id for l in image.layers],
                               images=[record.manifest])
                lowers = tuple(store.layer_dir(l.diff_id) for l in reversed(image.layers))
                if record.overlay == "fuse":
                    fuse = mount_root(lowers, d / "upper", d / "work", d / "run")
                spec = ContainerSpec(
                    lower_dirs=lowers, upper_dir=d / "upper", work_dir=d / "work",
                    run_dir=d / "run", argv=record.argv,
                    env=tuple(tuple(e.split("=", 1)) for e in record.env if "=" in e),
                    cwd=record.workdir, uid=record.uid, gid=record.gid, groups=record.groups,
                    hostname=record.hostname, network=record.network,
                    volumes=tuple(Volume(Path(s), t, ro) for s, t, ro in record.volumes),
                    tty=record.tty, tty_size=record.tty_size, root_mounted=fuse is not None,
                    limits=Limits(ulimits=parse_ulimits(record.ulimits)))
                started = start(spec, stdin_fd)
            except (SandboxError, BuildError, StoreError, OSError) as exc:
                message = str(exc) if not isinstance(exc, OSError) else \
                    f"{exc.strerror or exc} {exc.filename or ''}".strip()
                code = exit_code_for(message)
                end_root(fuse)
                fuse = None
                cs.update(record.id, status="exited", exit_code=code, error=message,
                          finished=time.time(), started=time.time())
                return code
            if stdin_fd is not None:
                os.close(stdin_fd)
            cs.update(record.id, status="running", started=time.time(), init_pid=started.pid,
                      init_start=start_time(started.pid), stubs=started.stubs,
                      cgroup_dirs=tuple(str(p) for p in dict.fromkeys(
                          started.cgroup.dirs.values())) if started.cgroup else ())
            if attach_fd is not None:
                _hand_master(attach_fd, started.master)
            try:
                code = _relay(started, log)
            finally:
                try:
                    started.close()
                except SandboxError as exc:
                    print(f"lamina monitor: {exc}", file=sys.stderr)
                flushed = end_root(fuse)  # before the work dir goes, and before "exited"
                fuse = None
                try:
                    empty_dir(d / "work")
                except OSError:
                    pass
            if flushed:
                print(f"lamina monitor: {flushed}", file=sys.stderr)
            cs.update(record.id, status="exited", exit_code=code, finished=time.time(),
                      **({"error": flushed} if flushed else {}))
            return code
    finally:
        end_root(fuse)  # an error of the monitor's own: still never a daemon left
        log.close()


def exit_code_for(message: str) -> int:
    """docker's codes for a container that could not start: 127 command not found,
    126 found but not runnable (permission, a bad working dir), 125 anything else."""
    if "cannot exec" in message:
        return 127 if "No such file" in message or "not found" in message else 126
    return 126 if "working directory" in message else 125


def _hand_master(attach_fd: int, master: int | None) -> None:
    import socket

    try:
        sock = socket.socket(fileno=attach_fd)
    except OSError:
        return
    with sock:
        try:
            if master is not None:
                socket.send_fds(sock, [b"m"], [master])
            else:
                sock.send(b"-")
        except OSError:
            pass  # the attached lamina is gone: the log still has everything


def _relay(started, log: LogWriter) -> int:
    """Copy output to the log until PID 1 has exited and its output is drained."""
    streams: dict[int, str] = {}
    if started.master is not None:
        streams[started.master] = "stdout"
    else:
        streams[started.stdout] = "stdout"
        streams[started.stderr] = "stderr"
    pidfd = os.pidfd_open(started.pid)
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    code = None
    deadline = None
    try:
        while streams:
            timeout = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            events = poller.poll(timeout)
            if not events and deadline is not None:
                break  # an escaped holder of the pipe: stop waiting for EOF
            for fd, _ in events:
                if fd == pidfd:
                    _, status = os.waitpid(started.pid, 0)
                    c = os.waitstatus_to_exitcode(status)
                    code = 128 - c if c < 0 else c
                    poller.unregister(pidfd)
                    deadline = time.monotonic() + DRAIN_SECONDS
                    continue
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the last slave of the pty is closed
                    data = b""
                if data:
                    log.write(streams[fd], data)
                else:
                    poller.unregister(fd)
                    os.close(fd)
                    del streams[fd]
        if code is None:
            _, status = os.waitpid(started.pid, 0)
            c = os.waitstatus_to_exitcode(status)
            code = 128 - c if c < 0 else c
    finally:
        os.close(pidfd)
        for fd in streams:
            os.close(fd)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
