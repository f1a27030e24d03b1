"""SLSA provenance v1 of a lamina build: what the predicate says and how it is read back.

`provenance_predicate(inputs, mode)` (pure) turns the `BuildInputs` a build recorded
(builder.attest.record) into a `https://slsa.dev/provenance/v1` predicate, shaped as
BuildKit's (docs/attestations/slsa-definitions.md) where both have the field:

    buildDefinition.buildType            LAMINA_BUILD_TYPE (this module's format)
    buildDefinition.externalParameters
        configSource   {path, digest.sha256}       the Dockerfile (path relative to the
                                                    context when inside it)
        context        {digest.sha256} + {uri, digest.sha1 (commit), dirty} for a git work tree
        request        {frontend: dockerfile.v0, args: {build-arg:K: V, label:K: V, target: T,
                        ulimit: "nofile=S:H,..." (--ulimit, BuildKit's frontend option)}}
        sourceDateEpoch                              the epoch the image's times come from
    buildDefinition.internalParameters
        builderPlatform                              os/arch of the build machine
        dockerfile, steps                            mode=max only: the Dockerfile text and
                                                    every filesystem step (stage, line,
                                                    instruction, cache key, layer or not)
    buildDefinition.resolvedDependencies   every base image (purl + manifest digest, the
                                          image ID as annotation), every ADD URL (sha256 of
                                          its bytes) and ADD git source (commit)
    runDetails.builder                     {id: LAMINA_BUILDER_ID, version: {lamina: V}}
    runDetails.metadata                    {lamina_completeness, lamina_hermetic};
                                          no invocation ID and no start/finish times: the
                                          same build gives the same provenance (and index)

Content digests never include times; the context digest is lamina's: sha256 over
every visible context entry's [path, type, permission bits, content digest, link
target, device number] (`context_digest`), the same fields COPY's content key uses,
without the top-level .git directory (a git work tree is named by its commit).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as host_platform
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from lamina.builder.errors import BuildError

LAMINA_BUILD_TYPE = "https://lamina.invalid/attestations/dockerfile-build/v1"
LAMINA_BUILDER_ID = "https://lamina.invalid/builder/local"
MODES = ("min", "max")


# -- the --provenance / --sbom flags ------------------------------------------------------

def parse_provenance(text: str | None) -> str | None:
    """buildx's `--provenance` value -> None (off), "min" or "max". Default (no flag):
    mode=min, as buildx >= 0.10."""
    if text is None:
        return "min"
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on", ""):
        return "min"
    if value in ("false", "0", "no", "off"):
        return None
    mode = None
    for part in value.split(","):
        k, sep, v = part.partition("=")
        if not sep:
            raise BuildError(f"invalid --provenance {text!r}: expected true, false, mode=min or mode=max")
        if k == "mode" and v in MODES:
            mode = v
        elif k == "disabled" and v in ("true", "false"):
            if v == "true":
                return None
        else:
            raise BuildError(f"invalid --provenance {text!r}: lamina knows mode=min|max "
                             "(and true/false)")
    return mode or "min"


def parse_sbom(text: str | None) -> bool:
    """buildx's `--sbom` value -> on/off (default off, as buildx)."""
    if text is None:
        return False
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on", ""):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise BuildError(f"invalid --sbom {text!r}: expected true or false")


# -- what a build used -----------------------------------------------------------------

@dataclass(frozen=True)
class BaseUse:
    """An image a build read (FROM, COPY --from, RUN --mount from=), as resolved."""

    ref: str              # as the Dockerfile named it, after ARG expansion
    manifest_digest: str
    config_digest: str


@dataclass(frozen=True)
class StepUse:
    """One filesystem step as the build ran (or reused) it."""

    stage: str
    line: int
    instruction: str
    cache_key: str
    layer: bool           # did it add a layer


@dataclass(frozen=True)
class GitContext:
    commit: str
    remote: str | None
    dirty: bool


@dataclass(frozen=True)
class BuildInputs:
    """Everything the provenance names."""

    dockerfile_path: str          # relative to the context when inside it, else absolute
    dockerfile_digest: str
    dockerfile_text: str
    context_digest: str
    git: GitContext | None
    build_args: Mapping[str, str]
    target: str | None
    source_date_epoch: int
    bases: tuple[BaseUse, ...]
    remote_sources: Mapping[str, str]   # "url:URL" -> "sha256:... mtime=...", "git:REMOTE#REF" -> commit
    steps: tuple[StepUse, ...] = ()
    network_used: bool = True
    network: str = "default"           # the build's --network
    lamina_version: str = "unknown"
    labels: Mapping[str, str] = field(default_factory=dict)  # the build's --label
    ulimits: tuple[str, ...] = ()      # the build's --ulimit, "name=soft:hard" sorted by name
    platform: str = field(default_factory=lambda: "linux/" + _arch())


def _arch() -> str:
    m = host_platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


