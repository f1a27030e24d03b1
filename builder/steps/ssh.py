"""SSH agent forwarding for `RUN --mount=type=ssh`, given with `lamina build --ssh`
as buildx: `--ssh default` ($SSH_AUTH_SOCK), `--ssh ID=SOCKET` (an agent socket) or
`--ssh ID=KEYFILE[,KEYFILE...]` (private key files).

The RUN never sees a key and nothing lands in a layer: each ssh mount gets a fresh
listening socket of lamina's (owned uid:gid, mode as the mount says; 0:0 0600 by
default, BuildKit's), bind-mounted at its target; every connection the RUN makes
is relayed, byte for byte, to the agent. lamina connects as root, so the agent's
peer-uid check passes whatever USER the step runs as (BuildKit relays through its
session the same way).

Key files are served by a private `ssh-agent` (openssh-client) that lamina starts
for the step: `ssh-agent -D -a SOCKET` in a 0700 staging dir, dying with lamina
(PR_SET_PDEATHSIG) and stopped after the step; the keys are loaded with `ssh-add`
from 0600 copies in that dir (so a key file's own mode does not matter), stdin
closed: a passphrase-protected key is an error, not a prompt. (buildx runs an
in-process agent instead; the protocol and what the RUN sees are the same.)

Public API:
- `SSHSource(id, paths)`, `parse_ssh_flags(values, environ)` -> {id: SSHSource}.
- `agent_socket(source, where)` (context manager) -> the path of an agent socket
  serving `source`.
- `AgentRelay(listen_path, upstream, uid, gid, mode)`: `.start()`, `.close()`.
- `ssh_mount(mount, sources, stack, fail)` -> the sandbox BindMount of one ssh mount.

Staging lives in a fresh 0700 dir under $TMPDIR (socket paths must stay short); a
lamina killed mid-step may leave that empty dir behind (the key copies are
removed as soon as the agent holds them).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from lamina.builder.errors import BuildError


@dataclass(frozen=True)
class SSHSource:
    """One `--ssh` value: an id and either one agent socket or key files."""

    id: str
    paths: tuple[str, ...]

    @property
    def is_socket(self) -> bool:
        return len(self.paths) == 1 and _is_socket(self.paths[0])


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def parse_ssh_flags(values: Sequence[str], environ: Mapping[str, str] | None = None
                    ) -> dict[str, SSHSource]:
    """`--ssh default|ID[=SOCKET|KEY[,KEY...]]`, as buildx reads them; an id without
    paths is the agent at $SSH_AUTH_SOCK."""
    environ = os.environ if environ is None else environ
    out: dict[str, SSHSource] = {}
    for value in values:
        ident, eq, rest = value.partition("=")
        ident = ident.strip()
        if not ident:
            raise BuildError(f"invalid --ssh {value!r}: expected default|ID[=SOCKET|KEY[,KEY]]")
        if ident in out:
            raise BuildError(f"invalid --ssh {value!r}: id {ident!r} given twice")
        paths = tuple(p for p in rest.split(",") if p) if eq else ()
        if not paths:
            sock = environ.get("SSH_AUTH_SOCK", "")
            if not sock:
                raise BuildError(f"--ssh {ident}: invalid empty ssh agent socket: make sure "
                                 "SSH_AUTH_SOCK is set")
            paths = (sock,)
        source = SSHSource(ident, paths)
        if not source.is_socket:
            for p in paths:
                if not os.path.isfile(p) or not os.access(p, os.R_OK):
                    raise BuildError(f"--ssh {ident}: {p} is neither an agent socket nor a "
                                     "readable private key file")
        out[ident] = source
    return out


class AgentRelay:
    """A listening unix socket whose connections are relayed to `upstream`, served
    by one thread until `close()`."""

    def __init__(self, listen_path: Path, upstream: str, uid: int = 0, gid: int = 0,
                 mode: int = 0o600) -> None:
        self.listen_path = Path(listen_path)
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(os.fspath(self.listen_path))
        os.chown(self.listen_path, uid, gid)
        os.chmod(self.listen_path, mode)
        self._listener.listen(16)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="ssh-agent-relay", daemon=True)
        self._peers: dict[socket.socket, socket.socket] = {}

    def start(self) -> "AgentRelay":
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join(10)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._listener.close()
        for s in list(self._peers):
            s.close()
        self._peers.clear()
        with contextlib.suppress(OSError):
            self.listen_path.unlink()

    def _drop(self, sel: selectors.BaseSelector, s: socket.socket) -> None:
        peer = self._peers.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self._peers.pop(x, None)
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(x)
            x.close()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "wake":
                        return
                    if key.data == "accept":
                        try:
                            client, _ = self._listener.accept()
                        except (BlockingIOError, InterruptedError):
                            continue
                        try:
                            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                            up.connect(self.upstream)
                        except OSError:
                            client.close()  # the agent is gone: the client sees EOF
                            continue
                        client.setblocking(True)
                        up.setblocking(True)
                        self._peers[client], self._peers[up] = up, client
                        sel.register(client, selectors.EVENT_READ, "data")
                        sel.register(up, selectors.EVENT_READ, "data")
                        continue
                    s = key.fileobj
                    try:
                        data = s.recv(1 << 16)
                        if data:
                            self._peers[s].sendall(data)
                            continue
                    except (OSError, KeyError):
                        pass
                    self._drop(sel, s)
        finally:
            sel.close()


def _pdeathsig() -> None:
    from lamina.builder.sandbox import linux
    linux.set_pdeathsig(signal.SIGKILL)


@contextlib.contextmanager
def _key_agent(source: SSHSource, where: Path) -> Iterator[str]:
    agent, add = shutil.which("ssh-agent"), shutil.which("ssh-add")
    if not agent or not add:
        raise BuildError(f"--ssh {source.id}: key files need ssh-agent and ssh-add "
                         "(Debian's openssh-client)")
    where.mkdir(mode=0o700)
    sock = where / "agent.sock"
    keys = []
    for i, p in enumerate(source.paths):
        copy = where / f"key{i}"
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Path(p).read_bytes())
        keys.append(os.fspath(copy))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSH_AUTH_SOCK": os.fspath(sock)}
    proc = subprocess.Popen([agent, "-D", "-a", os.fspath(sock)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            preexec_fn=_pdeathsig, close_fds=True)
    try:
        deadline = time.monotonic() + 10
        while not _is_socket(os.fspath(sock)):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise BuildError(f"--ssh {source.id}: ssh-agent did not start: {err}")
            time.sleep(0.01)
        added = subprocess.run([add, "-q", "--", *keys], stdin=subprocess.DEVNULL,
                               capture_output=True, env=env, timeout=30,
                               preexec_fn=_pdeathsig)
        if added.returncode != 0:
            why = added.stderr.decode(errors="replace").strip().replace(os.fspath(where), "")
            raise BuildError(f"--ssh {source.id}: cannot load the key files "
                             f"{', '.join(source.paths)} (a passphrase-protected key cannot "
                             f"be used): {why}")
        for k in keys:  # the agent holds them now
            os.unlink(k)
        yield os.fspath(sock)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def agent_socket(source: SSHSource, where: Path) -> Iterator[str]:
    """The path of an agent socket serving `source` for as long as the context lasts:
    the forwarded socket itself, or a private agent holding the key files (staged
    under `where`, a path that must not exist yet)."""
    if source.is_socket:
        yield source.paths[0]
        return
    with _key_agent(source, where) as sock:
        yield sock


def ssh_mount(m, sources: Mapping[str, SSHSource], stack: contextlib.ExitStack,
              fail) -> "BindMount | None":
    """The sandbox mount of one `RUN --mount=type=ssh` (a planned Mount: id, target,
    required, mode, uid, gid), its agent and relay held open by `stack`; None when
    the id was not given and the mount is not required (BuildKit skips it then)."""
    from lamina.builder.sandbox.sandbox import BindMount

    source = sources.get(m.id)
    if source is None:
        if m.required:
            raise fail(f'no SSH key "{m.id}" forwarded from the client '
                       f"(use lamina build --ssh {m.id}[=SOCKET|KEYFILE])")
        return None
    # a short host path: unix socket paths are limited to 107 bytes
    staging = Path(tempfile.mkdtemp(prefix="lamina-ssh-"))
    stack.callback(shutil.rmtree, staging, True)
    upstream = stack.enter_context(agent_socket(source, staging / "agent"))
    relay = AgentRelay(staging / "relay.sock", upstream, m.uid or 0, m.gid or 0,
                       0o600 if m.mode is None else m.mode).start()
    stack.callback(relay.close)
    return BindMount(source=relay.listen_path, target=m.target, readonly=True)
