"""The upper dir fuse-overlayfs leaves, turned into lamina's overlay form
(store.overlayform): the part of builder.sandbox.fuseoverlay that reads and
rewrites files, after the daemon has flushed and exited (or on a copy).

    convert_upper(upper, lower_dirs)

fuse-overlayfs writes its upper dir in a form of its own (read from its source and
checked on this machine, version 1.10):

- whiteout: char device 0/0 (as overlayfs), or an empty file ``.wh.<name>`` when
  mknod is refused;
- opaque dir: every directory it creates (mkdir, not copy-up) gets
  ``trusted.overlay.opaque=y`` (privileged) or ``user.fuseoverlayfs.opaque=y``, an
  empty file ``.wh..wh..opq`` and usually a whiteout node ``.wh..opq`` inside;
- ``user.fuseoverlayfs.origin`` on copied-up files, and
  ``user.fuseoverlayfs.override_stat`` ("uid:gid:mode[:type]") where it could not
  chown/chmod for real;
- a copied-up directory gets the copy-up time as mtime (overlayfs keeps the lower's
  and restores the parent's times after each copy-up);
- a directory made in a setgid directory keeps the maker's group and no setgid bit
  (it is made in the work dir and moved; files get both right), and a copied-up
  directory loses its setgid bit; a copied-up file loses its setgid bit when its group
  is not root's and its setuid bit when its owner is not root (the copy is chowned
  after it is made, which clears them).

``convert_upper`` turns that, in one walk after the daemon has exited, into the
overlay form of this process (store.overlayform): overlayfs marks a new directory
opaque only when it is made where the upper dir held a whiteout, i.e. where the
merged lower layers show an entry — so a directory stays opaque exactly when the
lower layers (seen through its parents) have something at its path; the markers
and fuse-overlayfs's xattrs go, ``override_stat`` is applied, ``.wh.<name>`` files
become char 0/0 whiteouts, a directory made in a directory that is setgid after
the step gets its group and setgid bit (as mkdir gives; wrong only where the step
set the bit after making the subdirectory, or changed the group of the new dir), a
copied-up directory gets back its lower's setgid bit (unless the step changed its
group or mode otherwise), what was made in a directory given its bit back takes the
directory's group (not a hard link), and a copied-up directory whose entries are all
copy-ups (nothing new, nothing removed) gets its lower directory's times back —
unless, given when the mount was made (``since``), its mtime is older than that: no
copy-up made it, the process set it (`touch -d`, a build normalising its times).
Each directory keeps its own times across the walk.

Not converted back: the setuid/setgid bits a copied-up *file* lost (see above) — a
step may have removed them on purpose (`chmod a-s` hardening), so they are not
guessed back; such a layer differs from the kernel's (a missing bit, never an added
one). tests/builder/test_fuse_overlay.py keeps this known difference visible.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import linux
from lamina.builder.sandbox.layerstack import distinct as _distinct
from lamina.store import overlayform

OPAQUE_FILE = ".wh..wh..opq"
OPAQUE_NODE = ".wh..opq"
_FUSE_PREFIXES = ("user.fuseoverlayfs.", "security.fuseoverlayfs.", "trusted.fuseoverlayfs.")
_OPAQUE_NAMES = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
_OVERRIDE_NAMES = ("user.fuseoverlayfs.override_stat", "security.fuseoverlayfs.override_stat")


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _has_opaque(path: str, name: str) -> bool:
    try:
        return os.getxattr(path, name, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lower_view(alive: list[str], name: str) -> tuple[os.stat_result | None, list[str]]:
    """What the lower layers (the dirs `alive`, top-most first, of one image path)
    show at `name`: the visible entry's stat (None: nothing) and, when it is a
    directory, the dirs that merge into it."""
    found = None
    merged: list[str] = []
    opaque = overlayform.opaque_xattr()
    for d in alive:
        p = os.path.join(d, name)
        st = _lstat(p)
        if st is None:
            continue
        if _is_whiteout(st):
            break
        if found is None:
            found = st
        if not stat.S_ISDIR(st.st_mode):
            break
        merged.append(p)
        if _has_opaque(p, opaque):
            break
    return found, merged


def _strip_xattrs(path: str, is_link: bool) -> bool:
    """Apply override_stat and remove fuse-overlayfs's xattrs and every opaque
    marker from `path`; return whether it carried a fuse opaque marker."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return False
    opaque = False
    for name in names:
        if name in _OVERRIDE_NAMES:
            try:
                raw = os.getxattr(path, name, follow_symlinks=False).decode()
                uid, gid, mode = raw.split(":")[:3]
                os.chown(path, int(uid), int(gid), follow_symlinks=False)
                if not is_link:
                    os.chmod(path, int(mode, 8) & 0o7777)
            except (OSError, ValueError) as exc:
                raise SandboxError(f"fuse-overlayfs left owner/mode {name} on {path} that "
                                   f"cannot be applied: {exc}") from None
        if name in _OPAQUE_NAMES:
            opaque = opaque or _has_opaque(path, name)
        if name in _OPAQUE_NAMES or name.startswith(_FUSE_PREFIXES):
            os.removexattr(path, name, follow_symlinks=False)
    return opaque


