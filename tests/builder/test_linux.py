"""The ctypes bindings (builder.linux) and the overlay mount helpers (builder.overlay),
exercised in forked children with their own namespaces so that the test process is
never changed."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import subprocess
import fcntl
from pathlib import Path

import pytest

from lamina.builder.sandbox import linux, overlay
from lamina.builder.errors import SandboxError


def in_child(fn, *, flags: int = linux.CLONE_NEWNS):
    """Run fn() in a forked child inside new namespaces; return its result or re-raise
    its exception here."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            linux.unshare(flags)
            if flags & linux.CLONE_NEWNS:
                linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            result = ("ok", fn())
        except BaseException as exc:  # noqa: BLE001
            result = ("err", exc)
        try:
            data = pickle.dumps(result)
        except Exception as exc:  # noqa: BLE001
            data = pickle.dumps(("err", RuntimeError(repr(exc))))
        os.write(w, data)
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "err":
        raise value
    return value


# --- errors carry what was attempted and the errno text ---------------------------

@pytest.mark.root
def test_mount_error_names_target_and_errno(tmp_path):
    with pytest.raises(SandboxError) as info:
        linux.mount(tmp_path / "missing", tmp_path / "also-missing", None, linux.MS_BIND)
    msg = str(info.value)
    assert "also-missing" in msg and "ENOENT" in msg and "No such file" in msg


@pytest.mark.root
def test_fsopen_unknown_filesystem():
    with pytest.raises(SandboxError, match=r"fsopen\('no-such-fs'\).*ENODEV"):
        linux.fsopen("no-such-fs")


@pytest.mark.root
def test_fsconfig_error_includes_kernel_log(tmp_path):
    fd = linux.fsopen("overlay")
    try:
        with pytest.raises(SandboxError) as info:
            linux.fsconfig(fd, linux.FSCONFIG_SET_STRING, "lowerdir+", str(tmp_path / "none"))
    finally:
        os.close(fd)
    msg = str(info.value)
    assert "lowerdir+" in msg and "ENOENT" in msg
    fd = linux.fsopen("tmpfs")
    try:
        with pytest.raises(SandboxError) as info:
            linux.fsconfig(fd, linux.FSCONFIG_SET_STRING, "no-such-option", "x")
    finally:
        os.close(fd)
    assert "no-such-option" in str(info.value).split("[", 1)[1]  # the kernel's own message


def test_unknown_machine_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(linux, "_MACHINE", "vax")
    with pytest.raises(SandboxError, match="'vax'"):
        linux.syscall_number("pivot_root")


def test_statfs_type_matches_stat_f(tmp_path):
    for path in ("/dev/shm", str(tmp_path), "/proc"):
        expected = subprocess.run(["stat", "-f", "-c", "%t", path], capture_output=True,
                                  text=True, check=True).stdout.strip()
        assert linux.statfs_type(path) == int(expected, 16)
    assert linux.statfs_type("/dev/shm") == linux.TMPFS_MAGIC


# --- namespaces and process attributes, in children --------------------------------

@pytest.mark.root
def test_pivot_root_into_a_tmpfs(tmp_path):
    root = tmp_path / "newroot"
    root.mkdir()

    def child():
        linux.mount("tmpfs", root, "tmpfs", 0, "mode=755")
        Path(root, "only-here").write_text("x")
        os.chdir(root)
        linux.pivot_root(".", ".")
        linux.umount2(".", linux.MNT_DETACH)
        os.chdir("/")
        return sorted(os.listdir("/"))

    assert in_child(child) == ["only-here"]
    assert not (root / "only-here").exists()  # the mount lived only in the child's namespace


@pytest.mark.root
def test_sethostname_in_uts_namespace():
    def child():
        linux.sethostname("inner-host")
        return socket.gethostname()

    assert in_child(child, flags=linux.CLONE_NEWUTS) == "inner-host"
    assert socket.gethostname() != "inner-host"


@pytest.mark.root
def test_interface_up_in_new_netns():
    def flags(name):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            res = fcntl.ioctl(s.fileno(), linux.SIOCGIFFLAGS, struct.pack("16sh22x", name, 0))
            return struct.unpack_from("16sh", res)[1]

    def child():
        before = flags(b"lo")
        linux.interface_up("lo")
        return before, flags(b"lo"), sorted(socket.if_nameindex())

    before, after, names = in_child(child, flags=linux.CLONE_NEWNET)
    assert not before & linux.IFF_UP
    assert after & linux.IFF_UP
    assert [n for _, n in names] == ["lo"]


