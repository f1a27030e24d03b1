"""The namespace sandbox that executes one RUN step.

    run(spec: SandboxSpec, on_output: Callable[[bytes], None]) -> int

``SandboxSpec`` (frozen) says what to run and on which layers:

- ``lower_dirs``: the parent layers' dirs, top-most first; may be empty (scratch).
- ``upper_dir``: a fresh empty dir; afterwards it holds the step's diff in overlay
  form (whiteout = char 0/0, opaque dir = ``trusted.overlay.opaque=y``), with the
  mount points the sandbox had to create removed and overlay bookkeeping xattrs
  stripped (see builder.mountpoints, builder.overlay.finalize_upper).
- ``work_dir``: overlay workdir, same filesystem as upper_dir; emptied afterwards.
- ``argv`` (exec'd as is, argv[0] looked up in the PATH of ``env``), ``env`` (the
  complete environment, nothing of the host's), ``cwd`` (must exist in the image),
  ``uid``/``gid``/``groups``, ``hostname`` (BuildKit's ``buildkitsandbox`` by default;
  /etc/hosts maps it to 127.0.0.1 as BuildKit writes it), ``network`` ("default": own network
  namespace with outbound access through slirp4netns, see builder.sandbox.network;
  "none": own network namespace with only lo, up; "host": the host's), ``mounts`` (RUN --mount:
  ``BindMount``, ``TmpfsMount``, ``CacheMount``, ``SecretMount``, ``LayerMount``: a path
  of another stage's or image's merged layers).

The mount types and the mounting of the root live in builder.rootmounts (re-exported
here), the mount-point bookkeeping in builder.mountpoints, overlayfs in builder.overlay.

``run`` returns the command's exit status (128+N if killed by signal N), streaming
its stdout and stderr merged, live, to ``on_output``; stdin is /dev/null. It raises
``SandboxError`` when the sandbox cannot be set up or the command cannot be
exec'd (missing executable, missing working dir).

How: the lamina process (P) forks C1, which starts a new session, arms
PR_SET_PDEATHSIG, unshares mount/PID/IPC/UTS(/net) namespaces (for the default
network first forking the slirp4netns helper in the host's netns and, after the
unshare, waiting until it has configured tap0: builder.sandbox.network; C1 stops and
reaps it after the step), makes / rprivate and forks C2 = PID 1 of the new namespace. C2 mounts the overlay (new mount API,
``lowerdir+``; classic mount(2) as fallback), /proc (with docker's read-only and
masked paths), a minimal /dev (tmpfs, host nodes null zero full random urandom tty
bind-mounted, devpts newinstance + ptmx link, shm, fd/std* links), /sys read-only,
/etc/hosts and /etc/resolv.conf as read-only bind mounts (never written to the
upper dir; no /etc/hostname, as in BuildKit), then the RUN --mount mounts; it pivot_roots into the
merged dir, detaches the old root, sets the hostname, brings lo up, forks C3 for
the command and stays as a tiny init that reaps zombies and exits with C3's status
— which makes the kernel kill every process left in the namespace. C3 drops the
capability bounding set to docker's default set, chdirs, joins a fresh session
keyring, clears inheritable and ambient capabilities, installs docker's seccomp
filter, sets groups/gid/uid and execs (builder.sandbox.privileges). Each process
dies with its parent (PDEATHSIG); every mount lives only in
the private mount namespace, so it is gone when the namespace's processes are.
On any exception in P (KeyboardInterrupt, an error raised by ``on_output``) P
SIGKILLs C2, waits for C1 (whose wait for C2 returns only once the namespace is
empty), cleans up and re-raises.
"""

from __future__ import annotations

import gc
import json
import os
import select
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

from lamina.builder.sandbox import (fuseoverlay, fuseviews, linux, network as netstack, overlay,
                                    privileges)
from lamina.builder.errors import SandboxError
from lamina.builder.sandbox.cgroups import Limits, StepCgroup
from lamina.builder.sandbox.childproc import (describe, exec_command, exit_code, make_working_dir,
                                              parent_gone, send, validate_process)
from lamina.builder.sandbox.devices import seal_mounts
from lamina.builder.sandbox.mountpoints import RUNC_MOUNT_POINTS, StubRecorder, remove_stubs
from lamina.builder.sandbox.privateroot import make_private
from lamina.builder.sandbox.rootmounts import (BindMount, CacheMount, LayerMount, Mount, SecretMount,
                                TmpfsMount, mount_system, mount_user)

__all__ = ["BindMount", "CacheMount", "LayerMount", "Mount", "SandboxSpec", "SecretMount",
           "TmpfsMount", "run", "OVERLAY_API"]

