"""ADD of git repositories: which sources are git URLs, cloning at a ref with the git
CLI, and copying the checkout into the image (see builder.steps.add for the ADD
semantics as a whole; that module re-exports this API).

- `parse_git_source(src, allow_file=False)` -> GitSource | None: BuildKit's
  gitutil.ParseGitRef rules: git:// and ssh:// URLs, `user@host:path`, http(s)
  URLs whose path ends in `.git`; fragment `#ref:subdir` or
  `##ref=..,commit=..,subdir=..`. `file://` only with allow_file (tests): a
  Dockerfile must not read repositories of the host.
- `identify_git(source, dest_tmp, *, network)` -> GitIdentity(source, commit, ref):
  the commit the step's cache key needs, without cloning (BuildKit's git source
  does the same): a full commit id given as the ref is taken as is; otherwise one
  `git ls-remote <remote> <ref> <ref>^{}` and the ref resolved with git's own
  precedence (the name as given, refs/<ref>, refs/tags/<ref> - annotated tags
  peeled to their commit -, refs/heads/<ref>); no ref = the remote's HEAD. An
  abbreviated commit id is not a ref (as in BuildKit: give the full id). `commit=`
  of the fragment is checked against the resolved commit.
- `fetch_identified_git(identity, dest_tmp, *, keep_git_dir)` -> FetchedGit: the
  checkout for a cache miss: the fully named ref is fetched and must still be at
  the identified commit.
- `fetch_git(source, dest_tmp, *, keep_git_dir, network)` -> FetchedGit(path, commit,
  subdir): `git init` + shallow `fetch` of the ref (full fetch as a fallback for a bare
  commit id), checkout, `.git` removed unless keep_git_dir; no host git config
  (GIT_CONFIG_NOSYSTEM, GIT_CONFIG_GLOBAL=/dev/null, HOME in the temp dir), no
  prompts, children die with us (PR_SET_PDEATHSIG). Our choice: every checked-out
  entry gets the commit time as mtime (a checkout's own times are arbitrary).
  Submodules are not fetched.
- `add_git(root, fetched, dest, workdir, *, chown, chmod)`: the checkout (or its
  subdir) copied into `dest` as a directory source, owner 0:0 or --chown.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

from lamina.builder.context.context import SourceTree
from lamina.builder.context.copysrc import select_sources
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.linux import set_pdeathsig
from lamina.builder.steps.chmod import ChmodSpec
from lamina.builder.steps.copy import CopyStats
from lamina.builder.steps.copyinto import copy_selection

__all__ = ["FetchedGit", "GitIdentity", "GitSource", "add_git", "fetch_git",
           "fetch_identified_git", "identify_git", "parse_git_source"]


@dataclass(frozen=True)
class GitSource:
    """A git ADD source: `remote` for the git CLI, `ref` (branch, tag, commit; ""
    = the remote's HEAD), `subdir` inside the repository, `commit` to verify."""

    remote: str
    ref: str = ""
    subdir: str = ""
    commit: str = ""

    @property
    def is_local(self) -> bool:
        return self.remote.startswith("file://")


_SCP = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!//)")
_PROTO = re.compile(r"^([A-Za-z0-9]+)://")


def _fragment(fragment: str) -> tuple[str, str, str]:
    if fragment.startswith("#"):
        ref = subdir = commit = ""
        for field in (f for f in fragment[1:].split(",") if f):
            key, sep, value = field.partition("=")
            if not sep:
                raise BuildError(f"invalid git URL fragment field {field!r}: must be key=value")
            key = key.lower()
            if key == "ref":
                ref = value
            elif key == "subdir":
                subdir = value
            elif key == "commit":
                commit = value
            else:
                raise BuildError(f"unexpected key {key!r} in git URL fragment "
                                 "(supported keys: ref, commit, subdir)")
        return ref or commit, subdir, commit
    ref, _, subdir = fragment.partition(":")
    return ref, subdir, ""


def parse_git_source(src: str, *, allow_file: bool = False) -> GitSource | None:
    """The git source `src` names, or None when it is not a git URL (BuildKit's rules:
    git:// and ssh:// URLs, `user@host:path`, http(s) URLs whose path ends in .git;
    file:// only with allow_file)."""
    m = _PROTO.match(src)
    if m:
        proto = m.group(1).lower()
        if proto == "file" and not allow_file:
            return None
        if proto not in ("http", "https", "git", "ssh", "file"):
            return None
        parts = urllib.parse.urlsplit(src)
        if proto in ("http", "https") and not parts.path.endswith(".git"):
            return None
        remote = urllib.parse.urlunsplit(parts._replace(fragment=""))
        fragment = src.partition("#")[2]
    elif _SCP.match(src):
        remote, _, fragment = src.partition("#")
    else:
        return None
    ref, subdir, commit = _fragment(fragment)
    for what, value in (("ref", ref), ("commit", commit)):
        if value.startswith("-"):  # would reach git fetch / ls-remote as an option
            raise BuildError(f"invalid git {what} {value!r} in {remote}: a ref or commit cannot "
                             "start with '-'")
    return GitSource(remote=remote, ref=ref, subdir=subdir, commit=commit)


@dataclass(frozen=True)
class FetchedGit:
    """A checked-out repository at `path` (a directory under dest_tmp), at `commit`."""

    source: GitSource
    path: Path
    commit: str
    subdir: str


def _git_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_ASKPASS": "true",
            # not the invoking user's ~/.ssh/config (its hosts, proxies, commands), as BuildKit
            "GIT_SSH_COMMAND": "ssh -F /dev/null -o BatchMode=yes"}