def context_digest(entries) -> str:
    """lamina's digest of a build context: its visible entries (builder.context
    ContextEntry, sorted by path) with path, type, permission bits, content digest,
    link target and device number; no times, no owners (a context's owners never
    reach an image). The top-level .git directory is left out: a git work tree is
    recorded by its commit, and every clone has its own .git."""
    records = [[e.path, e.kind, e.mode, e.digest or "", e.link_target or "", e.rdev] for e in entries
               if e.path != ".git" and not e.path.startswith(".git/")]
    blob = json.dumps(records, separators=(",", ":"), ensure_ascii=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def git_context(directory: Path) -> GitContext | None:
    """Commit, origin URL and dirtiness when `directory` is the top of a git work tree
    (no git process at all for a context without .git)."""
    if not os.path.lexists(os.path.join(directory, ".git")):
        return None
    # the context's own git config must run nothing (it is hostile input, git runs as
    # root): builder.context.worktree; submodules are not looked into (their config
    # could name commands too)
    from lamina.builder.context.worktree import git_output, strip_credentials

    def git(*args: str) -> str | None:
        return git_output(directory, *args)

    top = git("rev-parse", "--show-toplevel")
    if not top or os.path.realpath(top) != os.path.realpath(directory):
        return None
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    remote = git("remote", "get-url", "origin") or None
    if remote:  # a CI checkout's token must not end up in a pushed attestation
        remote = strip_credentials(remote)
    status = git("status", "--porcelain", "--untracked-files=normal", "--ignore-submodules=all")
    return GitContext(commit=commit, remote=remote, dirty=bool(status))


# -- the predicate (pure) ----------------------------------------------------------------

def image_purl(ref: str, platform: str) -> str:
    """`pkg:docker/NAME@TAG?platform=os%2Farch` as BuildKit writes base images."""
    name, tag = ref, "latest"
    if "@" in name:
        name = name.split("@", 1)[0]
        tag = ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    purl = f"pkg:docker/{name}" + (f"@{tag}" if tag else "")
    return purl + "?platform=" + urllib.parse.quote(platform, safe="")


def _digest_map(digest: str) -> dict[str, str]:
    algo, _, hexd = digest.partition(":")
    return {algo: hexd}


def resolved_dependencies(inputs: BuildInputs) -> list[dict[str, Any]]:
    deps: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for b in inputs.bases:
        if (b.ref, b.manifest_digest) in seen:
            continue
        seen.add((b.ref, b.manifest_digest))
        deps.append({"uri": image_purl(b.ref, inputs.platform), "name": b.ref,
                     "digest": _digest_map(b.manifest_digest),
                     "annotations": {"lamina.image.id": b.config_digest}})
    for name, value in sorted(inputs.remote_sources.items()):
        kind, _, where = name.partition(":")
        if kind == "url":
            digest = value.split()[0]
            deps.append({"uri": where, "digest": _digest_map(digest)})
        elif kind == "git":
            commit = value.split()[0]
            deps.append({"uri": where, "digest": {"sha1": commit}})
    return deps


def provenance_predicate(inputs: BuildInputs, mode: str = "min") -> dict[str, Any]:
    """The SLSA provenance v1 predicate (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"provenance mode {mode!r}")
    args = {f"build-arg:{k}": v for k, v in sorted(inputs.build_args.items())}
    if inputs.target:
        args["target"] = inputs.target
    if inputs.network != "default":  # --network none|host of the whole build (BuildKit's frontend option)
        args["force-network-mode"] = inputs.network
    args.update({f"label:{k}": v for k, v in sorted(inputs.labels.items())})  # --label, as BuildKit's
    if inputs.ulimits:  # --ulimit: BuildKit's "ulimit" option, comma-separated name=soft:hard
        args["ulimit"] = ",".join(str(u) for u in inputs.ulimits)
    context: dict[str, Any] = {"digest": _digest_map(inputs.context_digest)}
    if inputs.git is not None:
        context["git"] = {"uri": inputs.git.remote or "", "digest": {"sha1": inputs.git.commit},
                          "dirty": inputs.git.dirty}
    external = {
        "configSource": {"path": inputs.dockerfile_path, "digest": _digest_map(inputs.dockerfile_digest)},
        "context": context,
        "request": {"frontend": "dockerfile.v0", "args": args,
                    "locals": [{"name": "context"}, {"name": "dockerfile"}]},
        "sourceDateEpoch": inputs.source_date_epoch,
    }
    if inputs.git is not None and inputs.git.remote and not inputs.git.dirty:
        external["configSource"]["uri"] = f"{inputs.git.remote}#{inputs.git.commit}"
    internal: dict[str, Any] = {"builderPlatform": inputs.platform}
    if mode == "max":
        internal["dockerfile"] = inputs.dockerfile_text
        internal["steps"] = [{"stage": s.stage, "line": s.line, "instruction": s.instruction,
                              "cacheKey": s.cache_key, "layer": s.layer} for s in inputs.steps]
    return {
        "buildDefinition": {
            "buildType": LAMINA_BUILD_TYPE,
            "externalParameters": external,
            "internalParameters": internal,
            "resolvedDependencies": resolved_dependencies(inputs),
        },
        "runDetails": {
            "builder": {"id": LAMINA_BUILDER_ID, "version": {"lamina": inputs.lamina_version}},
            "metadata": {
                "lamina_completeness": {"request": True, "resolvedDependencies": True},
                "lamina_hermetic": not inputs.network_used,
            },
        },
    }


# -- reading a predicate back (verify) -----------------------------------------------------

@dataclass(frozen=True)
class RecordedBuild:
    """What `lamina verify` needs from a provenance predicate."""

    dockerfile_path: str
    dockerfile_digest: str
    dockerfile_text: str | None      # mode=max only
    context_digest: str
    git_remote: str | None
    git_commit: str | None
    git_dirty: bool
    build_args: dict[str, str]
    target: str | None
    source_date_epoch: int
    bases: tuple[tuple[str, str, str | None], ...]   # (ref, manifest digest, image ID)
    lamina_version: str
    remote_sources: Mapping[str, str] = field(default_factory=dict)  # URL or git source -> digest/commit
    network: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    ulimits: tuple = ()   # builder.sandbox.ulimits.Ulimit


def _ulimits(args: Mapping[str, Any]) -> tuple:
    """The recorded --ulimit values, read with the flag's own rules (a hostile predicate's
    value is refused, never applied as it is)."""
    from lamina.builder.sandbox.ulimits import UlimitError, parse_ulimits

    value = args.get("ulimit")
    if value is None or value == "":
        return ()
    if not isinstance(value, str):
        raise BuildError(f"the provenance's request arg 'ulimit' is not a string: "
                         f"{json.dumps(value)[:80]}")
    try:
        return parse_ulimits(value.split(","))
    except UlimitError as e:
        raise BuildError(f"the provenance's request arg 'ulimit' is not valid: {e.message}") from None


def _sha256(d: Mapping[str, Any] | None, what: str) -> str:
    if not isinstance(d, Mapping) or not isinstance(d.get("sha256"), str):
        raise BuildError(f"the provenance has no sha256 digest of {what}")
    return "sha256:" + d["sha256"]


def _text(value: Any, what: str) -> str | None:
    """A string field of a (possibly hostile) predicate, or None when absent."""
    if value is not None and not isinstance(value, str):
        raise BuildError(f"the provenance's {what} is not a string: {json.dumps(value)[:80]}")
    return value


def _strings(args: Mapping[str, Any], prefix: str) -> dict[str, str]:
    """The `PREFIX:K: V` request args as {K: V}: names non-empty, values strings (a
    hostile predicate's list or number never reaches the rebuild's config)."""
    out = {}
    for k, v in args.items():
        if k.startswith(prefix):
            name = k[len(prefix):]
            if not name or not isinstance(v, str):
                raise BuildError(f"the provenance's request arg {k!r} is not {prefix}NAME with a "
                                 f"string value")
            out[name] = v
    return out


def read_predicate(pred: Mapping[str, Any]) -> RecordedBuild:
    """The build a lamina provenance predicate records (BuildError if it is not one)."""
    try:
        bd = pred["buildDefinition"]
        if bd.get("buildType") != LAMINA_BUILD_TYPE:
            raise BuildError(f"the provenance is of build type {bd.get('buildType')!r}, not lamina's: "
                             "give --dockerfile and --expect to verify it")
        ext = bd["externalParameters"]
        cs = ext["configSource"]
        ctx = ext["context"]
        git = ctx.get("git") or {}
        args = ext.get("request", {}).get("args", {})
        build_args = _strings(args, "build-arg:")
        bases = []
        remote: dict[str, str] = {}
        for dep in bd.get("resolvedDependencies") or []:
            if isinstance(dep.get("uri"), str) and dep["uri"].startswith("pkg:docker/") and dep.get("name"):
                bases.append((dep["name"], _sha256(dep.get("digest"), dep["name"]),
                              (dep.get("annotations") or {}).get("lamina.image.id")))
            elif isinstance(dep.get("uri"), str) and isinstance(dep.get("digest"), Mapping) and dep["digest"]:
                algo, value = sorted(dep["digest"].items())[0]
                remote[dep["uri"]] = value if algo == "sha1" else f"{algo}:{value}"
        return RecordedBuild(
            dockerfile_path=cs["path"], dockerfile_digest=_sha256(cs.get("digest"), "the Dockerfile"),
            dockerfile_text=(bd.get("internalParameters") or {}).get("dockerfile"),
            context_digest=_sha256(ctx.get("digest"), "the context"),
            git_remote=_text(git.get("uri"), "context.git.uri") or None,
            git_commit=_text((git.get("digest") or {}).get("sha1"), "context.git.digest.sha1"),
            git_dirty=bool(git.get("dirty")),
            build_args=build_args, target=args.get("target"),
            source_date_epoch=int(ext.get("sourceDateEpoch", 0)),
            bases=tuple(bases), remote_sources=remote,
            network=args.get("force-network-mode", "default"),
            labels=_strings(args, "label:"),
            ulimits=_ulimits(args),
            lamina_version=(pred.get("runDetails", {}).get("builder", {}).get("version", {})
                            .get("lamina", "unknown")))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise BuildError(f"the provenance is not one lamina can rebuild from (missing {e})") from None


def steps_of(pred: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    return (pred.get("buildDefinition", {}).get("internalParameters") or {}).get("steps") or ()
