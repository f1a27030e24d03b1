"""Building the targets of a bake: checks, parallel child builds, one progress
view, labels/tags/push, the summary.

Each target is one `lamina build` in a child process (`python -m
lamina.builder.bake.child`, which dies with the bake), all on the same store, so
they share its layers and build cache; the store is made for concurrent builds
across processes. Up to `jobs` run at once. Every line a child prints is shown
once, prefixed `[TARGET] `. A target that fails stops nothing else unless
`fail_fast`: then targets not started yet are skipped and running ones stopped.

Targets that build the same Dockerfile from the same context share its stages,
as BuildKit solves a shared vertex once: when the stages every one of them needs
have one named last stage, and no build arg they differ in is read by those
stages, that stage is built first (one child, labelled `[A+B]`), and the targets
then find it in the cache.

`ulimits` go to the child as `lamina build --ulimit` (every RUN's rlimits);
`labels` go to the child as `lamina build --label` (BuildKit's frontend
`label:` attributes: set on the final config over the Dockerfile's LABELs, no
history entry); `--push` and `output type=registry` / `type=image,push=true` go to
the child as `lamina build -o` (builder.outputs: tagged and pushed once each, name=
or else the target's tags).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from lamina.builder.bake.targets import Target
from lamina.builder.context.contextfile import read_context_file
from lamina.builder.errors import BuildError
from lamina.builder.outputs import TYPES, image_names, output_from_fields

NETWORKS = ("default", "none", "host")


@dataclass(frozen=True)
class BakeOptions:
    root: Path
    jobs: int = 0                 # 0: the number of cores
    push: bool = False
    fail_fast: bool = False
    no_cache: bool = False
    pull: bool = False
    allow_network_host: bool = False  # bake --allow network.host (builder.bake.entitlements)


@dataclass(frozen=True)
class TargetResult:
    name: str
    status: str                  # built | failed | canceled
    image_id: str | None = None
    seconds: float = 0.0
    error: str | None = None
    tags: tuple[str, ...] = ()


# -- checks before anything runs ------------------------------------------------------------

def check_target(t: Target) -> list[str]:
    """Refuse what lamina cannot build (clear errors); notes for the user."""
    from lamina.builder.plan.resolved import Platform

    where = f"target {t.name!r}"
    if t.ssh:
        raise BuildError(f"{where}: ssh ({', '.join(t.ssh)}) is not supported by lamina bake; "
                         "build this image with `lamina build --ssh` instead")
    host = Platform.host()
    for platform in t.platforms:
        if platform == "local":  # buildx: the platform of the builder, here the host
            continue
        try:
            wanted = Platform.parse(platform)
        except Exception:  # noqa: BLE001 - any parse failure is the user's text
            raise BuildError(f"{where}: invalid platform {platform!r}") from None
        if wanted != host:
            raise BuildError(f"{where}: platform {platform} is not this host's ({host}); "
                             "lamina builds only for the host platform")
    for what, pairs in (("label", t.labels), ("arg", t.args)):  # `--label K=V` / `--build-arg K=V`
        for key, _ in pairs:
            if not key or "=" in key:
                raise BuildError(f"{where}: {what} name {key!r} is empty or holds a '='")
    for ulimit in t.ulimits:  # `lamina build --ulimit`'s rules, said before any build
        from lamina.builder.sandbox.ulimits import UlimitError, parse_ulimit
        try:
            parse_ulimit(ulimit)
        except UlimitError as e:
            raise BuildError(f"{where}: ulimits: {e.message}") from None
    if t.network is not None and t.network not in NETWORKS:
        raise BuildError(f"{where}: network {t.network!r} is not supported "
                         f"(use one of {', '.join(NETWORKS)})")
    if t.dockerfile_inline is None:
        if not t.context.is_dir():
            raise BuildError(f"{where}: the build context {t.context} is not a directory "
                             "(remote contexts are not supported)")
        if not t.dockerfile.is_file():
            raise BuildError(f"{where}: cannot read the Dockerfile {t.dockerfile}: no such file")
    elif not t.context.is_dir():
        raise BuildError(f"{where}: the build context {t.context} is not a directory")
    for ident, src, env in t.secrets:
        if src and not Path(src).is_file():
            raise BuildError(f"{where}: secret {ident}: {src} is not a readable file")
        if env and env not in os.environ:
            raise BuildError(f"{where}: secret {ident}: environment variable {env} is not set")
    wanted = []
    for output in t.outputs:
        fields = dict(output)
        kind = fields.get("type", "")
        if kind == "cacheonly" or (kind == "docker" and "dest" not in fields):
            continue  # nothing to write: the image is in the store
        if kind not in TYPES:
            raise BuildError(f"{where}: output type {kind!r} is not supported")
        try:  # as `lamina build -o` reads it (builder.outputs), before anything runs
            wanted.append(output_from_fields(fields, _csv(output)))
            image_names(wanted, t.tags)
        except BuildError as e:
            raise BuildError(f"{where}: {e}") from None
    return []


# -- one target --------------------------------------------------------------------------------

class _Workspace:
    """Files a target's child build needs (an inline Dockerfile, env secrets)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lamina-bake-"))
        os.chmod(self.dir, 0o700)

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def build_argv(t: Target, options: BakeOptions, workspace: _Workspace, iidfile: Path) -> list[str]:
    """The `lamina build` command line of one target."""
    dockerfile = t.dockerfile
    if t.dockerfile_inline is not None:
        dockerfile = workspace.write("Dockerfile", t.dockerfile_inline)
    argv = ["--root", str(options.root), "build", "--progress", "plain",
            "-f", str(dockerfile), "--iidfile", str(iidfile)]
    for tag in t.tags:
        argv += ["-t", tag]
    if options.push:  # also a registry output (with_push): pushed once
        argv.append("--push")
    for key, value in t.labels:
        argv += ["--label", f"{key}={value}"]
    for key, value in t.args:
        argv += ["--build-arg", f"{key}={value}"]
    if t.target:
        argv += ["--target", t.target]
    if t.no_cache or options.no_cache:
        argv.append("--no-cache")
    if t.pull or options.pull:
        argv.append("--pull")
    if t.network:
        argv += ["--network", t.network]
    for ulimit in t.ulimits:
        argv += ["--ulimit", ulimit]
    if options.allow_network_host:
        argv += ["--allow", "network.host"]
    for number, (ident, src, env) in enumerate(t.secrets):
        if env:
            src = str(workspace.write(f"secret-{number}", os.environ[env]))
        argv += ["--secret", _csv((("id", ident), ("src", src)))]
    for entry in t.cache_from:
        argv += ["--cache-from", _csv(entry)]
    for entry in t.cache_to:
        argv += ["--cache-to", _csv(entry)]
    for output in t.outputs:
        fields = dict(output)
        if fields.get("type") in ("oci", "tar", "local", "image", "registry"):
            argv += ["--output", _csv(output)]
    argv.append(str(t.context))
    return argv


