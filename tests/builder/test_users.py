"""USER resolution (builder.users) and the layer-dir lookup it reads through
(builder.overlay.LayerStack), the latter checked against the kernel's own overlayfs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lamina.builder.sandbox import overlay
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.users import ResolvedUser, UserLookupError, resolve_user, resolve_user_in_layers
from tests.builder.conftest import GROUP, PASSWD
from tests.builder.test_linux import in_child


def _files(passwd: str | None = PASSWD, group: str | None = GROUP):
    files = {"/etc/passwd": passwd, "/etc/group": group}
    return lambda path: None if files.get(path) is None else files[path].encode()


# The expected values follow docker's rules (runc libcontainer/user GetExecUser).
@pytest.mark.parametrize("spec, expected", [
    ("", ResolvedUser(0, 0, (), "/root")),
    ("root", ResolvedUser(0, 0, (), "/root")),
    ("alice", ResolvedUser(1000, 1000, (10, 50), "/home/alice")),
    ("1000", ResolvedUser(1000, 1000, (10, 50), "/home/alice")),   # uid in passwd: same
    ("bob", ResolvedUser(1001, 1001, (50,), "/home/bob")),
    ("4242", ResolvedUser(4242, 0, (), "/")),                      # unknown uid is fine
    ("alice:staff", ResolvedUser(1000, 50, (), "/home/alice")),    # explicit group: no sgids
    ("alice:77", ResolvedUser(1000, 77, (), "/home/alice")),
    ("4242:4243", ResolvedUser(4242, 4243, (), "/")),
    ("4242:wheel", ResolvedUser(4242, 10, (), "/")),
    ("nobody:nogroup", ResolvedUser(65534, 65534, (), "/nonexistent")),
    ("daemon", ResolvedUser(1, 1, (), "/usr/sbin")),
    # an empty part is not given (parseLine): docker 20.10's BuildKit runs `id` as
    # "uid=1000(alice) gid=1000(alice) groups=10(wheel),50(staff)" for USER alice: and
    # "uid=0(root) gid=50(staff)" for USER :staff
    ("alice:", ResolvedUser(1000, 1000, (10, 50), "/home/alice")),
    (":staff", ResolvedUser(0, 50, (), "/root")),
    (":", ResolvedUser(0, 0, (), "/root")),
])
def test_resolve_user(spec, expected):
    assert resolve_user(_files(), spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("x", "unable to find user x: no matching entries in passwd file"),
    ("x:staff", "unable to find user x: no matching entries in passwd file"),
    ("alice:nogrp", "unable to find group nogrp: no matching entries in group file"),
    ("1000:nogrp", "unable to find group nogrp: no matching entries in group file"),
    ("99999999999", "out of range"),
])
def test_resolve_user_errors(spec, message):
    with pytest.raises(UserLookupError) as info:
        resolve_user(_files(), spec)
    assert message in str(info.value)
    assert isinstance(info.value, BuildError)


def test_missing_files():
    # no passwd at all: names fail like docker, numbers work
    with pytest.raises(UserLookupError, match="unable to find user app"):
        resolve_user(_files(None, None), "app")
    assert resolve_user(_files(None, None), "123:456") == ResolvedUser(123, 456, (), "/")
    assert resolve_user(_files(None, None), "123") == ResolvedUser(123, 0, (), "/")


def test_odd_lines_are_skipped():
    passwd = "# comment\n\nbroken\nx:x:notanumber:1::/:/bin/sh\napp:x:7:8::/srv:/bin/sh\n"
    group = "g:x:9:app, other\n"
    assert resolve_user(_files(passwd, group), "app") == ResolvedUser(7, 8, (9,), "/srv")


def test_first_match_wins():
    passwd = "app:x:7:8::/a:/bin/sh\napp:x:9:9::/b:/bin/sh\n"
    assert resolve_user(_files(passwd, ""), "app").uid == 7


def test_resolve_through_layers(busybox_rootfs, tmp_path):
    top = tmp_path / "top"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "passwd").write_text(PASSWD + "carol:x:2000:2000::/home/carol:/bin/sh\n")
    assert resolve_user_in_layers([top, busybox_rootfs], "carol").uid == 2000
    assert resolve_user_in_layers([top, busybox_rootfs], "alice").groups == (10, 50)
    assert resolve_user_in_layers([busybox_rootfs], "alice").uid == 1000
    with pytest.raises(UserLookupError):
        resolve_user_in_layers([busybox_rootfs], "carol")


@pytest.mark.root
def test_resolve_through_whiteout_and_opaque(busybox_rootfs, tmp_path):
    wh = tmp_path / "wh"
    (wh / "etc").mkdir(parents=True)
    os.mknod(wh / "etc" / "passwd", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    with pytest.raises(UserLookupError):
        resolve_user_in_layers([wh, busybox_rootfs], "alice")
    assert resolve_user_in_layers([wh, busybox_rootfs], "1000") == ResolvedUser(1000, 0, (), "/")
    opq = tmp_path / "opq"
    (opq / "etc").mkdir(parents=True)
    os.setxattr(opq / "etc", "trusted.overlay.opaque", b"y")
    (opq / "etc" / "group").write_text("wheel:x:10:alice\n")
    # passwd is hidden by the opaque /etc; group comes from the opaque dir itself
    with pytest.raises(UserLookupError):
        resolve_user_in_layers([opq, busybox_rootfs], "alice")
    assert resolve_user_in_layers([opq, busybox_rootfs], "4:wheel").gid == 10


# --- LayerStack against the kernel's overlayfs --------------------------------------

_NAMES = ["a", "b", "c"]
_ENTRY = st.sampled_from(["file", "dir", "opaque", "whiteout", "link-abs", "link-rel",
                          "link-up", "absent"])


def _build(root: Path, layer: dict) -> None:
    root.mkdir(parents=True)
    for rel, kind in sorted(layer.items()):
        path = root / rel
        if not path.parent.is_dir() or path.parent.is_symlink():
            continue
        if kind == "file":
            path.write_text(f"{root.name}:{rel}")
        elif kind in ("dir", "opaque"):
            path.mkdir()
            if kind == "opaque":
                os.setxattr(path, "trusted.overlay.opaque", b"y")
        elif kind == "whiteout":
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        elif kind == "link-abs":
            os.symlink("/a/b", path)
        elif kind == "link-rel":
            os.symlink("c", path)
        elif kind == "link-up":
            os.symlink("../../b", path)


_PATHS = [f"{x}" for x in _NAMES] + [f"{x}/{y}" for x in _NAMES for y in _NAMES]
_LAYER = st.dictionaries(st.sampled_from(_PATHS), _ENTRY, max_size=8)
_QUERIES = [f"/{p}" for p in _PATHS] + ["/a/b/c", "/c/c/c", "/a/../b", "/"]


def _describe_host(path: Path) -> str:
    try:
        st_ = os.lstat(path)
    except OSError:
        return "absent"
    if stat.S_ISDIR(st_.st_mode):
        # readdir of a dir that lives in one layer only is passed through by the
        # kernel, whiteouts included; lookups of those names fail, so drop them
        names = [n for n in os.listdir(path) if os.path.lexists(path / n)]
        return "dir:" + ",".join(sorted(names))
    if stat.S_ISREG(st_.st_mode):
        return "file:" + path.read_text()
    if stat.S_ISLNK(st_.st_mode):
        return "link:" + os.readlink(path)
    return "other"


def _describe_stack(stack: overlay.LayerStack, path: str) -> str:
    entry = stack.lookup(path)
    if entry is None:
        return "absent"
    if stat.S_ISDIR(entry.st.st_mode):
        return "dir:" + ",".join(sorted(_merged_listing(stack, entry.image_path)))
    if stat.S_ISREG(entry.st.st_mode):
        return "file:" + entry.host_path.read_text()
    return "other"


def _merged_listing(stack: overlay.LayerStack, path: str) -> list[str]:
    names = set()
    for layer in stack.layers:
        d = layer / path.lstrip("/")
        if d.is_dir() and not d.is_symlink():
            names.update(os.listdir(d))
    return [n for n in names if stack.lookup(f"{path.rstrip('/')}/{n}", follow=False)]


@pytest.mark.root
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.lists(_LAYER, min_size=1, max_size=3))
def test_layer_stack_matches_kernel_overlay(tmp_path_factory, layers):
    base = tmp_path_factory.mktemp("stack")
    dirs = []
    for i, layer in enumerate(layers):
        d = base / f"l{i}"
        _build(d, layer)
        dirs.append(d)
    upper, work, merged, scratch = (base / n for n in ("u", "w", "m", "s"))
    for d in (upper, work, merged, scratch):
        d.mkdir()

    def child():
        # inside the merged mount, resolve each query with the kernel, chrooted
        overlay.mount_overlay(dirs, upper, work, merged, scratch)
        out = {}
        for q in _QUERIES:
            real = _resolve_in(merged, q)
            out[q] = _describe_host(real) if real is not None else "absent"
        return out

    kernel = in_child(child)
    stack = overlay.LayerStack(dirs)
    ours = {q: _describe_stack(stack, q) for q in _QUERIES}
    assert ours == kernel


def _resolve_in(root: Path, path: str) -> Path | None:
    """Follow symlinks like the kernel would if `root` were / (via a chroot'd child)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.chroot(root)
            os.chdir("/")
            os.stat(path)  # the kernel's own resolution must succeed...
            os.write(w, os.path.realpath(path).encode())  # ...and this names the result
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    return root / data.decode().lstrip("/") if data else None
