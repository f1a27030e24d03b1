"""The owner a `COPY/ADD --chown=...` (and a WORKDIR's created directory, which
BuildKit makes with the USER the same way) gives: BuildKit's FileOp user rules,
which differ from a RUN's USER (builder.sandbox.users, runc's rules).

Public API: ``resolve_chown(read_file, spec) -> (uid, gid)``; ``read_file(path)``
reads a file of the image being built (None when absent).

Rules (BuildKit's llb.WithUser and its FileOp's readUser, read not copied):
- the value splits at the first ``:`` into user and group;
- ``root`` is 0, a decimal number is that id (no /etc/passwd needed);
- a numeric user without a group gives gid = uid (the reference: "a UID without GID
  will use the same numeric UID as the GID") — not the passwd entry's gid;
- a user name without a group gives the name's uid and primary gid from the image's
  /etc/passwd; a group name is looked up in /etc/group;
- an empty user (``:grp``) is uid 0, an empty group (``usr:``) is gid 0: llb.WithUser
  makes an empty part a name "", which its UserOpt marshals as id 0 (docker 20.10's
  BuildKit: `USER alice:` then WORKDIR makes the directory 1000:0);
- a name the image does not know (or an image without /etc/passwd, /etc/group) is
  not an error: an unknown user is 0:0, an unknown group leaves the gid as the user
  part made it - what docker 20.10's BuildKit and current BuildKit's readUser do
  (checked with docker: `COPY --chown=nosuch:nogroup` gives 0:65534). The reference's
  "the build will fail" describes the legacy builder; a Dockerfile docker builds,
  lamina builds the same.
"""

from __future__ import annotations

import re
from typing import Callable

from lamina.builder.errors import BuildError
from lamina.builder.sandbox.users import parse_group, parse_passwd

_MAX_ID = 2**31 - 1  # Go's ParseInt(s, 10, 32)
_NUMBER = re.compile(r"[+-]?[0-9]+")


class ChownError(BuildError):
    """A --chown naming a user or group the image does not have, or a bad id."""


def _numeric(text: str, what: str, spec: str) -> int | None:
    if text == "root":
        return 0
    if not _NUMBER.fullmatch(text):
        return None
    value = int(text)
    if not 0 <= value <= _MAX_ID:
        raise ChownError(f"invalid --chown={spec}: {what} {text} is out of range")
    return value


def resolve_chown(read_file: Callable[[str], bytes | None], spec: str) -> tuple[int, int]:
    user, sep, group = spec.partition(":")
    uid = gid = 0
    if user:
        number = _numeric(user, "uid", spec)
        if number is not None:
            uid = gid = number
        else:
            found = [e for e in parse_passwd(read_file("/etc/passwd")) if e.name == user]
            if found:  # else 0:0, as BuildKit
                uid, gid = found[0].uid, found[0].gid
    if sep and not group:
        gid = 0
    elif sep:
        number = _numeric(group, "gid", spec)
        if number is not None:
            gid = number
        else:
            found_g = [g for g in parse_group(read_file("/etc/group")) if g.name == group]
            if found_g:  # else the gid stays, as BuildKit
                gid = found_g[0].gid
    return uid, gid