def _csv(pairs) -> str:
    """`k=v,k=v` for a `lamina build` flag (entries holding ',' were refused before
    anything ran: Target.ambiguous_flag_values)."""
    return ",".join(f"{k}={v}" for k, v in pairs)


class _View:
    """One progress view for every target: whole lines, each labelled."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def line(self, name: str, text: str) -> None:
        with self.lock:
            self.stream.write(f"[{name}] {text}\n")
            self.stream.flush()


class Bake:
    """Builds a list of targets; `run()` returns one result per target, in order."""

    def __init__(self, targets: list[Target], options: BakeOptions, stream: TextIO) -> None:
        self.targets = targets
        self.options = options
        self.view = _View(stream)
        self.stop = threading.Event()
        self.children: dict[str, subprocess.Popen] = {}
        self.children_lock = threading.Lock()

    def run(self) -> list[TargetResult]:
        jobs = self.options.jobs or os.cpu_count() or 1
        self.slots = threading.Semaphore(max(1, jobs))
        results: dict[str, TargetResult] = {}
        # with --no-cache a target cannot reuse what another built first
        warmups = [] if self.options.no_cache else shared_stages(self.targets)
        warm_of = {name: w for w in warmups for name in w.members}
        warm_done = {w.label: threading.Event() for w in warmups}
        warm_error: dict[str, str | None] = {}

        def warm(w: SharedStages) -> None:
            try:
                with self.slots:
                    if not self.stop.is_set():
                        warm_error[w.label] = self._warm(w)
            finally:
                warm_done[w.label].set()

        def one(t: Target) -> None:
            w = warm_of.get(t.name)
            if w is not None:
                warm_done[w.label].wait()
                if warm_error.get(w.label):
                    results[t.name] = self._failed(t, 0.0, f"shared stages ({w.stage}): "
                                                           f"{warm_error[w.label]}")
                    return
            with self.slots:
                results[t.name] = self._one(t)

        threads = [threading.Thread(target=warm, args=(w,), name=f"bake-{w.label}", daemon=True)
                   for w in warmups]
        threads += [threading.Thread(target=one, args=(t,), name=f"bake-{t.name}", daemon=True)
                    for t in self.targets]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt:
            self.stop.set()
            self._terminate_all()
            raise
        return [results.get(t.name) or TargetResult(t.name, "canceled", error="not started")
                for t in self.targets]

    def _warm(self, w: "SharedStages") -> str | None:
        """Build the shared stages once; the error line if that failed."""
        workspace = _Workspace()
        try:
            argv = build_argv(w.target, self.options, workspace, workspace.dir / "iid")
            code, last_error = self._child(w.label, argv)
            if code != 0:
                return last_error or f"lamina build exited with {code}"
            return None
        finally:
            workspace.remove()

    def _terminate_all(self) -> None:
        with self.children_lock:
            for child in self.children.values():
                if child.poll() is None:
                    child.terminate()

    def _one(self, t: Target) -> TargetResult:
        if self.stop.is_set():
            return TargetResult(t.name, "canceled", error="not started (--fail-fast)")
        started = time.monotonic()
        workspace = _Workspace()
        try:
            iidfile = workspace.dir / "iid"
            argv = build_argv(t, self.options, workspace, iidfile)
            code, last_error = self._child(t.name, argv)
            seconds = time.monotonic() - started
            if code != 0:
                if self.stop.is_set() and last_error is None:
                    return TargetResult(t.name, "canceled", seconds=seconds,
                                        error="stopped (--fail-fast)")
                return self._failed(t, seconds, last_error or f"lamina build exited with {code}")
            image_id = iidfile.read_text().strip()
            return TargetResult(t.name, "built", image_id=image_id,
                                seconds=time.monotonic() - started, tags=t.tags)
        finally:
            workspace.remove()

    def _failed(self, t: Target, seconds: float, error: str) -> TargetResult:
        if self.options.fail_fast and not self.stop.is_set():
            self.stop.set()
            self.view.line(t.name, "failed: stopping the other targets (--fail-fast)")
            self._terminate_all()
        return TargetResult(t.name, "failed", seconds=seconds, error=error)

    def _child(self, name: str, argv: list[str]) -> tuple[int, str | None]:
        env = dict(os.environ, LAMINA_BAKE_PARENT=str(os.getpid()), PYTHONUNBUFFERED="1")
        child = subprocess.Popen([sys.executable, "-m", "lamina.builder.bake.child", *argv],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, env=env)
        with self.children_lock:
            self.children[name] = child
        if self.stop.is_set():
            child.terminate()
        last_error = None
        assert child.stdout is not None
        for raw in child.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if text.startswith("lamina: "):
                last_error = text[len("lamina: "):]
            self.view.line(name, text)
        code = child.wait()
        with self.children_lock:
            self.children.pop(name, None)
        return code, last_error


@dataclass(frozen=True)
class SharedStages:
    """Stages several targets need, built once before them."""

    label: str                   # shown as [label] in the progress view
    stage: str                   # the last shared stage (built with --target)
    members: tuple[str, ...]     # the targets that wait for it
    target: Target               # the build of the shared stages


def shared_stages(targets: list[Target]) -> list[SharedStages]:
    """Groups of targets (same context, same Dockerfile text, same build options)
    whose stage sets overlap in one named last stage, reading no build arg they
    differ in. Planning problems mean no sharing: each target reports its own."""
    groups: dict[tuple, list[Target]] = {}
    for t in targets:
        if t.no_cache:
            continue
        try:  # read as the build reads it: symlinks resolved inside its directory, capped
            text = t.dockerfile_inline if t.dockerfile_inline is not None else \
                read_context_file(t.dockerfile, "Dockerfile").decode("utf-8")
        except (OSError, UnicodeDecodeError, BuildError):
            continue
        key = (str(t.context), text, t.network, t.no_cache, t.pull, t.secrets, t.ulimits)
        groups.setdefault(key, []).append(t)
    out = []
    for (_, text, *_rest), members in groups.items():
        if len(members) < 2:
            continue
        for stage, names, args in _common_stages(text, members):
            first = next(t for t in members if t.name == names[0])
            label = "+".join(names)
            out.append(SharedStages(label=label, stage=stage, members=names,
                                    target=replace(first, name=label, target=stage, args=args,
                                                   tags=(), labels=(), outputs=(),
                                                   cache_to=())))
    return out


def _common_stages(text: str, members: list[Target]) -> list[tuple[str, tuple[str, ...], tuple]]:
    """(stage name, targets, build args) for each named stage built once for
    several targets: deepest stages first, each target in at most one group."""
    from lamina.builder.plan.plan import plan_build
    from lamina.builder.plan.resolved import Platform
    from lamina.grammar import DockerfileError, ast, parse

    try:
        dockerfile = parse(text, path=str(members[0].dockerfile))
        plans = {t.name: plan_build(dockerfile, build_args=dict(t.args), target=t.target,
                                    platform=Platform.host()) for t in members}
    except (DockerfileError, BuildError):
        return []
    by_name = {t.name: t for t in members}
    needs = {name: set(plan.order()) for name, plan in plans.items()}
    taken: set[str] = set()
    out = []
    for index in sorted(set().union(*needs.values()), reverse=True):
        names = tuple(n for n in by_name if index in needs[n] and n not in taken)
        if len(names) < 2:
            continue
        stage = plans[names[0]].stage(index)
        if not stage.name or plans[names[0]].stage(stage.name).index != index:
            continue
        arg_sets = [dict(by_name[n].args) for n in names]
        same = {k: v for k, v in arg_sets[0].items() if all(a.get(k) == v for a in arg_sets[1:])}
        differing = {k for a in arg_sets for k in a} - set(same)
        closure, todo = set(), [index]
        while todo:
            i = todo.pop()
            if i not in closure:
                closure.add(i)
                todo.extend(plans[names[0]].stage(i).stage_deps)
        read: set[str] = set()
        for i in closure:
            st = plans[names[0]].stage(i)
            read |= set(st.global_args_used)
            read |= {d.name for inst in st.instructions if isinstance(inst, ast.Arg)
                     for d in inst.args}
        if read & differing:
            continue
        taken.update(names)
        out.append((stage.name, names, tuple(sorted(same.items()))))
    return out


def summary(results: list[TargetResult]) -> str:
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        if r.status == "built":
            tags = f"  {', '.join(r.tags)}" if r.tags else ""
            lines.append(f"  {r.name:<{width}}  built     {r.image_id}  {r.seconds:.1f}s{tags}")
        else:
            lines.append(f"  {r.name:<{width}}  {r.status:<8}  {r.error}")
    built = sum(1 for r in results if r.status == "built")
    head = f"bake: {built} of {len(results)} target(s) built"
    return "\n".join([head, *lines])


def with_push(t: Target) -> Target:
    """`--push`: every result goes to its registry (`--set *.push=true`)."""
    return replace(t, outputs=t.outputs + ((("type", "registry"),),))
