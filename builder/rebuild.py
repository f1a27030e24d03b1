"""A rebuild that changes nothing, recognised before the build machinery loads.

A no-op `lamina build` is a cold Python process: importing the planner, the
executor, the sandbox and the store's writers costs more than checking that nothing
changed. So a build whose every step was a cache hit leaves a record,
ROOT/cache/builds/<request key>.json, and the next `build` with the same request
first re-checks, by content, every input its result depends on:

- the request (the key): every option of `build` as parsed, the build args as
  resolved, the context and Dockerfile paths, the working directory, the
  environment variables lamina reads (SOURCE_DATE_EPOCH, LAMINA_*, BUILDKIT_*),
  and lamina's own code (each module's path, size and mtime: another lamina may
  build another image);
- the Dockerfile's bytes;
- the whole build context as the build sees it (.dockerignore applied): the
  provenance's content digest of every visible entry (path, type, mode, content,
  link target) - a superset of what any COPY or bind mount reads - and, for a git
  work tree, the git state the provenance records; the SOURCE_DATE_EPOCH resolved;
- every base image (FROM, COPY --from, RUN --mount from=) by reference: the store
  still resolves it to the same manifest;
- every tag still names what the recorded build left it naming.

All equal: the result is the recorded one - same image, tags and attestations - and
the progress shows what the recorded build showed (every step CACHED); nothing is
written but --iidfile. Anything else - a difference, no or an unreadable record,
--no-cache, --pull, --push, --output, --cache-from/--cache-to, --check, an ADD of a
URL or git repository, a build-check finding - takes the normal path, which records
again once it is all cache hits.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

SCHEMA = "lamina.rebuild.v1"
_ENV_PREFIXES = ("LAMINA_", "BUILDKIT_")
_ENV_NAMES = ("SOURCE_DATE_EPOCH",)
# options whose effect is more than the image in the store: always the full path
_NEVER = ("no_cache", "pull", "push", "outputs", "cache_from", "cache_to", "check")

_code_stamp: str | None = None


def code_stamp() -> str:
    """lamina's own code: every module's path, size and mtime, hashed."""
    global _code_stamp
    if _code_stamp is None:
        import lamina
        import lamina.builder
        import lamina.grammar
        import lamina.store

        h = hashlib.sha256()
        for pkg in (lamina, lamina.grammar, lamina.store, lamina.builder):
            for top in pkg.__path__:
                for dirpath, dirnames, filenames in os.walk(top):
                    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                    for name in sorted(filenames):
                        if name.endswith(".py") or name.endswith(".lark") or name.endswith(".json"):
                            st = os.stat(os.path.join(dirpath, name))
                            h.update(f"{dirpath}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        _code_stamp = h.hexdigest()
    return _code_stamp


def request_key(params: Mapping[str, Any], build_args: Mapping[str, str], root: Path) -> str | None:
    """The key of a `build` request, or None when it may not take the short path."""
    if any(params.get(name) for name in _NEVER):
        return None
    if params.get("dockerfile") == "-":
        return None
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES}
    request = {
        "schema": SCHEMA, "code": code_stamp(), "root": os.path.abspath(root), "cwd": os.getcwd(),
        "context": os.path.realpath(params["context"]),
        "params": {k: v for k, v in params.items() if k not in ("progress", "iidfile")},
        "build_args": dict(build_args), "env": env,
    }
    text = json.dumps(request, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _record_path(root: Path, key: str) -> Path:
    return Path(root) / "cache" / "builds" / f"{key}.json"


def _file_sha256(path: Path) -> str | None:
    """The Dockerfile's digest, read as the build reads it (symlinks resolved inside
    its own directory, size-capped): never a host file a link points at, never a
    device that blocks."""
    from lamina.builder.context.contextfile import read_context_file
    from lamina.builder.errors import BuildError

    try:
        return hashlib.sha256(read_context_file(path, "Dockerfile")).hexdigest()
    except (OSError, BuildError):
        return None


def context_state(root: Path, context: Path, dockerfile: Path) -> dict:
    """The inputs of the build outside the store, as the record compares them."""
    from lamina.builder.attest.provenance import context_digest, git_context
    from lamina.builder.context.context import BuildContext

    ctx = BuildContext.open(context, dockerfile, Path(root) / "cache" / "statcache")
    try:
        digest = context_digest(ctx.entries())
    finally:
        ctx.stat_cache.close()
    git = git_context(Path(context))
    return {"dockerfile": _file_sha256(dockerfile), "context": digest,
            "git": json.loads(json.dumps(asdict(git) if git is not None else None, default=str))}


class ProgressRecorder:
    """Passes every call on to the build's progress display and keeps what a rebuild
    would show again: notes and cache hits, in order; anything else (a step that
    ran, output, a failure) makes the build not a no-op."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.events: list[list] = []
        self.ran = False

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if name == "cached":
                self.events.append(["cached", asdict(args[0])])
            elif name == "note":
                self.events.append(["note", str(args[0])])
            elif name not in ("finished", "close"):
                self.ran = True
            return attr(*args, **kwargs)
        return call


