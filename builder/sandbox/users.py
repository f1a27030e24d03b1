"""Resolving a Dockerfile USER (``name``, ``uid``, ``name:group``, ``uid:gid``...) to
numeric ids from the image's own /etc/passwd and /etc/group, the way docker (runc's
``GetExecUser``) does.

Public API:

- ``ResolvedUser(uid, gid, groups, home)`` — ``groups`` are the supplementary gids.
- ``resolve_user(rootfs_lookup, user_spec)`` — ``rootfs_lookup(path) -> bytes | None``
  reads a file of the image (e.g. ``LayerStack(lower_dirs).read_file``).
- ``resolve_user_in_layers(lower_dirs, user_spec)`` — the same, reading through the
  stacked layer dirs (top-most first) with whiteouts and opaque dirs honoured. The
  file is read through a walk inside the layer that provides it (never a symlink out of
  it, even one swapped in after the lookup by a running container) and only up to
  MAX_ACCOUNT_FILE bytes (a RUN can leave a sparse /etc/passwd of any size).
- ``UserLookupError(BuildError)`` — "unable to find user x: no matching entries in
  passwd file" / "unable to find group g: no matching entries in group file".

Rules (docker's): a user name must be in /etc/passwd; a numeric uid need not be
(gid 0, home "/" then). A group given explicitly is a name from /etc/group or a
number; without one the passwd entry's gid is primary and every /etc/group entry
listing the user name gives a supplementary group.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lamina.builder.errors import BuildError
from lamina.builder.sandbox.overlay import LayerStack
from lamina.builder.sandbox.rootpath import RootDir, RootPathError

_MAX_ID = 2**31 - 1
MAX_ACCOUNT_FILE = 16 << 20  # /etc/passwd, /etc/group: read whole, so bounded


class UserLookupError(BuildError):
    """A USER names a user or group the image does not know, or is malformed."""


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _to_id(text: str) -> int | None:
    if not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def _lines(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    rows = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        rows.append(line.split(":"))
    return rows


def parse_passwd(data: bytes | None) -> list[_PasswdEntry]:
    entries = []
    for f in _lines(data):
        f += [""] * (7 - len(f))
        uid, gid = _to_id(f[2]), _to_id(f[3])
        if uid is None:
            continue
        entries.append(_PasswdEntry(f[0], uid, gid if gid is not None else 0, f[5] or "/"))
    return entries


def parse_group(data: bytes | None) -> list[_GroupEntry]:
    entries = []
    for f in _lines(data):
        f += [""] * (4 - len(f))
        gid = _to_id(f[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in f[3].split(",") if m.strip())
        entries.append(_GroupEntry(f[0], gid, members))
    return entries


def resolve_user(rootfs_lookup: Callable[[str], bytes | None], user_spec: str) -> ResolvedUser:
    spec = user_spec.strip()
    if not spec:
        spec = "0"
    # an empty part is not given (GetExecUser's parseLine): "alice:" is alice with her
    # primary group and supplementary groups, ":staff" the default user 0 with group staff
    user_arg, _, group_arg = spec.partition(":")
    passwd = parse_passwd(rootfs_lookup("/etc/passwd"))
    if not user_arg:
        user_arg = "0"
    numeric_uid = _to_id(user_arg)
    if numeric_uid is None and user_arg.isdigit():
        raise UserLookupError(f"invalid user {user_spec!r}: uid out of range")
    match = None
    for entry in passwd:
        if (numeric_uid is None and entry.name == user_arg) or \
                (numeric_uid is not None and entry.uid == numeric_uid):
            match = entry
            break
    if match is None:
        if numeric_uid is None:
            raise UserLookupError(
                f"unable to find user {user_arg}: no matching entries in passwd file")
        uid, gid, home, name = numeric_uid, 0, "/", None
    else:
        uid, gid, home, name = match.uid, match.gid, match.home, match.name

    groups: tuple[int, ...] = ()
    if group_arg:
        numeric_gid = _to_id(group_arg)
        if numeric_gid is None and group_arg.isdigit():
            raise UserLookupError(f"invalid user {user_spec!r}: gid out of range")
        if numeric_gid is not None:
            gid = numeric_gid
        else:
            found = [g for g in parse_group(rootfs_lookup("/etc/group")) if g.name == group_arg]
            if not found:
                raise UserLookupError(
                    f"unable to find group {group_arg}: no matching entries in group file")
            gid = found[0].gid
    elif name is not None:
        seen: list[int] = []
        for g in parse_group(rootfs_lookup("/etc/group")):
            if name in g.members and g.gid not in seen:
                seen.append(g.gid)
        groups = tuple(seen)
    return ResolvedUser(uid=uid, gid=gid, groups=groups, home=home)


def _layer_file_reader(lower_dirs) -> Callable[[str], bytes | None]:
    stack = LayerStack(lower_dirs)

    def read(path: str) -> bytes | None:
        try:
            entry = stack.lookup(path)
            if entry is None or not stat.S_ISREG(entry.st.st_mode):
                return None
            if entry.st.st_size > MAX_ACCOUNT_FILE:
                raise UserLookupError(f"{path} of the image is {entry.st.st_size} bytes, more than "
                                      f"the {MAX_ACCOUNT_FILE >> 20} MiB lamina reads to resolve a user")
            # opened again by a walk inside the providing layer: a running container may
            # have swapped the file for a symlink since the lookup
            with RootDir(entry.layer) as root:
                data = root.read_file(entry.image_path, max_bytes=MAX_ACCOUNT_FILE)
        except (OSError, RootPathError) as e:
            raise UserLookupError(f"cannot read {path} of the image: "
                                  f"{getattr(e, 'strerror', None) or e}") from None
        return data

    return read


def resolve_user_in_layers(lower_dirs: tuple[Path, ...] | list[Path], user_spec: str
                           ) -> ResolvedUser:
    return resolve_user(_layer_file_reader(lower_dirs), user_spec)
