"""ADD mechanics on top of COPY's: local tar archives auto-extracted, http(s) URLs,
git repositories.

Public API:
- `add_local(root, selection, dest, workdir, *, chown, chmod, unpack=True, ...)`:
  each local source that is a tar archive (by content: plain, gzip, bzip2, xz or
  zstd - never by name) is extracted into the destination directory; every other
  source is copied as COPY would (builder.steps.copy).
- `is_archive(path)`, `extract_archive(root, archive, dest, *, chown, ...)`.
- `identify_url(url, dest_tmp, *, checksum, records_dir)` -> URLIdentity (the cache
  key's part: the checksum, or the content digest + mtime, from a validation request
  against the record of the last download when the server allows it),
  `fetch_identified(identity, dest_tmp)` / `fetch_url(url, dest_tmp, *, checksum,
  network)` -> FetchedURL(path, digest, filename, mtime_ns): implemented in
  builder.steps.url, re-exported here; `add_url(root, fetched, dest, workdir, *,
  chown, chmod, unpack=False)`.
- `parse_git_source(src)` -> GitSource | None, `identify_git(source, dest_tmp)` ->
  GitIdentity (the commit, from `git ls-remote`, no clone),
  `fetch_identified_git(identity, dest_tmp, *, keep_git_dir)` / `fetch_git(source,
  dest_tmp, ...)` -> FetchedGit(path, commit, subdir), `add_git(root, fetched, dest,
  workdir, ...)`: implemented in builder.steps.git, re-exported here.

Semantics (BuildKit's dockerfile2llb + FileOp copy/unpack + http/git sources):
- Archive extraction (BuildKit `applyRootArchive`): the destination (as written, with
  or without a trailing `/`) is made a directory (created 0755, owned by --chown or
  0:0). Member paths are cleaned (a leading `/` dropped); `..` leaving the
  destination is an error. The destination is the extraction root: symlinks met
  while extracting - already in the image or from earlier members - are followed
  inside *it* (an absolute target restarts at the destination, `..` stops there),
  never outside. Missing parents the member names are created 0755 root:root; a
  symlink on the way whose target does not exist (in the extraction root) is an error,
  nothing is created inside it (go-archive's createImpliedDirectories + open).
  Whatever is at a member's path is replaced unless both are directories (a
  directory member replaces an existing symlink to a directory: Lstat, RemoveAll).
  Ownership comes from the archive unless --chown; mode and
  mtime from the archive; --chmod does not apply; xattrs are set best-effort
  (`trusted.*` dropped). `.wh.*` names are NOT whiteouts here: they extract as
  plain files, as in BuildKit - but the step then fails: store.tarwrite refuses to
  write such a name into a layer, where BuildKit stores it and a consumer of the
  layer reads it as a whiteout (README: a deliberate difference). Device members are refused (BuildKit:
  "unsupported tar entry"); fifos are created. A `..` after the destination root is an
  error here as in BuildKit, but `..` inside a symlink target is clamped at the
  extraction root (BuildKit errors on a relative target that climbs out).
  store.tarextract is not used: it writes overlay lower form (whiteouts converted,
  opaque dirs) into a fresh directory and refuses any symlink on a member's path,
  while ADD must merge into an existing tree and follow its symlinks.
- A non-archive local file, and any remote URL (unless `--unpack=true`, Dockerfile
  1.17), is copied as a file. A URL's file is named after the last path element of
  the URL (`__unnamed__` if none), has mode 0600 (then --chmod) and owner 0:0 (or
  --chown), mtime from `Last-Modified` when sent. `--checksum=sha256:<hex>` (or
  sha384/sha512) must match the downloaded bytes.
- Cache (BuildKit's http and git sources): the step's key takes a URL's checksum, or
  its digest + mtime as a validation request against the last download's record
  confirms it; a git source's commit as `git ls-remote` resolves its ref. Only a
  cache miss downloads or clones.
- Git: `https://host/repo.git#ref:subdir`, `##ref=..,commit=..,subdir=..`,
  `git://`, `ssh://`, `user@host:path`. Cloned with the git CLI (shallow at the ref,
  full fetch as a fallback for a bare commit id), without the host's git config,
  `.git` removed unless keep_git_dir, then the content (of `subdir`) copied into the
  destination as a directory source (owner 0:0 or --chown). Our choice: every checked
  out file gets the commit time as mtime (a checkout's own times are arbitrary).
  Submodules are not fetched. `file://` repositories are accepted only with
  allow_file=True (tests): a Dockerfile must not read host repositories.
- Network: URLs and remote git need `network=True` (the executor's decision); else a
  BuildError says so. (In docker the download is the builder's, not governed by the
  RUN network mode; `network` is for an offline policy.)
"""

