"""COPY/ADD sources: which files of a source tree a COPY reads, the content key of
exactly those files, and where each one lands in the image.

Owns, following BuildKit's dockerfile2llb + fsutil copy (read, not copied):
- `select_sources(tree, sources, excludes=, parents=)` -> `CopySelection`:
  sources are tree-relative (`/x` and `../x` are clamped inside the root, like
  `path.Join("/", src)`); a source path follows symlinks *inside* the tree; a
  component with `*` `?` `[` makes it a wildcard matched with Go filepath.Match
  (`**` is not special); a wildcard that matches nothing selects nothing
  (BuildKit's AllowEmptyWildcard) while a literal source that does not exist is an
  error; a directory source means its content; `--exclude` patterns (the
  .dockerignore language) filter paths relative to the copied source; `--parents`
  keeps the path below the pivot (`/./`, default the root) and its pattern speaks
  the .dockerignore language (so `**` works).
- `content_key(selection)`: sha256 over what the copy reads and writes: relative
  path, type, permission bits, content digest, link target (and uid/gid only for
  trees that keep ownership, i.e. not the build context). Never times.
- `plan_copy(selection, dest, workdir, is_dir_in_image)`: docker's destination rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from lamina.builder.context.context import ContextEntry, SourceTree
from lamina.builder.context.dockerignore import IgnoreRules, ensure_patterns
from lamina.builder.context.patterns import GlobPattern, PatternError, go_clean, has_wildcards
from lamina.builder.errors import BuildError

__all__ = ["CopyAction", "CopySelection", "SelectedEntry", "SelectedSource",
           "content_key", "plan_copy", "resolve_in_tree", "select_sources"]

_MAX_SYMLINKS = 255


@dataclass(frozen=True)
class SelectedEntry:
    """One thing the copy reads. `rel` is where it lands relative to the source's
    landing point ("" for a non-directory source itself); `path` is its place in the
    source tree."""

    rel: str
    path: str
    abs_path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    link_target: str | None
    digest: str | None
    rdev: int = 0


@dataclass(frozen=True)
class SelectedSource:
    """One matched source. `kind == "dir"` means "copy the content of `path`"
    (entries relative to it); otherwise `entries` holds the single entry, which
    lands under `name` inside a directory destination."""

    spec: str
    path: str
    abs_path: str
    name: str
    kind: str
    from_wildcard: bool
    parents: bool
    entries: tuple[SelectedEntry, ...]


@dataclass(frozen=True)
class CopySelection:
    sources: tuple[SelectedSource, ...]
    preserves_ownership: bool

    @property
    def entries(self) -> tuple[SelectedEntry, ...]:
        return tuple(e for s in self.sources for e in s.entries)


@dataclass(frozen=True)
class CopyAction:
    """One step of a copy. kind "mkdir": make sure directory `dest` exists (0755 when
    created, source metadata not applied); other kinds copy `entry` to `dest`.
    `source` names the matched source the action comes from (its place in the
    selection, then the argument): hard links are kept among the files of one match
    (inside one directory source), never across two - not across two matches of one
    wildcard either (BuildKit's file backend resolves the wildcard itself and runs one
    fsutil copy, with its own inode map, per match: solver/llbsolver/file/backend.go
    docopy)."""

    src_abs: str
    dest: str
    kind: str
    entry: SelectedEntry | None = None
    source: str = ""


# ---------------------------------------------------------------------------------
# path resolution inside a tree

def _not_found(tree: SourceTree, shown: str) -> BuildError:
    return BuildError(f"COPY failed: {tree.not_found_hint}: stat {shown}: file does not exist")


def resolve_in_tree(tree: SourceTree, rel: str, *, follow_final: bool = True) -> str | None:
    """Resolve `rel` inside `tree` the way a chroot would: symlinks are followed with
    the tree root as `/` (absolute targets and `..` never leave it). Returns the
    resolved tree-relative path of a visible entry, or None. Symlinks crossed must
    themselves be visible (not excluded by the ignore rules)."""
    parts = deque(p for p in tree.normalize(rel).split("/") if p)
    done: list[str] = []
    hops = 0
    while parts:
        comp = parts.popleft()
        if comp == ".":
            continue
        if comp == "..":
            if done:
                done.pop()
            continue
        cur = "/".join(done + [comp])
        st = tree.lstat(cur)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode) and (parts or follow_final):
            if not tree.visible(cur, False):
                return None
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise BuildError(f"COPY failed: too many levels of symbolic links resolving {rel}")
            target = tree.readlink(cur)
            if target.startswith("/"):
                done = []
            parts.extendleft(reversed([p for p in target.split("/") if p]))
            continue
        if parts and not stat.S_ISDIR(st.st_mode):
            return None
        done.append(comp)
    result = "/".join(done)
    st = tree.lstat(result)
    if st is None or not tree.visible(result, stat.S_ISDIR(st.st_mode)):
        return None
    return result


def _abs(tree: SourceTree, rel: str) -> str:
    return os.path.join(os.fspath(tree.root), rel) if rel else os.fspath(tree.root)


def _selected(tree: SourceTree, e: ContextEntry, rel: str) -> SelectedEntry:
    return SelectedEntry(rel=rel, path=e.path, abs_path=_abs(tree, e.path), kind=e.kind,
                         mode=e.mode, uid=e.uid, gid=e.gid, size=e.size,
                         link_target=e.link_target, digest=e.digest, rdev=e.rdev)


def _filter_tree(entries: list[tuple[str, ContextEntry]],
                 keep: Callable[[str], bool]) -> list[tuple[str, ContextEntry]]:
    """Keep the entries for which keep(rel) holds, plus every directory that holds a
    kept non-directory (its parents are needed to hold it). `entries` come in walk
    order (a directory before its content): the directories holding an entry are the
    open ones on a stack, so a deep tree costs its length, not its depth squared."""
    chosen = [False] * len(entries)
    holds = [False] * len(entries)  # a directory holding a kept non-directory
    holders: list[int] = []  # indexes of the directories holding the current entry
    for i, (rel, e) in enumerate(entries):
        while holders:
            top = entries[holders[-1]][0]
            if len(rel) > len(top) and rel[len(top)] == "/" and rel.startswith(top):
                break
            holders.pop()
        if e.is_dir:
            chosen[i] = keep(rel)
            holders.append(i)
        elif keep(rel):
            chosen[i] = True
            for j in reversed(holders):
                if holds[j]:
                    break  # and so are the ones above it
                holds[j] = chosen[j] = True
    return [pair for pair, c in zip(entries, chosen) if c]


def _dir_entries(tree: SourceTree, path: str, excludes: IgnoreRules,
                 include: IgnoreRules | None = None) -> list[SelectedEntry]:
    """The content of directory `path`, relative to it, filtered by --exclude (and,
    for --parents, by the include pattern)."""
    prefix = path + "/" if path else ""
    descend = None
    # asked in walk order: each path resumes from its directory's state (linear in names)
    wanted = include.walk_matcher() if include is not None else None
    unwanted = excludes.walk_matcher() if excludes else None
    if wanted is not None:
        pick = include.walk_matcher()

        def descend(child: str) -> bool:
            rel = child[len(prefix):]
            info = pick.info(rel)
            return info.excluded or any(
                (not p.exception) and p.may_match_below(rel, info.depth) for p in include.patterns)
    pairs = [(e.path[len(prefix):], e) for e in tree.walk(path, descend=descend)]

    def keep(rel: str) -> bool:
        if wanted is not None and not wanted.excluded(rel):
            return False
        return not (unwanted is not None and unwanted.excluded(rel))
    kept = _filter_tree(pairs, keep)
    return [_selected(tree, e, rel) for rel, e in kept]


# ---------------------------------------------------------------------------------
# selection

def _glob_matches(tree: SourceTree, base: str, glob: GlobPattern, depth: int) -> list[str]:
    """Tree paths below directory `base` whose path relative to `base` matches
    `glob`, in filepath.Walk order (lexical, pre-order; a matching directory is not
    entered). `depth` = number of components of the pattern."""
    out: list[str] = []

    def visit(d: str, level: int) -> None:
        for e in tree.children(d):
            rel = e.path[len(base) + 1:] if base else e.path
            if glob.match(rel):
                out.append(e.path)
                continue
            if e.is_dir and level < depth:
                visit(e.path, level + 1)
    visit(base, 1)
    return out


def _source_from(tree: SourceTree, spec: str, written: str, resolved: str, wildcard: bool,
                 excludes: IgnoreRules) -> SelectedSource:
    entry = tree.entry(resolved)
    if entry is None:
        raise _not_found(tree, written)
    name = written.rpartition("/")[2]
    if entry.is_dir:
        entries = tuple(_dir_entries(tree, resolved, excludes))
    else:
        entries = (_selected(tree, entry, ""),)
    return SelectedSource(spec=spec, path=resolved, abs_path=_abs(tree, resolved), name=name,
                          kind=entry.kind, from_wildcard=wildcard, parents=False, entries=entries)


def _select_one(tree: SourceTree, spec: str, excludes: IgnoreRules,
                allow_empty_wildcard: bool) -> list[SelectedSource]:
    clean = tree.normalize(spec)
    comps = clean.split("/") if clean else []
    first = next((i for i, c in enumerate(comps) if has_wildcards(c)), None)
    if first is None:
        resolved = resolve_in_tree(tree, clean)
        if resolved is None:
            raise _not_found(tree, clean or ".")
        return [_source_from(tree, spec, clean, resolved, False, excludes)]
    base = "/".join(comps[:first])
    pattern = "/".join(comps[first:])
    try:
        glob = GlobPattern.compile(pattern)
    except PatternError as e:
        raise BuildError(f"COPY failed: {e.message}") from None
    base_resolved = resolve_in_tree(tree, base)
    if base_resolved is None or not (tree.entry(base_resolved, hash_file=False) or _NOENT).is_dir:
        raise _not_found(tree, base or ".")
    out = []
    for m in _glob_matches(tree, base_resolved, glob, len(comps) - first):
        rel_to_base = m[len(base_resolved) + 1:] if base_resolved else m
        if excludes and excludes.match(rel_to_base)[0]:
            continue
        written = f"{base}/{rel_to_base}" if base else rel_to_base
        resolved = resolve_in_tree(tree, m)
        if resolved is None:
            raise _not_found(tree, written)
        out.append(_source_from(tree, spec, written, resolved, True, excludes))
    if not out and not allow_empty_wildcard:
        raise BuildError(f"COPY failed: no source files were specified ({spec} matched nothing)")
    return out


class _NoEntry:
    is_dir = False


_NOENT = _NoEntry()


def _select_parents(tree: SourceTree, spec: str, excludes: IgnoreRules) -> SelectedSource:
    parent, sep, pattern = spec.partition("/./")
    pivot = tree.normalize(parent) if sep else ""
    if not sep:
        pattern = spec
    pattern = go_clean("/" + pattern).lstrip("/")
    pivot_resolved = resolve_in_tree(tree, pivot)
    if pivot_resolved is None or not (tree.entry(pivot_resolved, hash_file=False) or _NOENT).is_dir:
        raise _not_found(tree, pivot or ".")
    if pattern in ("", "."):
        entries = _dir_entries(tree, pivot_resolved, excludes)
    else:
        try:
            include = IgnoreRules.from_patterns([pattern])
        except PatternError as e:
            raise BuildError(f"COPY failed: {e.message}") from None
        entries = _dir_entries(tree, pivot_resolved, excludes, include)
        if not entries and not any(has_wildcards(c) for c in pattern.split("/")):
            shown = f"{pivot}/{pattern}" if pivot else pattern
            raise _not_found(tree, shown)
    return SelectedSource(spec=spec, path=pivot_resolved, abs_path=_abs(tree, pivot_resolved),
                          name="", kind="dir", from_wildcard=False, parents=True,
                          entries=tuple(entries))


def select_sources(tree: SourceTree, sources: Sequence[str], *,
                   excludes: Sequence[str] | IgnoreRules | None = None,
                   parents: bool = False, allow_empty_wildcard: bool = True) -> CopySelection:
    """Resolve COPY/ADD sources (already variable-expanded, local ones only) against
    `tree`. Raises BuildError for a missing literal source, a bad pattern, or a
    symlink loop; line information is the caller's."""
    try:
        ex = ensure_patterns(excludes)
    except PatternError as e:
        raise BuildError(f"COPY failed: invalid --exclude: {e.message}") from None
    picked: list[SelectedSource] = []
    try:
        for spec in sources:
            if parents:
                picked.append(_select_parents(tree, spec, ex))
            else:
                picked.extend(_select_one(tree, spec, ex, allow_empty_wildcard))
    finally:
        tree.stat_cache.flush()
    return CopySelection(sources=tuple(picked), preserves_ownership=tree.preserves_ownership)