def _die_with_parent() -> None:
    try:
        set_pdeathsig(signal.SIGKILL)
    except Exception:  # noqa: BLE001 - best effort in the child, before exec
        pass


def _git(args: list[str], cwd: Path, env: dict[str, str], what: str,
         timeout: float, allow_file: bool = False) -> str:
    if shutil.which("git") is None:
        raise BuildError("ADD of a git repository needs the git command, which is not installed")
    try:
        pre = ["-c", "protocol.file.allow=always"] if allow_file else []
        p = subprocess.run(["git", *pre, *args], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=timeout,
                           preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: git {args[0]} timed out after {timeout:.0f}s") from None
    if p.returncode != 0:
        raise BuildError(f"{what}: git {args[0]} failed: {p.stderr.strip() or p.returncode}")
    return p.stdout


def fetch_git(source: GitSource, dest_tmp: str | os.PathLike, *, keep_git_dir: bool = False,
              network: bool = True, timeout: float = 600.0) -> FetchedGit:
    """Clone `source` at its ref into a new directory under `dest_tmp` (shallow when
    the server allows it). Every file's mtime becomes the commit time."""
    what = f"ADD {source.remote}"
    if not network and not source.is_local:
        raise BuildError(f"{what}: network access is disabled for this build (use --network host)")
    base = Path(dest_tmp) / f"git-{os.getpid()}-{time.monotonic_ns()}"
    repo = base / "repo"
    home = base / "home"
    home.mkdir(parents=True, mode=0o700)
    env = _git_env(home)
    local = source.is_local
    _git(["init", "-q", str(repo)], base, env, what, timeout)
    _git(["remote", "add", "origin", source.remote], repo, env, what, timeout)
    ref = source.ref or "HEAD"
    try:
        _git(["fetch", "-q", "--depth=1", "--no-tags", "origin", ref], repo, env, what, timeout,
             local)
    except BuildError:
        if not re.fullmatch(r"[0-9a-f]{7,64}", ref):
            raise
        # a commit id some servers do not serve shallowly: fetch everything
        _git(["fetch", "-q", "--tags", "origin"], repo, env, what, timeout, local)
        _git(["fetch", "-q", "origin", ref], repo, env, what, timeout, local)
    _git(["-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"], repo, env, what,
         timeout)
    commit = _git(["rev-parse", "HEAD"], repo, env, what, timeout).strip()
    if source.commit and not commit.startswith(source.commit):
        raise BuildError(f"{what}: ref {ref} is at commit {commit}, not the expected "
                         f"{source.commit}")
    ctime = int(_git(["log", "-1", "--format=%ct", "HEAD"], repo, env, what, timeout).strip())
    if not keep_git_dir:
        shutil.rmtree(repo / ".git")
    _set_times(repo, ctime * 10**9)
    subdir = posixpath.normpath("/" + source.subdir).lstrip("/") if source.subdir else ""
    return FetchedGit(source=source, path=repo, commit=commit, subdir=subdir)


_FULL_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ABBREVIATED = re.compile(r"[0-9a-f]{7,63}")


@dataclass(frozen=True)
class GitIdentity:
    """What a git source contributes to a cache key: the `commit` its ref names now.
    `ref` is the full ref name that was resolved ("" when the commit was given)."""

    source: GitSource
    commit: str
    ref: str = ""


def _pick_ref(listing: str, ref: str) -> tuple[str, str] | None:
    """(full ref name, commit) `ref` names in `git ls-remote` output, by git's own
    precedence (the rev-parse rules `git fetch` applies); annotated tags peeled."""
    found: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if sha and name:
            found[name] = sha
    for name in (ref, f"refs/{ref}", f"refs/tags/{ref}", f"refs/heads/{ref}"):
        for shown in (name + "^{}", name):
            if shown in found:
                return name, found[shown]
    return None


def identify_git(source: GitSource, dest_tmp: str | os.PathLike, *, network: bool = True,
                 timeout: float = 600.0) -> GitIdentity:
    """The commit `source` names, from the remote's ref listing (no clone)."""
    what = f"ADD {source.remote}"
    if not network and not source.is_local:
        raise BuildError(f"{what}: network access is disabled for this build (use --network host)")
    ref = source.ref or "HEAD"
    if _FULL_COMMIT.fullmatch(ref):
        identity = GitIdentity(source=source, commit=ref)
    else:
        home = Path(dest_tmp) / f"git-home-{os.getpid()}-{time.monotonic_ns()}"
        home.mkdir(parents=True, mode=0o700)
        listing = _git(["ls-remote", "--", source.remote, ref, ref + "^{}"], home,
                       _git_env(home), what, timeout, source.is_local)
        picked = _pick_ref(listing, ref)
        if picked is None:
            hint = (" (an abbreviated commit id cannot be looked up remotely: give all "
                    "40 hex digits)") if _ABBREVIATED.fullmatch(ref) else ""
            raise BuildError(f"{what}: the repository has no ref {ref!r}{hint}")
        identity = GitIdentity(source=source, commit=picked[1], ref=picked[0])
    if source.commit and not identity.commit.startswith(source.commit):
        raise BuildError(f"{what}: ref {ref} is at commit {identity.commit}, not the expected "
                         f"{source.commit}")
    return identity


def fetch_identified_git(identity: GitIdentity, dest_tmp: str | os.PathLike, *,
                         keep_git_dir: bool = False, timeout: float = 600.0) -> FetchedGit:
    """The checkout of an identified source at its identified commit (a cache miss)."""
    by_name = replace(identity.source, ref=identity.ref or identity.commit, commit="")
    fetched = fetch_git(by_name, dest_tmp, keep_git_dir=keep_git_dir, timeout=timeout)
    if fetched.commit != identity.commit:
        raise BuildError(f"ADD {by_name.remote}: {identity.ref} moved while building (from "
                         f"{identity.commit} to {fetched.commit}); build again")
    return replace(fetched, source=identity.source)


def _set_times(top: Path, ns: int) -> None:
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(ns, ns), follow_symlinks=False)
    os.utime(top, ns=(ns, ns))


def add_git(root: str | os.PathLike, fetched: FetchedGit, dest: str, workdir: str = "/", *,
            chown: tuple[int, int] | None = None,
            chmod: "str | int | ChmodSpec | None" = None,
            source_date_epoch: int | None = None) -> CopyStats:
    """Copy the checkout (or its subdir) into `dest`, as a directory source."""
    tree = SourceTree(fetched.path)
    tree.preserves_ownership = False
    try:
        selection = select_sources(tree, [fetched.subdir or "."])
    except BuildError:
        raise BuildError(f"ADD {fetched.source.remote}: subdirectory {fetched.subdir!r} not "
                         f"found at commit {fetched.commit}") from None
    return copy_selection(root, selection, dest, workdir, chown=chown, chmod=chmod,
                          source_date_epoch=source_date_epoch, instruction="ADD")
