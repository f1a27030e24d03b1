"""Executing one RUN step: from a planned `Step` to a `SandboxSpec`, and the sandbox
run itself (builder.sandbox), leaving the step's diff in an upper dir.

Owns what a RUN needs around the sandbox: the user (names resolved in the image's
/etc/passwd and /etc/group), HOME, the network mode (the step's `--network`, else
the build's), `RUN --mount` (bind from the context or from another stage's or an
image's layers, cache dirs kept per id in the store (seeded from a stage or an image
with `from=`: builder.steps.cachemount), tmpfs, secrets from `--secret`, ssh agents
from `--ssh` (builder.steps.ssh),
heredoc files at /dev/pipes/), and the error
a failing command becomes: step, line, exit code and the last lines of output.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import signal
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from lamina.builder.context.context import SourceTree
from lamina.builder.context.copysrc import select_sources
from lamina.builder.errors import BuildError
from lamina.builder.plan.resolved import Mount, ResolvedRun
from lamina.builder.sandbox.rootpath import resolve_in_root
from lamina.builder.sandbox.sandbox import (
    BindMount, CacheMount, LayerMount, SandboxSpec, SecretMount, TmpfsMount, run,
)
from lamina.builder.sandbox.cgroups import Limits
from lamina.builder.steps.cachemount import cache_dir_for, check_cache_subdir
from lamina.builder.steps.copyinto import copy_selection
from lamina.builder.steplog import OutputTail, StepLog, max_size_from_env
from lamina.builder.steps.ssh import SSHSource, ssh_mount
from lamina.builder.sandbox.users import resolve_user_in_layers

OUTPUT_TAIL = 20  # lines of output a failure message repeats


@dataclass(frozen=True)
class RunEnvironment:
    """What the build gives every RUN: where the context is, where cache mounts
    live, the secrets given with --secret, the build's network mode."""

    context_dir: Path
    cache_mounts_dir: Path
    secrets: Mapping[str, Path]
    network: str  # default | none | host (builder.sandbox.network)
    allow_network_host: bool = False  # the network.host entitlement (--allow network.host)
    context: SourceTree | None = None  # the context as .dockerignore lets it through
    ssh: Mapping[str, SSHSource] | None = None  # --ssh: id -> agent socket or key files
    limits: Limits = Limits()  # --memory, --pids-limit...: each step's cgroup


def _cache_dir(env: RunEnvironment, m: Mount) -> Path:
    """A persistent directory per cache id (default: the target path), owned and
    moded as the mount asks on first creation."""
    ident = m.id or m.target
    name = hashlib.sha256(ident.encode()).hexdigest()[:24]
    path = env.cache_mounts_dir / name
    if not path.exists():
        # the dirs holding cache mounts are root's alone: a cache made mode=0777 for
        # the RUN must not be a world-writable host dir another user can reach
        private_dirs(env.cache_mounts_dir)
        path.mkdir(exist_ok=True)
        os.chown(path, m.uid or 0, m.gid or 0)
        os.chmod(path, m.mode if m.mode is not None else 0o755)
    return path


LayersOf = Callable[[Mount], tuple[tuple[Path, ...], str]]


def _context_view(context: SourceTree, source: str, where: Path,
                  fail: Callable[[str], BuildError]) -> Path:
    """What a bind mount of the context shows, as BuildKit sends it: only what
    .dockerignore lets through, owned by 0:0 — a copy made under `where`, so the RUN
    sees exactly the files its cache key hashed, never an ignored one."""
    try:
        selection = select_sources(context, [source], allow_empty_wildcard=False)
    except BuildError:
        raise fail(f"RUN --mount=type=bind: source {source!r} does not exist in the build "
                   "context (or is excluded by .dockerignore)") from None
    if len(selection.sources) != 1:
        raise fail(f"RUN --mount=type=bind: source {source!r} names "
                   f"{len(selection.sources)} paths of the build context, not one")
    where.mkdir()
    copy_selection(where, selection, "/")
    (picked,) = selection.sources
    return where if picked.kind == "dir" else where / picked.name