from __future__ import annotations

import bz2
import lzma
import os
import posixpath
import shutil
import stat
from typing import BinaryIO

from lamina.builder.context.copysrc import CopySelection, SelectedEntry, SelectedSource
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.rootpath import DirSpec, RootDir, RootPathError
from lamina.builder.steps.chmod import ChmodSpec, parse_chmod
from lamina.builder.steps.copy import CopyStats
from lamina.builder.steps.copyinto import copy_selection, dest_info
from lamina.builder.steps.git import (FetchedGit, GitIdentity, GitSource, add_git, fetch_git,
                               fetch_identified_git, identify_git, parse_git_source)
from lamina.builder.steps.url import (URL_FILE_MODE, FetchedURL, URLIdentity, fetch_identified,
                               fetch_url, identify_url, is_url_source, url_filename)
from lamina.store.compression import open_decompressed
from lamina.store.errors import StoreError
from lamina.store.tarformat import (BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE,
                             Entry, TarReader)

__all__ = ["FetchedGit", "FetchedURL", "GitIdentity", "GitSource", "URLIdentity",
           "URL_FILE_MODE", "add_git", "add_local", "add_url", "extract_archive", "fetch_git",
           "fetch_identified", "fetch_identified_git", "fetch_url", "identify_git",
           "identify_url", "is_archive", "is_url_source", "parse_git_source", "url_filename"]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_IMPLIED_DIR = DirSpec(0, 0, 0o755, None)


def _sum(a: CopyStats, b: CopyStats) -> CopyStats:
    return CopyStats(**{k: getattr(a, k) + getattr(b, k) for k in a.__dataclass_fields__})


# ---------------------------------------------------------------------------------
# archives

def _open_archive_stream(f: BinaryIO) -> BinaryIO:
    head = f.read(6)
    f.seek(0)
    if head.startswith(b"BZh"):
        return bz2.BZ2File(f)  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f)  # type: ignore[return-value]
    return open_decompressed(f)


