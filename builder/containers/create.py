"""From `lamina run`'s options and an image to a container record, and the start of
its monitor.

    options = RunOptions(image="app", args=("sh",), ...)
    record = create(store, options)          # ROOT/containers/<id>/, status "created"
    spawn_monitor(store.root, record.id, stdin_fd=..., attach_fd=...)

Docker's rules: the command is Entrypoint + Cmd, or Entrypoint + the arguments given;
`--entrypoint` replaces the Entrypoint and drops the image's Cmd; the environment is
PATH, HOSTNAME and (with -t) TERM=xterm, overridden by the image's Env, then
`--env-file` lines, then `-e` (a bare `-e NAME` takes lamina's own value, or is
skipped), then HOME from the user's passwd entry if still unset; the process's groups
are its primary gid and the supplementary ones (docker's); user and working dir default to the image's; the hostname to
the short container ID, or with `--network host` to the host's (docker's
initializeNetworking: os.Hostname(); `--hostname` still names it, inside the container
alone: its UTS namespace stays its own, as in current docker - old docker refused the
pair); the stop signal to the image's STOPSIGNAL, else SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.containers.fuseroot import overlay_kind
from lamina.builder.containers.imagehold import hold_image
from lamina.builder.containers.state import (Container, ContainerError, ContainerStore, boot_id,
                                             process_is)
from lamina.builder.errors import BuildError
from lamina.builder.runimage import image_command
from lamina.builder.sandbox.users import resolve_user_in_layers
from lamina.store.oci import check_runtime_config
from lamina.store.store import Store

START_TIMEOUT = 60.0  # seconds a monitor may take to start its container (check_monitor)


@dataclass(frozen=True)
class RunOptions:
    image: str
    args: tuple[str, ...] = ()
    name: str = ""
    detach: bool = False
    auto_remove: bool = False
    interactive: bool = False
    tty: bool = False
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    volumes: tuple[str, ...] = ()
    network: str = "default"
    hostname: str | None = None
    entrypoint: str | None = None
    tty_size: tuple[int, int] | None = None
    ulimits: tuple = ()   # --ulimit: builder.sandbox.ulimits.Ulimit, applied before the exec


def parse_env_file(path: str) -> list[str]:
    """docker's --env-file: KEY=VALUE lines (the value kept verbatim, spaces and quotes
    included), `#` comments and blank lines skipped, leading whitespace and a UTF-8 BOM
    dropped, a name with whitespace refused, a bare KEY takes lamina's own value (or is
    skipped)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ContainerError(f"cannot read env file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ContainerError(f"env file {path} is not UTF-8 text") from None
    out = []
    for n, line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key = line.partition("=")[0]
        if " " in key or "\t" in key:  # docker's CLI: "variable 'K ' contains whitespaces"
            raise ContainerError(f"invalid environment variable {key!r} in {path}:{n}: "
                                 "the name contains whitespace")
        out.extend(_env_item(line, f"{path}:{n}"))
    return out


def _env_item(item: str, where: str) -> list[str]:
    key, sep, value = item.partition("=")
    if not key or " " in key.strip() or "\0" in item:
        raise ContainerError(f"invalid environment variable {item!r} ({where})")
    if not sep:
        return [f"{key}={os.environ[key]}"] if key in os.environ else []
    return [item]


def merge_env(image_env, items) -> list[str]:
    merged: dict[str, str] = {}
    for item in list(image_env) + list(items):
        key, _, value = item.partition("=")
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def parse_volume(spec: str) -> tuple[str, str, bool]:
    """`-v HOST:CTR[:ro|rw]` (host paths only: lamina has no named volumes)."""
    parts = spec.split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not parts[1].startswith("/"):
        raise ContainerError(f"invalid volume {spec!r}: expected /HOST/PATH:/CONTAINER/PATH[:ro]")
    host, target = parts
    if not host.startswith("/"):
        raise ContainerError(f"volume {spec!r}: named volumes are not supported; give an "
                             "absolute host path")
    if not os.path.exists(host):
        raise ContainerError(f"volume {spec!r}: host path {host} does not exist")
    return os.path.realpath(host), os.path.normpath(target), mode == "ro"


def signal_number(name: str | int) -> int:
    """SIGTERM, TERM, 15 -> 15 (docker's STOPSIGNAL and `kill -s` forms)."""
    text = str(name).strip().upper()
    if text.isdigit():
        n = int(text)
    else:
        if not text.startswith("SIG"):
            text = "SIG" + text
        try:
            n = int(getattr(signal.Signals, text))
        except AttributeError:
            raise ContainerError(f"invalid signal: {name}") from None
    if not 0 < n < signal.NSIG:
        raise ContainerError(f"invalid signal: {name}")
    return n


def default_env(hostname: str, tty: bool) -> list[str]:
    """docker's defaults under the image's Env and the user's: PATH, HOSTNAME (the
    container's hostname) and, with -t only, TERM=xterm; a name the merged env already
    sets keeps its value (moby's Container.CreateDaemonEnvironment)."""
    return [f"{k}={v}" for k, v in (
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ("HOSTNAME", hostname), ("TERM", "xterm" if tty else None)) if v is not None]


def with_defaults(defaults: list[str], env: list[str]) -> list[str]:
    names = {e.split("=", 1)[0] for e in env}
    return [d for d in defaults if d.split("=", 1)[0] not in names] + env


def process_groups(who) -> tuple[int, ...]:
    """A container process's supplementary groups as docker sets them (moby's getUser:
    AdditionalGids = [the primary gid] + runc's GetExecUser Sgids): `-u 4242:4343` runs
    with groups 4343, `-u alice` with alice's gid and every group listing alice. A gid
    listed twice is kept once."""
    out: list[int] = []
    for g in (who.gid, *who.groups):
        if g not in out:
            out.append(g)
    return tuple(out)


def create(store: Store, opts: RunOptions) -> Container:
    """Resolve the image, extract its layer dirs, write the record ("created") and
    hold the image for the container's life."""
    if opts.network not in ("default", "none", "host", "bridge"):
        raise ContainerError(f"invalid --network {opts.network!r}: lamina has default "
                             "(also called bridge), none and host")
    env_items: list[str] = []
    for f in opts.env_files:
        env_items.extend(parse_env_file(f))
    for item in opts.env:
        env_items.extend(_env_item(item, "-e"))
    volumes = tuple(parse_volume(v) for v in opts.volumes)
    with store.lease() as lease:
        with store.writing():
            image = store.resolve(opts.image)
            lease.hold(layers=[l.diff_id for l in image.layers], images=[image.manifest_digest])
        lowers = tuple(store.layer_dir(l.diff_id) for l in reversed(image.layers))
        config = dict(image.config.get("config") or {})
        # an image stored before the store checked these types (store.oci)
        check_runtime_config(config, f"image {opts.image}")
        if opts.entrypoint is not None:
            argv = tuple(([opts.entrypoint] if opts.entrypoint else []) + list(opts.args))
            if not argv:
                raise BuildError("no command to run: --entrypoint is empty and no CMD given")
        else:
            argv = image_command(config, opts.args)
        user = opts.user if opts.user is not None else (config.get("User") or "0")
        who = resolve_user_in_layers(lowers, user)
        env = merge_env(config.get("Env") or [], env_items)
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={who.home or '/'}")
        cs = ContainerStore(store.root)
        cid = cs.new_id()
        hostname = opts.hostname or (socket.gethostname() if opts.network == "host" else cid[:12])
        env = with_defaults(default_env(hostname, opts.tty), env)
        record = Container(
            id=cid, name=opts.name, image=opts.image, image_id=image.config_digest,
            manifest=image.manifest_digest, argv=argv, args=tuple(opts.args),
            entrypoint=(tuple([opts.entrypoint] if opts.entrypoint else [])
                        if opts.entrypoint is not None else None),
            env=tuple(env), user=user, uid=who.uid, gid=who.gid, groups=process_groups(who),
            workdir=opts.workdir or config.get("WorkingDir") or "/",
            hostname=hostname,
            network="default" if opts.network == "bridge" else opts.network,
            volumes=volumes, tty=opts.tty, interactive=opts.interactive, detach=opts.detach,
            auto_remove=opts.auto_remove, stop_signal=str(config.get("StopSignal") or "SIGTERM"),
            created=time.time(), boot_id=boot_id(), tty_size=opts.tty_size,
            overlay=overlay_kind(store.tmp_dir), ulimits=tuple(str(u) for u in opts.ulimits))
        # the container holds its image until `rm` (builder.containers.imagehold)
        cs.create(record, on_create=lambda: hold_image(store, cid, image))
        return cs.read(cid) or record


def spawn_monitor(root: Path, cid: str, *, stdin_fd: int | None = None,
                  attach_fd: int | None = None) -> int:
    """Start the container's monitor, detached from lamina: fork, setsid, fork again
    and exec `python -m lamina.builder.containers.monitor` (so it is nobody's child
    but init's, in a session of its own, with no PDEATHSIG towards lamina). Its stdio
    are /dev/null and ROOT/containers/<id>/monitor.err; `stdin_fd` (the container's
    stdin, `-i` without a TTY) arrives as fd 3, `attach_fd` (where a foreground run
    receives the pty master) as fd 4. Returns the monitor's pid."""
    d = ContainerStore(root).path(cid)
    argv = [sys.executable, "-m", "lamina.builder.containers.monitor", str(root), cid]
    if stdin_fd is not None:
        argv.append("--stdin=3")
    if attach_fd is not None:
        argv.append("--attach=4")
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            monitor = os.fork()
            if monitor != 0:
                os.write(pid_w, str(monitor).encode())
                os._exit(0)
            null = os.open("/dev/null", os.O_RDWR)
            err = os.open(d / "monitor.err", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            moves = [(null, 0), (null, 1), (err, 2)]
            # park the passed fds above 9 first: dup2 into 3/4 must not clobber them
            if stdin_fd is not None:
                moves.append((os.dup(stdin_fd) if stdin_fd < 10 else stdin_fd, 3))
            if attach_fd is not None:
                moves.append((os.dup(attach_fd) if attach_fd < 10 else attach_fd, 4))
            parked = [(fcntl_dup_high(src), dst) for src, dst in moves]
            for src, dst in parked:
                os.dup2(src, dst, inheritable=True)
            keep = {dst for _, dst in parked}
            os.closerange(max(keep) + 1, 65536)
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    os.close(pid_w)
    os.waitpid(pid, 0)
    with os.fdopen(pid_r, "rb") as f:
        text = f.read()
    if not text.isdigit():
        raise ContainerError("could not start the container's monitor process")
    return int(text)


def check_monitor(cs: ContainerStore, cid: str, monitor_pid: int,
                  spawned: float | None = None) -> None:
    """A monitor that died before recording itself (it could not even start) leaves
    the record "created": record it exited, with what it wrote to monitor.err. One
    that has not started the container START_TIMEOUT seconds after it was spawned
    (`spawned`, time.monotonic()) is killed and recorded the same way: a `lamina run`
    waiting for it never hangs."""
    record = cs.read(cid)
    if record is None or record.status != "created":
        return
    if not record.monitor_pid and not _running(monitor_pid):
        record = cs.read(cid)
        if record is None or record.status != "created" or record.monitor_pid:
            return
        _give_up(cs, cid, "the container's monitor exited at once")
        return
    if spawned is None or time.monotonic() - spawned < START_TIMEOUT:
        return
    if record.monitor_pid:
        if process_is(record.monitor_pid, record.monitor_start):
            _kill(record.monitor_pid)
    elif _running(monitor_pid):
        _kill(monitor_pid)
    if (cs.read(cid) or record).status == "created":
        _give_up(cs, cid, f"the container's monitor did not start it within {START_TIMEOUT:g} s "
                          "(it was stopped)")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _give_up(cs: ContainerStore, cid: str, why: str) -> None:
    """Record a container its monitor could not start: exited 125 with `why` and the
    last line the monitor wrote to monitor.err."""
    try:
        tail = (cs.path(cid) / "monitor.err").read_text(errors="replace").strip().splitlines()[-1:]
    except OSError:
        tail = []
    cs.update(cid, status="exited", exit_code=125, finished=time.time(),
              error=why + (f": {tail[0]}" if tail else ""))


def fcntl_dup_high(fd: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