def _mounts(step_run: ResolvedRun, env: RunEnvironment, pipes_dir: Path,
            stack: ExitStack, fail: Callable[[str], BuildError],
            layers_of: LayersOf | None = None) -> tuple:
    out = []
    for i, m in enumerate(step_run.mounts):
        if m.type == "bind":
            if m.from_stage is not None or m.from_image is not None:
                if layers_of is None:
                    raise fail(f"RUN --mount=type=bind,from={m.from_} is not supported here")
                lowers, what = layers_of(m)
                out.append(LayerMount(lower_dirs=tuple(lowers), source=m.source or "/",
                                      target=m.target, readonly=m.readonly, what=what))
                continue
            if env.context is not None:
                source = _context_view(env.context, m.source or "/",
                                       pipes_dir.parent / f"context{i}", fail)
            else:
                source = resolve_in_root(env.context_dir, m.source or "/")
            if not source.exists():
                raise fail(f"RUN --mount=type=bind: source {m.source!r} does not exist in the build context")
            out.append(BindMount(source=source, target=m.target, readonly=m.readonly))
        elif m.type == "cache":
            seed = None
            if m.from_stage is not None or m.from_image is not None:
                if layers_of is None:
                    raise fail(f"RUN --mount=type=cache,from={m.from_} is not supported here")
                seed = layers_of(m)  # the first use copies from=/source= into the cache
            path = cache_dir_for(env.cache_mounts_dir, m, seed, fail) if seed else _cache_dir(env, m)
            if m.sharing in ("locked", "private"):
                # private is served as locked: one build at a time uses the dir
                lock = open(path.parent / (path.name + ".lock"), "a")
                stack.callback(lock.close)
                fcntl.flock(lock, fcntl.LOCK_EX)
            subdir = m.source if seed is None else ""  # llb.SourcePath in the cache
            if subdir:
                check_cache_subdir(path, subdir, fail)
            out.append(CacheMount(source=path, target=m.target, readonly=m.readonly,
                                  subdir=subdir))
        elif m.type == "tmpfs":
            out.append(TmpfsMount(target=m.target, size=m.size))
        elif m.type == "secret":
            src = env.secrets.get(m.id)
            if src is None:
                if m.required:
                    raise fail(f"secret {m.id!r} is required but was not given "
                               f"(use --secret id={m.id},src=PATH)")
                continue
            if m.env:
                continue  # given through the environment (see secret_env)
            target = m.target or f"/run/secrets/{m.id}"
            out.append(SecretMount(source=Path(src), target=target,
                                   mode=m.mode if m.mode is not None else 0o400,
                                   uid=m.uid or 0, gid=m.gid or 0))
        elif m.type == "ssh":
            agent = ssh_mount(m, env.ssh or {}, stack, fail)
            if agent is not None:
                out.append(agent)
        else:
            raise fail(f"unknown mount type {m.type!r}")
    for i, f in enumerate(step_run.files):
        # the host file is named by us, never by the Dockerfile (a heredoc named
        # /tmp/x or ../../x must not write outside pipes_dir); the name only says
        # where the file appears inside the step, under /dev/pipes/
        path = pipes_dir / f"heredoc{i}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out_file:
            out_file.write(f.data)
        os.chmod(path, f.mode)
        out.append(BindMount(source=path, target=heredoc_target(f.name), readonly=True))
    return tuple(out)


def heredoc_target(name: str) -> str:
    """Where a heredoc file named `name` appears in the step: BuildKit writes it into
    a scratch dir mounted at /dev/pipes/, so the name is cleaned inside that dir."""
    return posixpath.join("/dev/pipes", posixpath.normpath("/" + name).lstrip("/"))