def is_archive(path: str | os.PathLike) -> bool:
    """Is `path` a regular file holding a tar archive, plain or compressed (gzip,
    bzip2, xz, zstd)? Decided like BuildKit: the first tar header reads cleanly."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return False
        with open(path, "rb") as f:
            return TarReader(_open_archive_stream(f)).next() is not None
    except (StoreError, OSError, EOFError, lzma.LZMAError, ValueError):
        return False


def _clean_member(raw: bytes, what: str) -> str:
    if b"\0" in raw:
        raise BuildError(f"archive {what} {os.fsdecode(raw)!r} has a NUL byte")
    name = posixpath.normpath(os.fsdecode(raw).lstrip("/") or ".")
    if name == ".." or name.startswith("../"):
        raise BuildError(f"archive path {os.fsdecode(raw)!r} is outside the extraction root")
    return "" if name == "." else name


class _Extractor:
    def __init__(self, ext: RootDir, shown: str, chown: tuple[int, int] | None) -> None:
        self.ext = ext
        self.shown = shown
        self.chown = chown
        self.dirs: list[tuple[str, int]] = []
        self.n = {"files": 0, "hardlinks": 0, "symlinks": 0, "dirs": 0, "specials": 0,
                  "skipped": 0, "bytes": 0}

    def owner(self, e: Entry) -> tuple[int, int]:
        return self.chown if self.chown is not None else (e.uid, e.gid)

    @staticmethod
    def xattrs(e: Entry, fd: int) -> None:
        for key, value in e.xattrs.items():
            if key.startswith(b"trusted."):
                continue
            try:
                os.setxattr(fd, key, value)
            except OSError:
                pass  # best effort, as BuildKit (ENOTSUP, EPERM, ...)

    def member(self, e: Entry, reader: TarReader) -> None:
        name = _clean_member(e.name, "member")
        if not name:
            return  # the root entry: BuildKit skips it
        is_dir = e.type == DIRTYPE
        # the member's own name is never followed (a directory replaces a symlink), and
        # implied directories are made only for components the member names, never
        # inside a symlink's target (go-archive: Lstat the parent, MkdirAll only when
        # that is missing; a link to a missing directory fails the open)
        parent, leaf, parent_path = self.ext.open_parent(name, create=_IMPLIED_DIR,
                                                         create_in_links=False)
        try:
            self.one(e, reader, parent, leaf, posixpath.join(parent_path, leaf), is_dir)
        finally:
            os.close(parent)

    def one(self, e: Entry, reader: TarReader, parent: int, leaf: str, path: str,
            is_dir: bool) -> None:
        try:
            st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not (is_dir and stat.S_ISDIR(st.st_mode)):
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(leaf, dir_fd=parent)
            else:
                os.unlink(leaf, dir_fd=parent)
            st = None
        uid, gid = self.owner(e)
        mtime = max(e.mtime_ns, 0)
        mode = e.mode & 0o7777
        if is_dir:
            if st is None:
                os.mkdir(leaf, 0o700, dir_fd=parent)
            fd = os.open(leaf, _DIR_FLAGS, dir_fd=parent)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                self.xattrs(e, fd)
            finally:
                os.close(fd)
            self.dirs.append((path, mtime))
            self.n["dirs"] += 1
        elif e.type == REGTYPE:
            fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent)
            try:
                with open(fd, "wb", closefd=False, buffering=1 << 20) as f:
                    self.n["bytes"] += reader.read_data(f.write)
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                self.xattrs(e, fd)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)
            self.n["files"] += 1
        elif e.type == SYMTYPE:
            if b"\0" in e.linkname:
                raise BuildError(f"archive member {os.fsdecode(e.name)!r} has a NUL byte in its "
                                 "link target")
            os.symlink(os.fsdecode(e.linkname), leaf, dir_fd=parent)
            os.chown(leaf, uid, gid, dir_fd=parent, follow_symlinks=False)
            os.utime(leaf, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
            self.n["symlinks"] += 1
        elif e.type == LNKTYPE:
            target = _clean_member(e.linkname, "hard link target")
            if not target:
                raise BuildError(f"archive hard link {os.fsdecode(e.name)!r} targets the "
                                 "extraction root")
            try:
                tparent, tleaf, _ = self.ext.open_parent(target)
            except RootPathError as err:
                raise BuildError(f"archive hard link {os.fsdecode(e.name)!r}: {err.message}") from None
            try:
                os.link(tleaf, leaf, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
            except OSError as err:
                raise BuildError(f"archive hard link {os.fsdecode(e.name)!r} to "
                                 f"{os.fsdecode(e.linkname)!r}: {err.strerror}") from None
            finally:
                os.close(tparent)
            os.chown(leaf, uid, gid, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISLNK(os.stat(leaf, dir_fd=parent, follow_symlinks=False).st_mode):
                os.chmod(leaf, mode, dir_fd=parent)
                os.utime(leaf, ns=(mtime, mtime), dir_fd=parent)
            self.n["hardlinks"] += 1
        elif e.type == FIFOTYPE:
            os.mkfifo(leaf, 0o600, dir_fd=parent)
            os.chown(leaf, uid, gid, dir_fd=parent, follow_symlinks=False)
            os.chmod(leaf, mode, dir_fd=parent)
            os.utime(leaf, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
            self.n["specials"] += 1
        elif e.type in (CHRTYPE, BLKTYPE):
            raise BuildError(f"unsupported tar entry {os.fsdecode(e.name)!r}: device nodes are "
                             "not extracted by ADD")
        else:
            raise BuildError(f"unsupported tar entry {os.fsdecode(e.name)!r} "
                             f"(type {e.type!r})")

    def finish(self) -> None:
        for path, mtime in reversed(self.dirs):
            try:
                fd = self.ext.open_dir(path)
            except RootPathError:
                continue  # replaced by a later member
            try:
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)


def extract_archive(root: str | os.PathLike, archive: str | os.PathLike, dest: str, *,
                    chown: tuple[int, int] | None = None,
                    source_date_epoch: int | None = None) -> CopyStats:
    """Extract the tar archive `archive` (plain or compressed) into directory `dest`
    (an image path, created if missing) of `root`; see the module docstring."""
    owner = chown or (0, 0)
    mtime_ns = None if source_date_epoch is None else int(source_date_epoch) * 10**9
    shown = os.path.basename(os.fspath(archive))
    with RootDir(root) as r:
        try:
            dfd = r.open_dir(dest, create=DirSpec(owner[0], owner[1], 0o755, mtime_ns,
                                                   chown is not None))
        except RootPathError as e:
            raise BuildError(f"ADD failed: cannot extract {shown} into {dest}: {e.message}") from None
        try:
            ext = RootDir.from_fd(dfd, r.host_path(dest))
        finally:
            os.close(dfd)
    with ext, open(archive, "rb") as f:
        x = _Extractor(ext, shown, chown)
        try:
            reader = TarReader(_open_archive_stream(f))
            while True:
                e = reader.next()
                if e is None:
                    break
                try:
                    x.member(e, reader)
                except BuildError as err:
                    raise BuildError(f"ADD failed: extracting {shown} into {dest}: "
                                     f"{err.message}") from None
                except OSError as err:
                    raise BuildError(f"ADD failed: extracting {shown} into {dest}: member "
                                     f"{os.fsdecode(e.name)!r}: {err.strerror or err}") from None
            x.finish()
        except (StoreError, EOFError, lzma.LZMAError) as err:
            raise BuildError(f"ADD failed: {shown} is a damaged archive: {err}") from None
        return CopyStats(**x.n)


def add_local(root: str | os.PathLike, selection: CopySelection, dest: str, workdir: str = "/",
              *, chown: tuple[int, int] | None = None,
              chmod: "str | int | ChmodSpec | None" = None, unpack: bool = True,
              source_date_epoch: int | None = None) -> CopyStats:
    """ADD local sources: archives extracted into `dest`, everything else copied."""
    spec = parse_chmod(chmod)
    with RootDir(root) as r:
        info = dest_info(r, dest, workdir)
    # several sources onto a non-directory dest: each in turn, dest read again each
    # time (BuildKit; see copysrc.plan_copy)
    total = CopyStats()
    for src in selection.sources:
        if unpack and src.kind == "file" and is_archive(src.abs_path):
            got = extract_archive(root, src.abs_path, info.path, chown=chown,
                                  source_date_epoch=source_date_epoch)
        else:
            one = CopySelection(sources=(src,), preserves_ownership=selection.preserves_ownership)
            got = copy_selection(root, one, dest, workdir, chown=chown, chmod=spec,
                                 source_date_epoch=source_date_epoch, instruction="ADD")
        total = _sum(total, got)
    return total


# ---------------------------------------------------------------------------------
# URLs (downloads: builder.steps.url)

def add_url(root: str | os.PathLike, fetched: FetchedURL, dest: str, workdir: str = "/", *,
            chown: tuple[int, int] | None = None,
            chmod: "str | int | ChmodSpec | None" = None, unpack: bool = False,
            source_date_epoch: int | None = None) -> CopyStats:
    """ADD a downloaded URL: copied as a file (dest rules as for a file), or with
    unpack=True (`--unpack=true`) extracted when it is an archive."""
    if unpack and is_archive(fetched.path):
        with RootDir(root) as r:
            info = dest_info(r, dest, workdir)
        return extract_archive(root, fetched.path, info.path, chown=chown,
                               source_date_epoch=source_date_epoch)
    st = os.lstat(fetched.path)
    entry = SelectedEntry(rel="", path=fetched.filename, abs_path=str(fetched.path),
                          kind="file", mode=stat.S_IMODE(st.st_mode), uid=0, gid=0,
                          size=st.st_size, link_target=None, digest=fetched.digest)
    src = SelectedSource(spec=fetched.url, path=fetched.filename, abs_path=str(fetched.path),
                         name=fetched.filename, kind="file", from_wildcard=False,
                         parents=False, entries=(entry,))
    return copy_selection(root, CopySelection(sources=(src,), preserves_ownership=False),
                          dest, workdir, chown=chown, chmod=chmod,
                          source_date_epoch=source_date_epoch, instruction="ADD")
