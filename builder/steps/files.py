"""Executing COPY, ADD and WORKDIR: the filesystem steps lamina performs itself,
on the step's merged root mounted over a fresh upper dir (builder.mountedroot), so
that the upper dir again holds exactly the diff.

The parent side works in two phases, as BuildKit's sources do:
- `identify_copy`, before the cache key, is cheap: the context selection, the commit
  each git source's ref names (`git ls-remote`, no clone), each URL's content key (its
  --checksum, or the digest recorded for it when a validation request says it did
  not change); `PreparedCopy.remote_keys()` is what the key takes from them.
- `fetch_copy`, only on a cache miss, clones and downloads what identifying did not
  already have to.
The `apply_*` functions run inside the mount namespace child and only write.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lamina.builder.context.context import SourceTree
from lamina.builder.context.copysrc import CopySelection, select_sources
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.rootpath import mkdir_p_in_root, read_file_in_root
from lamina.builder.plan.resolved import ResolvedCopy, ResolvedWorkdir
from lamina.builder.steps.copy import HeredocSource
from lamina.builder.steps.copyinto import copy_selection
from lamina.builder.steps.chown import resolve_chown

if TYPE_CHECKING:
    from lamina.builder.steps.add import FetchedGit, FetchedURL, GitIdentity, GitSource, URLIdentity

# builder.steps.add (URLs: urllib/http.client/ssl; git) is imported by the functions
# that handle an ADD: a COPY, and a build whose steps all hit the cache, never load it


@dataclass(frozen=True)
class PreparedCopy:
    """What a COPY/ADD reads: a selection of context files (None when it reads a
    stage or image, selected in the child), the identities of its remote sources
    (known before the cache key) and, once `fetch_copy` ran, their files."""

    selection: CopySelection | None
    urls: tuple[URLIdentity, ...] = ()
    gits: tuple[GitIdentity, ...] = ()
    keep_git_dir: bool = False
    fetched_urls: tuple[FetchedURL, ...] | None = None
    fetched_gits: tuple[FetchedGit, ...] | None = None

    def remote_keys(self) -> dict[str, str]:
        """The cache key's part for the remote sources: name -> what it is now
        (a miss explanation names the source whose value changed)."""
        keys = {f"url:{u.url}": u.key for u in self.urls}
        for g in self.gits:  # named as written: two refs of one repo are two sources
            name = f"git:{g.source.remote}#{g.source.ref or 'HEAD'}"
            if g.source.subdir:
                name += f":{g.source.subdir}"
            keys[name] = g.commit + (" keep-git-dir" if self.keep_git_dir else "")
        return keys

    @property
    def fetched(self) -> bool:
        return self.fetched_urls is not None or not (self.urls or self.gits)


def remote_sources(r: ResolvedCopy) -> tuple[list[str], list[str]]:
    """(URLs, git sources) among an ADD's sources."""
    if r.keyword != "ADD":
        return [], []
    from lamina.builder.steps.add import is_url_source, parse_git_source

    urls, gits = [], []
    for src in r.sources:
        if parse_git_source(src, allow_file=True) is not None:
            gits.append(src)
        elif is_url_source(src):
            urls.append(src)
    return urls, gits


def _check_local_git(source: GitSource, allowed: tuple[Path, ...]) -> None:
    """A `file://` git repository is a host path outside the context: only readable
    under a path the user allowed with `--allow fs.read=PATH` (BuildKit's
    entitlement name), never by the Dockerfile alone."""
    path = Path(os.path.realpath(urllib.parse.unquote(source.remote[len("file://"):])))
    for root in allowed:
        root = Path(os.path.realpath(root))
        if path == root or root in path.parents:
            return
    raise BuildError(f"ADD {source.remote}: reading a repository on the host needs "
                     f"--allow fs.read={path} (or a parent directory)")


def identify_copy(r: ResolvedCopy, context: SourceTree, download_dir: Path, *,
                  allowed_reads: tuple[Path, ...] = (),
                  url_records: Path | None = None) -> PreparedCopy:
    """Everything the cache key needs, cheaply: the context selection, git commits,
    URL content keys (`url_records`: where the last download of each URL is
    recorded). A host repository is checked against --allow before git sees it."""
    urls, gits = remote_sources(r)
    local = [s for s in r.sources if s not in urls and s not in gits]
    if urls or gits:
        from lamina.builder.steps.add import identify_git, identify_url, parse_git_source
    git_sources = [parse_git_source(g, allow_file=True) for g in gits]
    for source in git_sources:
        if source.is_local:
            _check_local_git(source, allowed_reads)
    url_ids = tuple(identify_url(u, download_dir, checksum=r.checksum or None,
                                 records_dir=url_records) for u in urls)
    git_ids = tuple(identify_git(source, download_dir) for source in git_sources)
    selection = None
    if r.from_stage is None and r.from_image is None and local:
        selection = select_sources(context, local, excludes=r.exclude, parents=r.parents)
    return PreparedCopy(selection=selection, urls=url_ids, gits=git_ids,
                        keep_git_dir=r.keep_git_dir)


