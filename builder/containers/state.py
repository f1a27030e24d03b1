"""A container's record in the store: ROOT/containers/<id>/ holds `state.json`
(written atomically: temp file, fsync, rename), `ctr.log` (builder.containers.logs),
`upper/` and `work/` (the overlay dirs, kept for the container's life), `run/` (the
merged mount point and the injected /etc files), `lock` (serialises state updates)
and `attach.lock` (held shared by an attached `lamina run`, so that `--rm` waits for
it to read the exit status).

Liveness is never taken from the record alone: a "running" container is running only
if this boot (/proc/sys/kernel/random/boot_id) is the one it started in and its
monitor process is alive with the same start time. Otherwise `reconcile` records it
exited: 137 when its monitor died on this boot (PID 1 dies with it: PDEATHSIG), 255
after a reboot (docker's code for a container whose daemon lost it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator

from lamina.builder.errors import BuildError
from lamina.store.locks import flocked, remove_tree

HOLD_PREFIX = "container "


def hold_name(cid: str) -> str:
    """The store hold (a gc root) a container keeps on its image until `rm`."""
    return HOLD_PREFIX + cid

STATE_FILE = "state.json"
LOG_FILE = "ctr.log"
EXIT_LOST = 137          # the monitor was killed: so was PID 1
EXIT_REBOOT = 255

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_ADJECTIVES = ("brave", "calm", "eager", "fervent", "gentle", "happy", "jolly", "keen",
               "lucid", "mellow", "nifty", "quirky", "serene", "tender", "vibrant", "witty",
               "zealous", "bold", "crisp", "dapper")
_NAMES = ("babbage", "curie", "darwin", "euler", "fermat", "gauss", "hopper", "hypatia",
          "kepler", "lovelace", "noether", "pascal", "ramanujan", "shannon", "turing",
          "volta", "wiles", "yalow", "zuse", "bohr")


class ContainerError(BuildError):
    """A container operation a user asked for that cannot be done (no such container,
    a running one without -f, a name in use...)."""


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str                      # as the user named it
    image_id: str                   # config digest
    manifest: str                   # manifest digest
    argv: tuple[str, ...]           # what runs (Entrypoint + Cmd or args)
    args: tuple[str, ...] = ()      # the CMD given on the command line
    entrypoint: tuple[str, ...] | None = None   # --entrypoint, if given
    env: tuple[str, ...] = ()       # K=V, the image's then -e/--env-file
    user: str = ""
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    workdir: str = "/"
    hostname: str = ""
    network: str = "default"
    volumes: tuple[tuple[str, str, bool], ...] = ()
    tty: bool = False
    interactive: bool = False
    detach: bool = False
    auto_remove: bool = False
    stop_signal: str = "SIGTERM"
    created: float = 0.0
    status: str = "created"         # created | running | exited
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    error: str = ""
    boot_id: str = ""
    monitor_pid: int = 0
    monitor_start: str = ""
    init_pid: int = 0
    init_start: str = ""
    cgroup_dirs: tuple[str, ...] = ()
    stubs: dict = field(default_factory=dict)
    tty_size: tuple[int, int] | None = None
    overlay: str = "kernel"         # its root: "kernel" overlayfs or "fuse" (builder.containers.fuseroot)
    ulimits: tuple[str, ...] = ()   # --ulimit, each name=soft:hard (builder.sandbox.ulimits)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Container":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for k in ("groups", "cgroup_dirs"):
            if values.get(k) is not None:
                values[k] = tuple(values[k])
        if values.get("ulimits") is not None:
            values["ulimits"] = tuple(str(u) for u in values["ulimits"])
        # strings, whatever a record written from an unchecked image config holds (an
        # older lamina stored Cmd ["echo", 5] as it was: `ps` must still list it)
        for k in ("argv", "args", "env", "entrypoint"):
            if values.get(k) is not None:
                values[k] = tuple(str(x) for x in values[k])
        if values.get("volumes"):
            values["volumes"] = tuple(tuple(v) for v in values["volumes"])
        if values.get("tty_size"):
            values["tty_size"] = tuple(values["tty_size"])
        return cls(**values)


# --- processes and boots -----------------------------------------------------------

def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), "" if gone
    or a zombie: with the pid, it names one live process for the boot's lifetime."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    fields = data.rsplit(b")", 1)[1].split()
    if fields[0] in (b"Z", b"X"):
        return ""
    return fields[19].decode()


def process_is(pid: int, started: str) -> bool:
    return pid > 0 and bool(started) and start_time(pid) == started


# --- the record on disk ------------------------------------------------------------

class ContainerStore:
    """ROOT/containers: create, read, update, list, find and remove records."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "containers"

    def path(self, cid: str) -> Path:
        return self.dir / cid

    def new_id(self) -> str:
        return secrets.token_hex(32)

    def create(self, record: Container, on_create: Callable[[], None] | None = None) -> Path:
        """Write a new record (a free name if it has none). `on_create` runs under the
        names lock just before the dir is made (the image hold:
        builder.containers.imagehold)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with flocked(self.dir / ".names.lock"):
            if not record.name:
                record = replace(record, name=self._free_name())
            elif not _NAME_RE.match(record.name):
                raise ContainerError(f"invalid container name {record.name!r}: only "
                                     "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
            else:
                for other in self.all():
                    if other.name == record.name:
                        raise ContainerError(
                            f'the container name "/{record.name}" is already in use by '
                            f'container "{other.id}". You have to remove (or rename) that '
                            "container to be able to reuse that name.")
            if on_create is not None:
                on_create()
            d = self.path(record.id)
            d.mkdir(mode=0o700)
            for sub in ("upper", "work", "run"):
                (d / sub).mkdir(mode=0o755 if sub == "upper" else 0o700)
            self.write(record)
        return d

    def _free_name(self) -> str:
        taken = {c.name for c in self.all()}
        while True:
            name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NAMES)}"
            if name not in taken:
                return name
            name += str(secrets.randbelow(10))
            if name not in taken:
                return name

    def write(self, record: Container) -> None:
        """Replace the state file atomically (temp, fsync, rename, fsync dir)."""
        d = self.path(record.id)
        tmp = d / f".{STATE_FILE}.{os.getpid()}.tmp"
        data = json.dumps(record.to_json(), sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, d / STATE_FILE)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def read(self, cid: str) -> Container | None:
        try:
            return Container.from_json(json.loads((self.path(cid) / STATE_FILE).read_bytes()))
        except (OSError, ValueError, TypeError):
            return None

    def update(self, cid: str, **changes) -> Container | None:
        """Read-modify-write under the record's lock."""
        d = self.path(cid)
        if not d.is_dir():
            return None
        with flocked(d / "lock"):
            current = self.read(cid)
            if current is None:
                return None
            new = replace(current, **changes)
            self.write(new)
            return new

    def all(self) -> list[Container]:
        if not self.dir.is_dir():
            return []
        out = []
        for entry in sorted(os.listdir(self.dir)):
            if entry.startswith("."):
                continue
            record = self.read(entry)
            if record is not None:
                out.append(record)
        return out

    def listing(self) -> list[Container]:
        """Every container, reconciled, newest first."""
        return sorted((self.reconcile(c) for c in self.all()), key=lambda c: c.created,
                      reverse=True)

    def find(self, ref: str) -> Container:
        """By full ID, name or unique ID prefix (docker's rules); reconciled."""
        records = self.all()
        for c in records:
            if c.id == ref or c.name == ref.lstrip("/"):
                return self.reconcile(c)
        matches = [c for c in records if ref and c.id.startswith(ref)]
        if len(matches) == 1:
            return self.reconcile(matches[0])
        if len(matches) > 1:
            raise ContainerError(f"multiple IDs found with provided prefix: {ref}")
        raise ContainerError(f"No such container: {ref}")

    def reconcile(self, c: Container) -> Container:
        """Record a container whose monitor is gone (killed, or a reboot) as exited."""
        if c.status == "exited":
            return c
        if c.status == "created" and not c.monitor_pid:
            return c  # being started by a live lamina, or never started (docker's Created)
        same_boot = c.boot_id == boot_id()
        if same_boot and process_is(c.monitor_pid, c.monitor_start):
            return c
        updated = self.update(c.id, status="exited",
                              exit_code=EXIT_LOST if same_boot else EXIT_REBOOT,
                              finished=c.finished or time.time(),
                              error=c.error or ("its monitor was killed" if same_boot
                                                else "the machine rebooted"))
        if same_boot:
            _sweep_after_lost_monitor(self.path(c.id), c)
        return updated or c

    def remove(self, c: Container) -> None:
        """Remove the container's dir, then its hold on its image."""
        from lamina.store import holds
        from lamina.store.root import StoreRoot

        d = self.path(c.id)
        if d.is_dir():
            remove_tree(d)
        store = StoreRoot(self.root)
        try:
            holds.release(store, hold_name(c.id))
        finally:
            store.close()

    def iter_ids(self) -> Iterator[str]:
        return (c.id for c in self.all())


def _sweep_after_lost_monitor(d: Path, c: Container) -> None:
    """A killed monitor leaves its cgroup dirs (their processes are dead: PDEATHSIG)
    and maybe overlay work files: remove what we can, quietly."""
    for cg in c.cgroup_dirs:
        try:
            os.rmdir(cg)
        except OSError:
            pass
    from lamina.builder.sandbox.overlay import empty_dir
    try:
        empty_dir(d / "work")
    except OSError:
        pass
