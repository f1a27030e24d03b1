"""Which xattr namespace the overlay form of this process's layer dirs uses.

A layer dir in overlay form marks an opaque directory with ``<prefix>opaque=y`` and
overlayfs keeps its bookkeeping (origin, impure, nlink...) under ``<prefix>*``:

- ``trusted.overlay.`` for a process in the host's user namespace (lamina as root);
- ``user.overlay.`` in any other user namespace (rootless lamina, or lamina as root
  of an unprivileged container): trusted.* xattrs need CAP_SYS_ADMIN in the host's
  user namespace, and overlayfs mounted there must use its ``userxattr`` option,
  which reads these names.

Whiteouts are char devices 0/0 in both (Linux >= 5.8 lets any user create them).
A store is only ever used from one of the two (a rootless store belongs to its user),
so the prefix is a property of the process, decided once:

    unprivileged() -> bool      this process is not in the host's user namespace
    prefix() -> str             "trusted.overlay." or "user.overlay."
    opaque_xattr() -> str       prefix() + "opaque"
    check_store(root)           record a store's form on first use, refuse the other

"""

from __future__ import annotations

import functools
import os

from lamina.store.errors import StoreError

TRUSTED_PREFIX = "trusted.overlay."
USER_PREFIX = "user.overlay."
_HOST_ID_MAP = ("0", "0", "4294967295")


def host_user_namespace(uid_map: str) -> bool:
    """Whether /proc/self/uid_map text `uid_map` is the host's identity map (pure)."""
    lines = [ln.split() for ln in uid_map.splitlines() if ln.strip()]
    return len(lines) == 1 and tuple(lines[0]) == _HOST_ID_MAP


@functools.cache
def unprivileged() -> bool:
    """True when this process runs in a user namespace other than the host's."""
    try:
        with open("/proc/self/uid_map") as f:
            return not host_user_namespace(f.read())
    except OSError:
        return False


def prefix() -> str:
    return USER_PREFIX if unprivileged() else TRUSTED_PREFIX


def opaque_xattr() -> str:
    return prefix() + "opaque"


MARKER = "overlay-xattrs"  # in a store's root: "trusted" or "user", written on first use


def check_store(root) -> None:
    """Record the overlay form of a store on first use; refuse a store of the other
    form (a rootless store opened as root, or the reverse), whose opaque dirs this
    process would not see. A store without the marker predates it: it gets this
    process's form."""
    form = "user" if unprivileged() else "trusted"
    path = os.path.join(os.fspath(root), MARKER)
    try:
        with open(path) as f:
            found = f.read().strip()
    except FileNotFoundError:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(form + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a concurrent first use writes the same
        return
    if found != form:
        made = "rootless lamina (in a user namespace)" if found == "user" else "lamina as root"
        now = "rootless" if form == "user" else "as root"
        raise StoreError(f"the store {root} was made by {made}: its layers mark opaque "
                         f"directories with {found}.overlay.* xattrs, which lamina running "
                         f"{now} cannot use; use another --root", path=str(root))