def fetch_copy(prepared: PreparedCopy, download_dir: Path, *,
               url_records: Path | None = None) -> PreparedCopy:
    """The identified remote sources downloaded and cloned (on a cache miss, before
    executing); what identifying already fetched is not fetched again."""
    if prepared.fetched:
        return prepared
    if prepared.urls or prepared.gits:
        from lamina.builder.steps.add import fetch_identified, fetch_identified_git
    urls = tuple(fetch_identified(u, download_dir, records_dir=url_records)
                 for u in prepared.urls)
    gits = tuple(fetch_identified_git(g, download_dir, keep_git_dir=prepared.keep_git_dir)
                 for g in prepared.gits)
    return replace(prepared, fetched_urls=urls, fetched_gits=gits)


def _owner(root: Path, chown: str) -> tuple[int, int] | None:
    """--chown user[:group] resolved in the image being built (its merged root), by
    BuildKit's FileOp rules (builder.steps.chown)."""
    if not chown:
        return None
    return resolve_chown(functools.partial(read_file_in_root, root), chown)


def apply_copy(root: Path, r: ResolvedCopy, prepared: PreparedCopy, *, workdir: str,
               source_root: Path | None, source_date_epoch: int | None,
               reuse=None) -> tuple[str, ...]:
    """Write a COPY/ADD into `root` (runs inside the mount namespace child). With
    `reuse` (builder.steps.reuse.CopyReuse; a COPY from the context only), files the
    previous build of the step wrote exactly so are not written: their destinations
    are returned, for builder.steps.reuse.link_claimed once the overlay is gone."""
    if not prepared.fetched:
        raise BuildError(f"{r.keyword}: remote sources were not fetched before executing")
    owner = _owner(root, r.chown)
    selection = prepared.selection
    if source_root is not None:  # --from a stage or an image: its merged view
        tree = SourceTree(source_root)  # keeps owners (preserves_ownership)
        selection = select_sources(tree, list(r.sources), excludes=r.exclude, parents=r.parents)
    heredocs = tuple(HeredocSource(f.name, f.data.encode("utf-8")) for f in r.inline)
    if r.keyword == "ADD":
        from lamina.builder.steps.add import add_git, add_local, add_url

        if selection is not None and selection.sources:
            add_local(root, selection, r.dest_path, workdir, chown=owner, chmod=r.chmod or None,
                      unpack=r.unpack is not False, source_date_epoch=source_date_epoch)
        for fetched in prepared.fetched_urls or ():
            add_url(root, fetched, r.dest_path, workdir, chown=owner, chmod=r.chmod or None,
                    unpack=bool(r.unpack), source_date_epoch=source_date_epoch)
        for fetched in prepared.fetched_gits or ():
            add_git(root, fetched, r.dest_path, workdir, chown=owner, chmod=r.chmod or None,
                    source_date_epoch=source_date_epoch)
        if heredocs:
            empty = CopySelection(sources=(), preserves_ownership=False)
            copy_selection(root, empty, r.dest_path, workdir, heredocs=heredocs, chown=owner,
                           chmod=r.chmod or None, source_date_epoch=source_date_epoch,
                           instruction="ADD")
        return ()
    if selection is None:
        selection = CopySelection(sources=(), preserves_ownership=False)
    claims = None
    if reuse is not None and source_root is None and not heredocs:
        from lamina.builder.steps.reuse import ReuseClaims
        claims = ReuseClaims(reuse, root)
    try:
        copy_selection(root, selection, r.dest_path, workdir, heredocs=heredocs, chown=owner,
                       chmod=r.chmod or None, source_date_epoch=source_date_epoch, reuse=claims)
    finally:
        if claims is not None:
            claims.close()
    return tuple(claims.claimed) if claims is not None else ()


def apply_workdir(root: Path, r: ResolvedWorkdir, user: str,
                  source_date_epoch: int | None) -> None:
    """mkdir -p the WORKDIR, owned by the USER in force (as BuildKit does)."""
    if not r.creates_dir or r.path == "/":
        return
    who = _owner(root, user) if user else None
    uid, gid = who if who else (0, 0)
    mkdir_p_in_root(root, r.path, uid, gid, chown=who is not None)