@pytest.mark.root
def test_drop_bounding_capabilities():
    def child():
        linux.drop_bounding_capabilities()
        status = Path("/proc/self/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("CapBnd:")).split()[1], 16)

    assert in_child(child, flags=0) == sum(1 << c for c in linux.DEFAULT_CAPABILITIES)


def test_set_process_title_hides_argv_and_environ():
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            linux.set_process_title(b"lamina-init")
        finally:
            os.write(ready_w, b"x")
            os.read(done_r, 1)  # wait for the parent to look
            os._exit(0)
    try:
        os.read(ready_r, 1)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
    assert cmdline.rstrip(b"\0") == b"lamina-init"
    assert environ.strip(b"\0") == b""
    assert Path(f"/proc/{os.getpid()}/environ").read_bytes().strip(b"\0")  # ours untouched


def test_pdeathsig_kills_child_when_parent_exits():
    r, w = os.pipe()
    armed_r, armed_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        grandchild = os.fork()
        if grandchild == 0:
            linux.set_pdeathsig(signal.SIGKILL)
            os.write(w, str(os.getpid()).encode())
            os.write(armed_w, b"x")
            signal.pause()
            os._exit(0)
        os.read(armed_r, 1)
        os._exit(0)  # exits once the grandchild is armed; the grandchild must follow
    os.close(w)
    os.close(armed_w)
    os.close(armed_r)
    gpid = int(os.read(r, 32))
    os.waitpid(middle, 0)
    for _ in range(200):
        try:
            state = Path(f"/proc/{gpid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        import time
        time.sleep(0.01)
    else:
        os.kill(gpid, signal.SIGKILL)
        pytest.fail("the grandchild outlived its parent")


# --- overlay mounting -----------------------------------------------------------------

def _layers(tmp_path: Path, n: int) -> list[Path]:
    dirs = []
    for i in range(n):
        d = tmp_path / "L" / f"a-rather-long-layer-directory-name-{i:05d}"
        d.mkdir(parents=True)
        (d / "who").write_text(str(i))
        (d / f"f{i}").write_text("")
        dirs.append(d)
    return dirs[::-1]  # top-most first


@pytest.mark.root
@pytest.mark.parametrize("api", ["new", "classic", "auto"])
def test_mount_overlay_many_layers(tmp_path, api):
    lowers = _layers(tmp_path, 140)
    upper, work, target, scratch = (tmp_path / n for n in ("u", "w", "m", "s"))
    for d in (upper, work, target, scratch):
        d.mkdir()

    def child():
        used = overlay.mount_overlay(lowers, upper, work, target, scratch, api=api)
        return used, (target / "who").read_text(), len(os.listdir(target))

    used, who, count = in_child(child)
    assert used == ("classic" if api == "classic" else "new")
    assert who == "139"
    assert count == 141  # who + f0..f139
    assert str(target) not in Path("/proc/self/mountinfo").read_text()


@pytest.mark.root
def test_mount_overlay_without_lower_uses_an_empty_dir(tmp_path):
    upper, work, target, scratch = (tmp_path / n for n in ("u", "w", "m", "s"))
    for d in (upper, work, target, scratch):
        d.mkdir()

    def child():
        overlay.mount_overlay((), upper, work, target, scratch)
        (target / "new").write_text("x")
        return sorted(os.listdir(target))

    assert in_child(child) == ["new"]
    assert (upper / "new").read_text() == "x"


@pytest.mark.root
def test_classic_mount_escapes_awkward_paths(tmp_path):
    lower = tmp_path / "with:colon,comma"
    lower.mkdir()
    (lower / "f").write_text("ok")
    upper, work, target, scratch = (tmp_path / n for n in ("u", "w", "m", "s"))
    for d in (upper, work, target, scratch):
        d.mkdir()

    def child():
        overlay.mount_overlay([lower], upper, work, target, scratch, api="classic")
        return (target / "f").read_text()

    assert in_child(child) == "ok"


@pytest.mark.root
def test_upper_on_overlayfs_is_refused_clearly(tmp_path):
    lower, upper, work, merged, scratch = (tmp_path / n for n in ("l", "u", "w", "m", "s"))
    for d in (lower, upper, work, merged, scratch):
        d.mkdir()

    def child():
        overlay.mount_overlay([lower], upper, work, merged, scratch)
        (merged / "up").mkdir()
        (merged / "wk").mkdir()
        overlay.check_upper_work(merged / "up", merged / "wk")

    with pytest.raises(SandboxError, match="is on an overlayfs filesystem"):
        in_child(child)


def test_upper_and_work_on_different_filesystems_are_refused(tmp_path):
    work = Path("/dev/shm") / f"lamina-linux-test-{os.getpid()}"
    work.mkdir()
    try:
        with pytest.raises(SandboxError, match="different filesystems"):
            overlay.check_upper_work(tmp_path, work)
    finally:
        work.rmdir()
    with pytest.raises(SandboxError, match="does not exist"):
        overlay.check_upper_work(tmp_path / "nope", tmp_path)