def convert_upper(upper: Path, lower_dirs, since: float | None = None) -> None:
    """Turn fuse-overlayfs's upper dir into lamina's overlay form (module docstring);
    `lower_dirs` are the step's lower layers, top-most first; `since`: when the mount
    was made (time.time()), if known."""
    # a copy-up time is never earlier than the mount (the filesystem's coarse clock may
    # lag time.time() by a tick: a second of slack)
    not_before_ns = None if since is None else int((since - 1.0) * 1e9)
    opaque_attr = overlayform.opaque_xattr()
    root_alive: list[str] = []
    for d in _distinct(lower_dirs):
        root_alive.append(str(d))
        if _has_opaque(str(d), opaque_attr):
            break
    # (dir path, the lower dirs that merge into it)
    todo: list[tuple[str, list[str]]] = [(str(upper), root_alive)]
    regained: set[str] = set()  # dirs given back a setgid bit: their new files' group
    while todo:
        path, alive = todo.pop()
        before = os.lstat(path)
        with os.scandir(path) as it:
            names = sorted(e.name for e in it)
        if OPAQUE_FILE in names:
            _remove_marker(path, OPAQUE_FILE, names)
        if OPAQUE_NODE in names:
            st = _lstat(os.path.join(path, OPAQUE_NODE))
            if st is not None and _is_whiteout(st):  # fuse-overlayfs's own node
                _remove_marker(path, OPAQUE_NODE, names)
        modified = False
        for name in list(names):
            if name.startswith(".wh.") and name not in (OPAQUE_FILE, OPAQUE_NODE):
                name = _convert_wh_file(path, name, names)
            child = os.path.join(path, name)
            st = os.lstat(child)
            lower, merged = _lower_view(alive, name)
            if _is_whiteout(st):
                modified = True
                continue
            new = lower is None or stat.S_IFMT(lower.st_mode) != stat.S_IFMT(st.st_mode)
            modified = modified or new
            fuse_opaque = _strip_xattrs(child, stat.S_ISLNK(st.st_mode))
            if not stat.S_ISDIR(st.st_mode):
                if (new and path in regained and st.st_nlink == 1
                        and st.st_gid != before.st_gid):
                    os.chown(child, -1, before.st_gid, follow_symlinks=False)
                continue
            if not fuse_opaque:
                fuse_opaque = os.path.lexists(os.path.join(child, OPAQUE_FILE))
            if fuse_opaque and before.st_mode & stat.S_ISGID:
                if _inherit_setgid(child, st, before):
                    regained.add(child)
            elif not fuse_opaque and lower is not None and stat.S_ISDIR(lower.st_mode):
                if _keep_setgid(child, st, lower):
                    regained.add(child)
            if fuse_opaque and lower is not None:
                os.setxattr(child, opaque_attr, b"y", follow_symlinks=False)
                merged = []
            todo.append((child, merged))
        if (alive and not modified and path != str(upper)
                and (not_before_ns is None or before.st_mtime_ns >= not_before_ns)):
            top = os.lstat(alive[0])  # a copy-up only: overlayfs keeps the lower's times
            os.utime(path, ns=(top.st_atime_ns, top.st_mtime_ns), follow_symlinks=False)
        else:
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _inherit_setgid(child: str, st: os.stat_result, parent: os.stat_result) -> bool:
    """A dir made in a setgid dir takes that dir's group and setgid bit (what the
    kernel does at mkdir; fuse-overlayfs makes dirs in its work dir and moves them).
    Whether the bit was missing (what was made inside then missed the group too)."""
    if st.st_gid != parent.st_gid:
        os.chown(child, -1, parent.st_gid, follow_symlinks=False)
    mode = stat.S_IMODE(os.lstat(child).st_mode)
    if not mode & stat.S_ISGID:
        os.chmod(child, mode | stat.S_ISGID)
        return True
    return False


def _keep_setgid(child: str, st: os.stat_result, lower: os.stat_result) -> bool:
    """A copied-up dir gets back the setgid bit of its lower dir, which fuse-overlayfs
    drops (mkdir ignores it), unless the step changed its group or other bits."""
    mode = stat.S_IMODE(st.st_mode)
    if (lower.st_mode & stat.S_ISGID and not mode & stat.S_ISGID and st.st_gid == lower.st_gid
            and mode == stat.S_IMODE(lower.st_mode) & ~stat.S_ISGID):
        os.chmod(child, mode | stat.S_ISGID)
        return True
    return False


def _remove_marker(path: str, name: str, names: list[str]) -> None:
    p = os.path.join(path, name)
    if os.path.isdir(p) and not os.path.islink(p):
        return
    os.unlink(p)
    names.remove(name)


def _convert_wh_file(path: str, name: str, names: list[str]) -> str:
    """fuse-overlayfs's whiteout file `.wh.<x>` (empty, regular) -> char 0/0 `<x>`;
    returns the name the entry has now."""
    p = os.path.join(path, name)
    st = os.lstat(p)
    target = name[4:]
    if not stat.S_ISREG(st.st_mode) or st.st_size or not target or target in names:
        return name
    os.unlink(p)
    try:
        os.mknod(os.path.join(path, target), stat.S_IFCHR, os.makedev(0, 0))
    except OSError as exc:
        raise SandboxError(f"cannot make the whiteout {os.path.join(path, target)} "
                           f"({linux.errno_text(exc.errno or 0)}): this kernel refuses "
                           "whiteout devices here (Linux >= 5.8 allows them)") from None
    names[names.index(name)] = target
    return target