# ---------------------------------------------------------------------------------
# content key

def content_key(selection: CopySelection) -> str:
    """sha256 over exactly what the copy reads: for each source its landing name and
    type, then for each entry its relative path, type, permission bits, content
    digest, link target, device number, and uid/gid when the tree keeps ownership."""
    records: list[list] = []
    for src in selection.sources:
        records.append(["source", src.name if src.kind != "dir" else "", src.kind,
                        src.parents])
        for e in src.entries:
            rec: list = [e.rel, e.kind, e.mode, e.digest or "", e.link_target or "", e.rdev]
            if selection.preserves_ownership:
                rec += [e.uid, e.gid]
            records.append(rec)
    blob = json.dumps(records, separators=(",", ":"), ensure_ascii=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------------
# destinations

def _join(base: str, rel: str) -> str:
    if not rel:
        return base
    return go_clean(base.rstrip("/") + "/" + rel)


def plan_copy(selection: CopySelection, dest: str, workdir: str = "/",
              is_dir_in_image: Callable[[str], bool] = lambda p: False, *,
              instruction: str = "COPY") -> list[CopyAction]:
    """Where each selected entry lands, with docker's rules:
    - a relative `dest` is relative to `workdir`;
    - a directory source copies its content into `dest` (created if missing);
    - a non-directory source lands at `dest/<name>` when `dest` ends with `/`
      (or is `.`) or is an existing directory in the image, else at `dest` itself;
    - several sources (arguments or wildcard matches) are copied in turn, each onto
      `dest` as the ones before left it, as BuildKit does (its Dockerfile frontend has
      no trailing-slash rule: one FileOp copy per source, fsutil's prepareTargetDir
      deciding each): files onto a non-directory `dest` replace one another, a
      directory source makes `dest` a directory for the sources after it, and a
      directory source after a file is refused ("cannot copy to non-directory")."""
    if not dest.startswith("/"):
        wd = workdir if workdir.startswith("/") else "/" + workdir
        joined = wd.rstrip("/") + "/" + dest
    else:
        joined = dest
    dir_hint = dest in ("", ".") or dest.endswith("/") or dest.endswith("/.")
    dest_abs = go_clean(joined)
    is_dir = dir_hint or dest_abs == "/" or is_dir_in_image(dest_abs)
    wrote_file = False   # an earlier source of this step made `dest` a file
    actions: list[CopyAction] = []
    for index, src in enumerate(selection.sources):
        scope = f"{index}:{src.spec}"   # one hard-link scope per match (see CopyAction)
        if src.kind == "dir":
            if wrote_file:
                raise BuildError(f"{instruction} {src.spec}: cannot copy to non-directory: "
                                 f"{dest_abs}")
            actions.append(CopyAction(src.abs_path, dest_abs, "mkdir", source=scope))
            for e in src.entries:
                actions.append(CopyAction(e.abs_path, _join(dest_abs, e.rel), e.kind, e,
                                          source=scope))
            is_dir = True
        else:
            (e,) = src.entries
            target = _join(dest_abs, src.name) if is_dir else dest_abs
            actions.append(CopyAction(e.abs_path, target, e.kind, e, source=scope))
            wrote_file = wrote_file or not is_dir
    return actions