def private_dirs(path: Path) -> None:
    """`path` and its missing parents, created 0700 (the store's staging dirs)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)


def secret_env(step_run: ResolvedRun, env: RunEnvironment,
               fail: Callable[[str], BuildError]) -> dict[str, str]:
    """Secrets given as environment variables (`--mount=type=secret,id=x,env=NAME`)."""
    out = {}
    for m in step_run.mounts:
        if m.type == "secret" and m.env and m.id in env.secrets:
            try:
                data = Path(env.secrets[m.id]).read_bytes()
            except OSError as e:
                raise fail(f"cannot read secret {m.id!r}: {e.strerror or e}") from None
            if b"\0" in data:
                raise fail(f"secret {m.id!r} holds a NUL byte: it cannot be the environment "
                           f"variable {m.env} (mount it as a file instead)")
            out[m.env] = os.fsdecode(data)  # any other bytes reach the RUN unchanged
    return out


def check_network(step_run: ResolvedRun, env: RunEnvironment,
                  fail: Callable[[str], BuildError]) -> None:
    """`RUN --network=host` needs the network.host entitlement (BuildKit's), unless the
    build itself runs on the host's network (`--network host`, the user's own choice,
    gives every RUN nothing more than that)."""
    if step_run.network == "host" and env.network != "host" and not env.allow_network_host:
        raise fail("RUN --network=host needs the network.host entitlement: the Dockerfile "
                   "asks for the host's network; allow it with "
                   "`lamina build --allow network.host`")


def execute_run(step_run: ResolvedRun, *, lower_dirs: tuple[Path, ...], upper_dir: Path,
                work_dir: Path, scratch_dir: Path, step_env: tuple[tuple[str, str], ...],
                user: str, workdir: str, env: RunEnvironment,
                on_output: Callable[[bytes], None], fail: Callable[[str], BuildError],
                layers_of: LayersOf | None = None) -> None:
    """Run the command; the diff stays in `upper_dir`. Raises `fail(...)` with the exit
    code and the output tail when the command fails. `layers_of(mount)` gives the layer
    dirs (top-most first) and a name of the stage or image a `bind,from=` mount reads."""
    if step_run.security == "insecure":
        raise fail("RUN --security=insecure is not allowed (lamina has no entitlements)")
    check_network(step_run, env, fail)
    network = step_run.network if step_run.network in ("none", "host") else env.network
    who = resolve_user_in_layers(lower_dirs, user or "0")
    environ = dict(step_env)
    environ.setdefault("HOME", who.home or "/")
    environ.update(secret_env(step_run, env, fail))
    agents = [m.target for m in step_run.mounts if m.type == "ssh"]
    if agents:  # BuildKit: the first ssh mount, unless the environment names one
        environ.setdefault("SSH_AUTH_SOCK", agents[0])
    tail = OutputTail(OUTPUT_TAIL)

    def shown(data: bytes) -> None:
        tail.feed(data)
        on_output(data)

    # clipped as BuildKit's step log (builder.steplog); the command's output is drained
    output = StepLog(shown, max_size_from_env(os.environ)).feed

    os.chmod(scratch_dir, 0o700)
    pipes = scratch_dir / "pipes"
    pipes.mkdir(mode=0o700)
    with ExitStack() as stack:
        spec = SandboxSpec(
            lower_dirs=tuple(lower_dirs), upper_dir=upper_dir, work_dir=work_dir,
            argv=tuple(step_run.argv), env=tuple(environ.items()), cwd=workdir or "/",
            uid=who.uid, gid=who.gid, groups=tuple(who.groups), network=network,
            mounts=_mounts(step_run, env, pipes, stack, fail, layers_of), limits=env.limits)
        code = run(spec, output)
    if code != 0:
        shown = " ".join(step_run.argv)
        if code > 128:
            try:
                why = f"killed by signal {signal.Signals(code - 128).name}"
            except ValueError:
                why = f"exit code: {code}"
        else:
            why = f"exit code: {code}"
        last = tail.text().strip()
        raise fail(f"process \"{shown}\" did not complete successfully: {why}"
                   + (f"\n--- last output ---\n{last}" if last else ""))