# "auto" | "new" | "classic": which overlay mount API to use (tests force each).
OVERLAY_API = "auto"
INIT_TITLE = b"lamina-init"


@dataclass(frozen=True)
class SandboxSpec:
    lower_dirs: tuple[Path, ...]
    upper_dir: Path
    work_dir: Path
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    hostname: str = "buildkitsandbox"  # BuildKit's executor/oci defaultHostname
    network: Literal["default", "none", "host"] = "none"
    mounts: tuple[Mount, ...] = ()
    limits: Limits = Limits()  # the step's cgroup (builder.sandbox.cgroups)


@dataclass(frozen=True)
class _Plan:
    run_dir: Path
    root: Path          # merged mount point (in the child's namespace only)
    scratch: Path       # tmpfs mount point for secrets / discarded writes
    hosts: Path
    resolv: Path
    cgroup: StepCgroup | None = None  # joined by C1 (builder.sandbox.cgroups)
    fuse: bool = False  # fuse-overlayfs, mounted and flushed by C1 (builder.sandbox.fuseoverlay)
    started: float = 0.0  # time.time() before the step's mount (fuseupper.convert_upper)


# --- parent side -----------------------------------------------------------------

def _validate(spec: SandboxSpec) -> None:
    validate_process(spec.argv, spec.env, spec.cwd, spec.hostname, spec.network,
                     spec.upper_dir, spec.work_dir)
    for d in spec.lower_dirs:
        if not Path(d).is_dir():
            raise SandboxError(f"layer dir {d} does not exist or is not a directory")
    for m in spec.mounts:
        if not m.target.startswith("/"):
            raise SandboxError(f"mount target {m.target!r} is not an absolute path")
        if isinstance(m, (BindMount, CacheMount, SecretMount)) and not Path(m.source).exists():
            raise SandboxError(f"mount source {m.source} (for {m.target}) does not exist")
        if isinstance(m, CacheMount) and not Path(m.source).is_dir():
            raise SandboxError(f"cache mount source {m.source} is not a directory")
        if isinstance(m, SecretMount) and not Path(m.source).is_file():
            raise SandboxError(f"secret source {m.source} is not a regular file")
        if isinstance(m, LayerMount) and not all(Path(d).is_dir() for d in m.lower_dirs):
            raise SandboxError(f"a layer dir of {m.what or 'the mount source'} is missing")


def hosts_file(hostname: str) -> str:
    """/etc/hosts of a RUN, byte for byte BuildKit's (executor/oci initHostsFile)."""
    return (f"127.0.0.1\tlocalhost {hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")


def _prepare(spec: SandboxSpec) -> _Plan:
    # named after the work dir: a store temp dir's owner tag then covers it too, so a
    # killed lamina's run dir is removed by the next start's stale-temp cleanup
    work = Path(spec.work_dir)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{work.name}.lamina-sandbox-", dir=work.parent))
    plan = _Plan(run_dir=run_dir, root=run_dir / "root", scratch=run_dir / "scratch",
                 hosts=run_dir / "hosts", resolv=run_dir / "resolv.conf", started=time.time())
    plan.root.mkdir()
    plan.scratch.mkdir()
    plan.hosts.write_text(hosts_file(spec.hostname))
    plan.resolv.write_bytes(netstack.resolv_conf(spec.network))
    for p in (plan.hosts, plan.resolv):
        p.chmod(0o644)
    return plan