def _remote_sources(build) -> bool:
    from lamina.builder.plan.resolved import ResolvedCopy
    from lamina.builder.steps.files import remote_sources

    for result in build.results.values():
        for step in result.plan.steps:
            r = step.resolved
            if isinstance(r, ResolvedCopy) and any(remote_sources(r)):
                return True
    return False


def _tag_targets(store, tags) -> dict[str, str | None]:
    from lamina.store import refs

    out = {}
    for t in tags:
        name = str(refs.parse_tag(t))
        row = store.db.query_one("SELECT manifest_digest FROM tags WHERE name=?", (name,))
        out[name] = row["manifest_digest"] if row is not None else None
    return out


def _bases(store, refs_: list[str]) -> dict[str, str | None]:
    from lamina.store.errors import StoreError

    out = {}
    for ref in refs_:
        try:
            out[ref] = store.resolve(ref).manifest_digest
        except StoreError:
            out[ref] = None
    return out


def record(root: Path, key: str, *, store, build, image, recorder: ProgressRecorder,
           findings, tags, context: Path, dockerfile: Path, epoch: int | None) -> None:
    """After a build: leave the record when every step was a cache hit (and the
    build may take the short path at all); else remove a stale one."""
    path = _record_path(root, key)
    if recorder.ran or findings or _remote_sources(build):
        try:
            path.unlink()
        except OSError:
            pass
        return
    plan = build.plan()
    refs_ = []
    for stage in plan.stages:
        if stage.base_stage is None and not stage.is_scratch:
            refs_.append(stage.base)
        refs_.extend(stage.image_deps)
    data = {"schema": SCHEMA, "epoch": epoch, "state": context_state(root, context, dockerfile),
            "bases": _bases(store, sorted(set(refs_))), "tags": _tag_targets(store, tags),
            "image": image.config_digest, "events": recorder.events}
    text = json.dumps(data, sort_keys=True)
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def replay(root: Path, key: str, *, tags, context: Path, dockerfile: Path, epoch: int | None,
           progress_mode: str) -> str | None:
    """The recorded image ID when nothing it depends on changed (the progress shown
    as the recorded build showed it), else None."""
    try:
        data = json.loads(_record_path(root, key).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("epoch") != epoch:
        return None
    state = data.get("state") or {}
    if state.get("dockerfile") != _file_sha256(dockerfile):  # cheap first: an edited Dockerfile
        return None
    if state != context_state(root, context, dockerfile):
        return None
    from lamina.store.store import Store

    with Store(root) as store:
        if _bases(store, sorted(data.get("bases") or {})) != data.get("bases"):
            return None
        if _tag_targets(store, tags) != data.get("tags"):
            return None
    from lamina.builder.progress import StepLabel, make_progress

    progress = make_progress(progress_mode)
    try:
        for kind, value in data.get("events") or ():
            if kind == "cached":
                progress.cached(StepLabel(**value))
            else:
                progress.note(value)
        progress.finished(data["image"], tuple(tags), 0.0)
    finally:
        progress.close()
    return data["image"]
