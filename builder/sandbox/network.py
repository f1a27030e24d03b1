"""RUN networking: the network modes a step can have, the user-mode network stack
that gives a step's own network namespace outbound access, and the /etc/resolv.conf
content a step sees.

Modes (docker's names):

- ``default``: the step's own network namespace, connected to the outside through
  ``slirp4netns`` (a user-mode TCP/IP stack made for containers): the namespace gets
  ``tap0`` 10.0.2.100/24, gateway 10.0.2.2, MTU 65520. ``--disable-host-loopback``
  makes the gateway refuse to forward to the host's 127.0.0.1; the namespace has no
  IPv6 route, so the host's ::1 is out of reach too (its own ::1 is its own lo).
- ``none``: its own network namespace with only ``lo``.
- ``host``: the host's network namespace.

``UserNetwork`` is used by the sandbox's first child (C1), which is single-threaded:

    stack = UserNetwork.prepare()   # before unshare: forks the helper in the host netns
    unshare(... | CLONE_NEWNET)
    stack.attach()                  # the helper runs slirp4netns on our netns; returns
                                    # once tap0 is configured (ready-fd), else raises
    ...                             # run the step
    stack.stop()                    # SIGKILLed and reaped

The helper arms PR_SET_PDEATHSIG(SIGKILL) before exec (kept across the exec of the
non-setuid slirp4netns), so it dies with C1 — and C1 dies with lamina — even when
lamina is SIGKILLed; its ``--exit-fd`` is a pipe only C1 holds, so it also leaves
when C1 is gone. slirp4netns runs with ``--enable-sandbox`` (its own root, capabilities dropped) and
``--enable-seccomp``: it parses packets of a hostile step. It is started in a mount
namespace of its own, private recursively: its sandbox makes only / private before
unmounting the old root, which on a host with shared submounts (``ip netns``'s
/run/netns) unmounted the host's mounts.

Rootless (builder.sandbox.userns): lamina, and so the helper, run as root of lamina's
user namespace, which owns the step's netns: slirp4netns joins and configures it
with the capabilities it has there (no ``--userns-path`` needed); it needs
/dev/net/tun open to the user (mode 0666, udev's default), checked first.

resolv.conf (``resolv_conf(mode)``), as docker makes it: ``host`` gets the host's file
unchanged. Otherwise the host's file (systemd-resolved's upstream list when the host's
only nameserver is its 127.0.0.53 stub, as docker does) without loopback nameservers,
which the step cannot reach, and without IPv6 nameservers (the step has no IPv6
route). When no nameserver remains, docker falls back to 8.8.8.8/8.8.4.4; lamina's
``default`` mode uses slirp4netns's DNS forwarder 10.0.2.3 instead, which relays to
the host's own resolver (a 127.0.0.x one included): names resolve exactly as on the
host (split-horizon and internal names too) and builds work where outbound DNS to
public resolvers is blocked. ``none`` keeps docker's fallback (nothing is reachable
anyway). ``LAMINA_HOST_RESOLV_CONF`` names another file to read as the host's
(tests; hosts whose resolver config lives elsewhere).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import select
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import linux
from lamina.builder.sandbox.privateroot import make_private
from lamina.store import overlayform

MODES = ("default", "none", "host")

HOST_RESOLV_CONF = "/etc/resolv.conf"
RESOLV_CONF_ENV = "LAMINA_HOST_RESOLV_CONF"
SYSTEMD_RESOLVED_STUB = "127.0.0.53"
SYSTEMD_RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"
DOCKER_FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")

SLIRP = "slirp4netns"
SLIRP_DNS = "10.0.2.3"
SLIRP_GATEWAY = "10.0.2.2"
TAP = "tap0"
MTU = 65520
READY_TIMEOUT = 10.0   # seconds slirp4netns gets to configure tap0
TUN_DEVICE = "/dev/net/tun"


def own_namespace(mode: str) -> bool:
    """Whether a step in this mode gets a network namespace of its own."""
    return mode != "host"


# --- resolv.conf -------------------------------------------------------------------

def _nameservers(text: bytes) -> list[str]:
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == b"nameserver":
            out.append(fields[1].decode("ascii", "replace"))
    return out


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def host_resolv_conf() -> tuple[bytes, bool]:
    """(the host's resolv.conf bytes, whether it is the default host file — so the
    systemd-resolved rule may apply). A missing file reads as empty."""
    override = os.environ.get(RESOLV_CONF_ENV)
    if override:
        return _read(override) or b"", False
    return _read(HOST_RESOLV_CONF) or b"", True


def _unreachable(server: str) -> bool:
    """A nameserver a step in its own netns cannot use: loopback (the host's) or IPv6."""
    try:
        addr = ipaddress.ip_address(server.split("%", 1)[0])
    except ValueError:
        return False  # leave what we do not understand to the resolver, as docker does
    return addr.is_loopback or addr.version == 6


def filter_resolv_conf(text: bytes, fallback: tuple[str, ...]) -> bytes:
    """The host's resolv.conf without unreachable nameservers (other lines kept as
    they are); `fallback` nameservers appended when none remains (pure)."""
    kept = []
    for line in text.splitlines(keepends=True):
        fields = line.split()
        if (len(fields) >= 2 and fields[0] == b"nameserver"
                and _unreachable(fields[1].decode("ascii", "replace"))):
            continue
        kept.append(line if line.endswith(b"\n") else line + b"\n")
    out = b"".join(kept)
    if not _nameservers(out):
        out += b"".join(b"nameserver %s\n" % s.encode() for s in fallback)
    return out


def resolv_conf(mode: str, host: tuple[bytes, bool] | None = None) -> bytes:
    """The /etc/resolv.conf a step in `mode` sees (see the module docstring)."""
    text, is_default_file = host if host is not None else host_resolv_conf()
    if mode == "host":
        return text
    if is_default_file and _nameservers(text) == [SYSTEMD_RESOLVED_STUB]:
        upstream = _read(SYSTEMD_RESOLVED_UPSTREAM)
        if upstream is not None:
            text = upstream
    fallback = (SLIRP_DNS,) if mode == "default" else DOCKER_FALLBACK_DNS
    return filter_resolv_conf(text, fallback)


# --- the user-mode network stack -----------------------------------------------------

def slirp_argv(binary: str, pid: int, ready_fd: int, exit_fd: int) -> list[str]:
    return [binary, "--configure", f"--mtu={MTU}", "--disable-host-loopback",
            "--enable-sandbox", "--enable-seccomp",
            f"--ready-fd={ready_fd}", f"--exit-fd={exit_fd}", str(pid), TAP]


@dataclass
class UserNetwork:
    """slirp4netns for the network namespace of the process that prepared it (C1)."""

    pid: int          # the helper (slirp4netns once exec'd)
    go_w: int         # C1 -> helper: "the namespace exists, exec now"
    ready_r: int      # slirp4netns -> C1: "1" once tap0 is configured
    exit_w: int       # held by C1 only; closing it tells slirp4netns to exit
    log_r: int        # slirp4netns's stdout and stderr (non-blocking on its side)
    reaped: bool = False

    @classmethod
    def prepare(cls) -> "UserNetwork":
        """Fork the helper while still in the host's network namespace. It waits for
        attach() and then execs slirp4netns on our pid."""
        binary = shutil.which(SLIRP)
        if binary is None:
            raise SandboxError("RUN with the default network needs slirp4netns (Debian "
                               "package slirp4netns): install it, or build with "
                               "--network none")
        _check_tun()
        target = os.getpid()
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                _helper(binary, target, go_r, ready_w, exit_r, log_w)
            finally:
                os._exit(127)
        for fd in (go_r, ready_w, exit_r, log_w):
            os.close(fd)
        return cls(pid=pid, go_w=go_w, ready_r=ready_r, exit_w=exit_w, log_r=log_r)

    def attach(self) -> None:
        """Let the helper run slirp4netns on our (new) netns; return once it is ready."""
        os.write(self.go_w, b"g")
        os.close(self.go_w)
        self.go_w = -1
        poller = select.poll()
        poller.register(self.ready_r, select.POLLIN)
        if not poller.poll(int(READY_TIMEOUT * 1000)):
            raise SandboxError(f"slirp4netns did not configure the step's network in "
                               f"{READY_TIMEOUT:g} s{self._log_tail()}")
        if os.read(self.ready_r, 1) != b"1":
            self._reap(block=True)
            raise SandboxError(f"slirp4netns could not set up the step's network"
                               f"{self._log_tail()}")

    def stop(self) -> None:
        """End slirp4netns and reap it. It keeps no state worth a graceful exit (the
        namespace it served is gone), so SIGKILL: its exit-fd way takes ~20 ms."""
        if not self.reaped:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap(block=True)
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1
        for fd in (self.go_w, self.ready_r, self.log_r):
            if fd >= 0:
                os.close(fd)
        self.go_w = self.ready_r = self.log_r = -1

    def _reap(self, block: bool) -> bool:
        if self.reaped:
            return True
        try:
            pid, _ = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid = self.pid
        self.reaped = pid == self.pid
        return self.reaped

    def _log_tail(self) -> str:
        os.set_blocking(self.log_r, False)
        data = b""
        try:
            while len(data) < 65536:
                chunk = os.read(self.log_r, 65536)
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass
        text = data.decode("utf-8", "replace").split("\nUsage:", 1)[0]  # not its --help
        lines = [l for l in text.splitlines()
                 if l.strip() and not l.startswith(("*", "Starting slirp", "WARNING: Support"))]
        return (": " + " | ".join(lines[:3])) if lines else ""


def _check_tun() -> None:
    """Rootless (builder.sandbox.userns): slirp4netns runs as root of lamina's user
    namespace — it can configure the step's netns, which that namespace owns, without
    --userns-path — but opens /dev/net/tun with the host's permissions for the user."""
    if not overlayform.unprivileged():
        return
    try:
        os.close(os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise SandboxError(
            f"rootless RUN with the default network needs {TUN_DEVICE} open to you "
            f"({linux.errno_text(exc.errno or 0)}); it is mode 0666 on most systems "
            f"(udev's default): ask the administrator for `chmod 0666 {TUN_DEVICE}`, "
            "or build with --network none") from None


def _helper(binary: str, target: int, go_r: int, ready_w: int, exit_r: int,
            log_w: int) -> None:
    """The helper child: die with C1, wait for the go, exec slirp4netns."""
    linux.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != target:
        return  # C1 is already gone
    linux.reset_signals()
    if os.read(go_r, 1) != b"g":
        return  # C1 failed before unsharing
    os.setsid()
    # slirp4netns --enable-sandbox makes only / private (not recursively) before it
    # detaches the old root: on a host with shared submounts (/run/netns from
    # `ip netns`) that unmount propagates and takes the host's mounts with it. Give it
    # a mount namespace of its own, private all the way down.
    linux.unshare(linux.CLONE_NEWNS)
    make_private(root_mount=True)  # also when lamina runs in a chroot (/ not a mount point)
    _run_mount_point()
    # move every fd we keep above the ones we set, then lay out stdio, ready-fd 3 and
    # exit-fd 4; everything else is closed
    null = os.open("/dev/null", os.O_RDONLY)
    null, log_w, ready_w, exit_r = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 16)
                                    for fd in (null, log_w, ready_w, exit_r))
    for src, dst in ((null, 0), (log_w, 1), (log_w, 2), (ready_w, 3), (exit_r, 4)):
        os.dup2(src, dst)
    os.set_blocking(1, False)  # a chatty slirp4netns drops log lines, never stalls
    os.closerange(5, 1 << 20)
    try:
        os.execv(binary, slirp_argv(binary, target, 3, 4))
    except OSError as exc:
        os.write(2, f"cannot run {binary}: {linux.errno_text(exc.errno or 0)}\n".encode())


def _run_mount_point() -> None:
    """slirp4netns's sandbox makes /run a slave mount, which fails unless /run is a
    mount point (it is not in a plain chroot): in the helper's own mount namespace,
    bind /run on itself, or put an empty tmpfs there when there is no /run."""
    if os.path.ismount("/run"):
        return
    try:
        if os.path.isdir("/run"):
            linux.mount("/run", "/run", None, linux.MS_BIND | linux.MS_REC)
        else:
            os.mkdir("/run", 0o755)
            linux.mount("tmpfs", "/run", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=755")
    except (OSError, SandboxError):
        pass  # slirp4netns then says why it cannot start