def _cleanup(spec: SandboxSpec, plan: _Plan, report: dict | None) -> None:
    """Remove stubs, strip bookkeeping xattrs, empty the work dir, drop the run dir:
    every part is attempted; the first failure is raised at the end."""
    failures: list[str] = []

    def attempt(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except OSError as exc:
            failures.append(f"{what}: {exc.filename or ''} {linux.errno_text(exc.errno or 0)}")

    if plan.fuse:  # before the stubs: fuse-overlayfs's markers sit in new dirs
        attempt("converting fuse-overlayfs's upper dir",
                lambda: fuseoverlay.convert_upper(Path(spec.upper_dir), spec.lower_dirs,
                                                  since=plan.started))

    if report:
        attempt("removing mount points from the upper dir",
                lambda: remove_stubs(str(spec.upper_dir), report, keep=RUNC_MOUNT_POINTS))
    attempt("tidying the upper dir", lambda: overlay.finalize_upper(Path(spec.upper_dir)))
    attempt("emptying the overlay work dir", lambda: overlay.empty_dir(Path(spec.work_dir)))
    for mp in (plan.root, plan.scratch):
        try:
            os.rmdir(mp)  # never rmtree a (possibly) mounted dir
        except OSError:
            pass
    shutil.rmtree(plan.run_dir, ignore_errors=True)
    if failures:
        raise SandboxError("cleaning up after the RUN step failed: " + "; ".join(failures))


def run(spec: SandboxSpec, on_output: Callable[[bytes], None]) -> int:
    _validate(spec)
    privileges.prepare()  # compiles the seccomp filter here, where errors are reported
    plan = replace(_prepare(spec), fuse=fuseoverlay.use_fuse(Path(spec.work_dir).parent))
    state: dict = {"report": None}
    try:
        cgroup = StepCgroup.create(spec.limits)
        try:
            code = _execute(spec, replace(plan, cgroup=cgroup), on_output, state)
            cgroup.check_exit(code)  # "RUN was killed: out of memory (limit N)"
        finally:
            cgroup.close()  # kills every process left, removes the cgroup
    except BaseException:
        try:
            _cleanup(spec, plan, state["report"])
        except SandboxError:
            pass  # the step's own error is the one to report
        raise
    _cleanup(spec, plan, state["report"])
    return code


class _Control:
    """Newline-delimited JSON messages the children send P on the control pipe."""

    def __init__(self) -> None:
        self.buf = b""
        self.init_pidfd: int | None = None
        self.errors: list[str] = []

    def feed(self, data: bytes, state: dict) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            msg = json.loads(line)
            if "init" in msg:
                try:
                    self.init_pidfd = os.pidfd_open(msg["init"])
                except OSError:
                    self.init_pidfd = None
            if "stubs" in msg:
                state["report"] = msg["stubs"]
            if "error" in msg:
                self.errors.append(msg["error"])


def _execute(spec: SandboxSpec, plan: _Plan, on_output: Callable[[bytes], None],
             state: dict) -> int:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            # no finalizer of the parent's objects may run here (buffered files
            # flushing twice...): the children only _exit
            gc.disable()
            os.close(out_r)
            os.close(ctl_r)
            code = _stage1(spec, plan, out_w, ctl_w, parent_pid)
        except BaseException as exc:  # noqa: BLE001 - the child must never return
            send(ctl_w, {"error": describe(exc, "sandbox setup")})
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(ctl_w)
    ctl = _Control()
    reaped = False
    try:
        poller = select.poll()
        open_fds = {out_r, ctl_r}
        for fd in open_fds:
            poller.register(fd, select.POLLIN)
        while open_fds:
            for fd, _ in poller.poll():
                data = os.read(fd, 65536)
                if not data:
                    open_fds.discard(fd)
                    poller.unregister(fd)
                elif fd == out_r:
                    on_output(data)
                else:
                    ctl.feed(data, state)
        _, status = os.waitpid(pid, 0)
        reaped = True
    except BaseException:
        _kill_sandbox(pid, ctl, ctl_r, state, reaped)
        raise
    finally:
        os.close(out_r)
        os.close(ctl_r)
        if ctl.init_pidfd is not None:
            os.close(ctl.init_pidfd)
    if ctl.errors:
        raise SandboxError(ctl.errors[0])
    return exit_code(status)


def _kill_sandbox(pid: int, ctl: _Control, ctl_r: int, state: dict, reaped: bool) -> None:
    """SIGKILL the namespace's init (the kernel then kills the whole namespace), wait
    for C1 (its wait for init returns once the namespace is empty), collect the
    stub report. Signals that arrive meanwhile are held back until we are done."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if reaped:
            return
        # learn init's pid if C1 has not told us yet (C1 sends it right after fork)
        poller = select.poll()
        poller.register(ctl_r, select.POLLIN)
        while ctl.init_pidfd is None:
            if not poller.poll(5000):
                break
            data = os.read(ctl_r, 65536)
            if not data:
                break
            ctl.feed(data, state)
        if ctl.init_pidfd is not None:
            try:
                signal.pidfd_send_signal(ctl.init_pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
        os.set_blocking(ctl_r, False)
        while True:
            try:
                data = os.read(ctl_r, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            ctl.feed(data, state)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


# --- child side ------------------------------------------------------------------

def _stage1(spec: SandboxSpec, plan: _Plan, out_w: int, ctl_w: int, parent_pid: int) -> int:
    """C1: new session, die with P, unshare, fork the namespace's init, relay its status."""
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    linux.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        return 125
    flags = (linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWIPC
             | linux.CLONE_NEWUTS | linux.CLONE_NEWCGROUP)
    if netstack.own_namespace(spec.network):
        flags |= linux.CLONE_NEWNET
    fuse = None
    views: list = []
    if plan.fuse:
        # the daemon lives in the step's mount namespace but outside its PID namespace,
        # so that C1 can unmount (flush) and wait for it after the namespace is gone;
        # C2 pivots in a mount namespace of its own
        linux.unshare(linux.CLONE_NEWNS)
        make_private(root_mount=True)
        fuse = fuseoverlay.mount(spec.lower_dirs, Path(spec.upper_dir), Path(spec.work_dir),
                                 plan.root, plan.run_dir)
        flags &= ~linux.CLONE_NEWNS
        try:  # RUN --mount views of other stages (builder.sandbox.fuseviews), beside it
            mounts, views = fuseviews.mount_views(spec.mounts, plan.run_dir)
        except BaseException:
            fuseoverlay.unmount(fuse)
            raise
        spec = replace(spec, mounts=mounts)
    stack = netstack.UserNetwork.prepare() if spec.network == "default" else None
    try:
        if plan.cgroup is not None:
            plan.cgroup.join()  # after the network helper forked: it stays outside
        linux.unshare(flags)
        if stack is not None:
            stack.attach()  # tap0 is configured before the command can run
        return _stage1_run(spec, plan, out_w, ctl_w, fuse)
    finally:
        if stack is not None:
            stack.stop()
        fuseviews.discard_views(views)
        if fuse is not None:
            fuseoverlay.unmount(fuse)  # raises before the status counts: step failed


def _stage1_run(spec: SandboxSpec, plan: _Plan, out_w: int, ctl_w: int, fuse=None) -> int:
    make_private(root_mount=True)  # / a private mount point, also inside a chroot
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            os.close(alive_w)
            code = _stage2(spec, plan, out_w, ctl_w, alive_r)
        except BaseException as exc:  # noqa: BLE001
            send(ctl_w, {"error": describe(exc, "sandbox setup")})
        finally:
            os._exit(code)
    send(ctl_w, {"init": pid})
    if fuse is None:  # else kept to report a failed flush (fuseoverlay.unmount)
        os.close(ctl_w)
    os.close(out_w)
    os.close(alive_r)
    while True:
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            break
    return exit_code(status)


def _stage2(spec: SandboxSpec, plan: _Plan, out_w: int, ctl_w: int, alive_r: int) -> int:
    """C2: PID 1 of the namespace. Build the root, pivot into it, run C3, reap."""
    if parent_gone(alive_r):  # C1 already gone (EOF on its pipe): we would be orphaned
        return 125
    linux.prctl(linux.PR_SET_DUMPABLE, 0)
    linux.set_process_title(INIT_TITLE)

    recorder = None
    try:
        if plan.fuse:  # C1 mounted it; pivot_root must not move C1's root
            linux.unshare(linux.CLONE_NEWNS)
            make_private(root_mount=True)
        else:
            overlay.mount_overlay(tuple(Path(p) for p in spec.lower_dirs), Path(spec.upper_dir),
                                  Path(spec.work_dir), plan.root, plan.run_dir, api=OVERLAY_API)
        recorder = StubRecorder(str(plan.root))
        linux.mount("tmpfs", plan.scratch, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                    "mode=700")
        mount_system(recorder, plan.hosts, plan.resolv)
        for i, m in enumerate(spec.mounts):
            mount_user(m, plan.scratch / f"m{i}", recorder, api=OVERLAY_API)
    finally:
        if recorder is not None:
            send(ctl_w, {"stubs": recorder.report()})

    # nodev on every mount but the allowed /dev nodes (and the image's filesystem
    # where the step's device cgroup denies other devices, as docker does)
    seal_mounts(plan.root, root_keeps_dev=plan.cgroup is not None and plan.cgroup.denies_devices)
    os.chdir(plan.root)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")
    linux.sethostname(spec.hostname)
    if netstack.own_namespace(spec.network):
        linux.interface_up("lo")
    make_working_dir(spec.cwd, spec.uid, spec.gid)

    pid = os.fork()
    if pid == 0:
        try:
            _stage3(spec, out_w, ctl_w)
        except BaseException as exc:  # noqa: BLE001
            send(ctl_w, {"error": describe(exc, "sandbox")})
        finally:
            os._exit(127)
    # defence in depth: the init keeps none of lamina's descriptors (the store's
    # database and locks, pipes) while the step runs beside it
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    # tiny init: reap everything, leave with the command's status
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 125
        if reaped == pid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            return exit_code(status)


def _stage3(spec: SandboxSpec, out_w: int, ctl_w: int) -> None:
    """C3: the command. stdin /dev/null, stdout and stderr the output pipe, then
    signals, capabilities, cwd, ids, exec (builder.sandbox.childproc)."""
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    exec_command(spec.argv, dict(spec.env), spec.cwd, spec.uid, spec.gid, spec.groups,
                 keep=(ctl_w,), ulimits=spec.limits.ulimits)
