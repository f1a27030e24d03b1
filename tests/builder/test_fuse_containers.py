"""Containers whose root is fuse-overlayfs (builder.containers.fuseroot), forced with
LAMINA_OVERLAY=fuse on this kernel, which allows overlayfs everywhere.

The oracle is the kernel's overlayfs: the same container commands committed from a
kernel-overlay container give the layer (diff_id) a fuse-overlayfs container must
give, as root and rootless. Daemons and mounts are looked for in /proc.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from tests.builder.test_containers import wait_for
from tests.builder.test_fuse_overlay import _fuse_open_to_users, _mentions
from tests.builder.test_rootless import lamina_as, users  # noqa: F401 - fixture

pytestmark = pytest.mark.root

EPOCH = "1700000000"
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /d/sub /keep/sub /gone/deep /etc && echo a > /d/sub/f && echo b > /x \\
 && echo c > /gone/deep/y && echo k > /keep/sub/k && echo o > /keep/owned \\
 && echo from-image > /etc/motd
"""
# what the container changes: a whiteout, an opaque dir, a removed dir, a copy-up, an
# owner, a setuid bit, a hard link, a symlink, new dirs; then every time it touched is
# set to a fixed one (a commit's layer keeps mtimes: two runs must be comparable), and
# PID 1 stays (commit of a running container)
CHANGES = ("rm /x && rm -rf /d && mkdir /d && echo g > /d/g && rm -rf /gone"
           " && echo more >> /keep/sub/k && chown 1000:1000 /keep/owned"
           " && chmod 4755 /keep/owned && ln /keep/owned /keep/hard && mkdir -p /brand/new"
           " && ln -s /keep/owned /brand/link"
           " && touch -h -d @1600000000 /d /d/g /keep /keep/sub /keep/sub/k /keep/owned"
           " /brand /brand/new /brand/link /"
           " && echo ready && exec sleep 1000")


def _lamina(root: Path, *args: str, mode: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "LAMINA_OVERLAY": mode})
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _state(root: Path, cid: str) -> dict:
    return json.loads((root / "containers" / cid / "state.json").read_text())


def _layer(root: Path, ref: str) -> tuple[str, list[tuple]]:
    """The top layer of `ref`, written again from its layer dir with its times clamped to
    EPOCH (the image's own times; what the container did at run time — a whiteout's time
    is when it deleted — is later and becomes EPOCH: two runs are comparable, as a build
    with SOURCE_DATE_EPOCH): that tar's sha256 and its entries (name, type, mode,
    owner, mtime, link, content)."""
    from lamina.store.store import Store
    from lamina.store.tarwrite import write_tar

    with Store(root) as store:
        diff_id = store.resolve(ref).layers[-1].diff_id
        out = io.BytesIO()
        write_tar(store.layer_dir(diff_id), out, source_date_epoch=int(EPOCH))
    return hashlib.sha256(out.getvalue()).hexdigest(), _entries(out.getvalue())


def _entries(tar: bytes) -> list[tuple]:
    entries = []
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:*") as tf:
        for m in tf:
            body = tf.extractfile(m).read() if m.isfile() else None
            entries.append((m.name, m.type, oct(m.mode), m.uid, m.gid,
                            min(int(m.mtime), int(EPOCH)), m.linkname, body))
    return entries


def _saved_top_layer(archive: Path) -> bytes:
    """The top layer's tar in a docker-archive (`lamina save`)."""
    with tarfile.open(archive) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())
        return outer.extractfile(manifest[0]["Layers"][-1]).read()


@pytest.fixture(scope="module")
def image_store(tmp_path_factory, busybox_path):
    base = tmp_path_factory.mktemp("fuse-ctr")
    ctx = base / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    shutil.copy(busybox_path, ctx / "busybox")
    root = base / "store"
    _lamina(root, "build", "--network", "none", "-t", "img", str(ctx), mode="kernel")
    yield root, ctx
    _kill_monitors(root)


def _kill_monitors(root: Path) -> None:
    """What a failed test left running in the store `root`: its monitors, by pid (their
    PID 1 and fuse daemon die with them)."""
    from lamina.builder.containers.state import process_is

    for f in (root / "containers").glob("*/state.json"):
        rec = json.loads(f.read_text())
        if rec.get("monitor_pid") and process_is(rec["monitor_pid"], rec.get("monitor_start", "")):
            os.kill(rec["monitor_pid"], signal.SIGKILL)


def _run_and_commit(root: Path, mode: str, ref: str) -> tuple[str, list[tuple], str]:
    cid = _lamina(root, "run", "-d", "--network", "none", "img", "sh", "-c", CHANGES,
                  mode=mode).stdout.strip()
    assert wait_for(lambda: b"ready" in (root / "containers" / cid / "ctr.log").read_bytes())
    assert _state(root, cid)["status"] == "running"
    _lamina(root, "commit", cid, ref, mode="kernel")  # the record says how to read it
    return (*_layer(root, ref), cid)


def test_commit_of_a_fuse_container_gives_the_kernel_containers_layer(image_store):
    root, _ = image_store
    k_id, k_entries, k_cid = _run_and_commit(root, "kernel", "snap:kernel")
    f_id, f_entries, f_cid = _run_and_commit(root, "fuse", "snap:fuse")
    assert _state(root, f_cid)["overlay"] == "fuse" and _state(root, k_cid)["overlay"] == "kernel"
    procs, _ = _mentions(str(root / "containers" / f_cid))
    assert procs, "no fuse-overlayfs daemon for the fuse container"
    # exec enters the container's mount namespace: the fuse root, with PID 1's writes
    ex = _lamina(root, "exec", f_cid, "sh", "-c", "cat /d/g; ls /x 2>&1", mode="fuse",
                 check=False)
    assert ex.stdout == "g\nls: /x: No such file or directory\n", ex.stderr
    assert f_entries == k_entries
    assert f_id == k_id
    names = {e[0]: e for e in k_entries}
    # the oracle did what the container says
    assert {".wh.x", ".wh.gone", "d/.wh..wh..opq", "keep/hard", "brand/link"} <= set(names)
    assert names["keep/owned"][2:5] == (oct(0o4755), 1000, 1000)
    assert "brand/.wh..wh..opq" not in names and "proc" not in names
    _lamina(root, "rm", "-f", k_cid, f_cid, mode="kernel")
    assert wait_for(lambda: _mentions(str(root / "containers")) == ([], []))


def test_commit_of_a_running_fuse_container_has_what_it_still_holds_open(image_store):
    """fuse-overlayfs mounts with the kernel's writeback cache: what PID 1 wrote to a file
    it keeps open (and never closed a descriptor of: each close flushes) is only in the
    page cache — the upper dir has an empty file — until commit syncs the mount."""
    root, _ = image_store
    cid = _lamina(root, "run", "-d", "--network", "none", "img", "sh", "-c",
                  "exec >/held; echo held-data; exec sleep 1000", mode="fuse").stdout.strip()
    init = _state(root, cid)["init_pid"]
    assert wait_for(lambda: Path(f"/proc/{init}/cmdline").read_bytes() == b"sleep\x001000\x00")
    upper = root / "containers" / cid / "upper" / "held"
    assert upper.stat().st_size == 0  # the case this test is about
    _lamina(root, "commit", cid, "held:1", mode="fuse")
    shown = _lamina(root, "run", "--rm", "--network", "none", "held:1", "cat", "/held",
                    mode="kernel")
    assert shown.stdout == "held-data\n"
    _lamina(root, "rm", "-f", cid, mode="kernel")


def test_foreground_run_prints_and_its_writes_are_gone(image_store):
    root, _ = image_store
    first = _lamina(root, "run", "--network", "none", "img", "sh", "-c",
                    "cat /etc/motd; echo changed > /etc/motd; echo new > /newfile; cat /etc/motd",
                    mode="fuse")
    assert first.stdout == "from-image\nchanged\n"
    assert first.stderr.count("use fuse-overlayfs") == 1
    (cid,) = [c for c in _lamina(root, "ps", "-aq", "--no-trunc", mode="kernel").stdout.split()]
    st = _state(root, cid)
    assert st["status"] == "exited" and st["exit_code"] == 0 and st["overlay"] == "fuse"
    # the exited container's upper dir was flushed (the monitor unmounted before
    # recording it exited): a commit of it has the write
    _lamina(root, "commit", cid, "after:1", mode="kernel")
    again = _lamina(root, "run", "--rm", "--network", "none", "after:1", "cat", "/newfile",
                    "/etc/motd", mode="fuse")
    assert again.stdout == "new\nchanged\n"
    fresh = _lamina(root, "run", "--rm", "--network", "none", "img", "sh", "-c",
                    "cat /etc/motd; ls /newfile 2>&1", mode="fuse", check=False)
    assert fresh.stdout.splitlines()[0] == "from-image" and "No such file" in fresh.stdout
    _lamina(root, "rm", cid, mode="kernel")
    assert _mentions(str(root / "containers")) == ([], [])


def test_sigkill_of_the_monitor_leaves_no_daemon_and_no_mount(image_store):
    root, _ = image_store
    cid = _lamina(root, "run", "-d", "--network", "none", "img", "sh", "-c",
                  "echo ready; exec sleep 1000", mode="fuse").stdout.strip()
    d = root / "containers" / cid
    assert wait_for(lambda: b"ready" in (d / "ctr.log").read_bytes())
    st = _state(root, cid)
    procs, mounts = _mentions(str(d))
    assert procs and mounts  # the daemon, and the mount in the monitor's namespace
    assert st["monitor_pid"] in mounts
    os.kill(st["monitor_pid"], signal.SIGKILL)
    assert wait_for(lambda: _mentions(str(d)) == ([], []))
    assert wait_for(lambda: not os.path.exists(f"/proc/{st['init_pid']}"))
    assert str(d) not in Path("/proc/self/mountinfo").read_text()
    ps = _lamina(root, "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Status}}",
                 mode="kernel").stdout
    assert f"{cid} Exited (137)" in ps
    _lamina(root, "rm", cid, mode="kernel")


def test_rootless_fuse_container_commit_gives_the_root_kernel_layer(users, image_store,
                                                                     request):
    root, ctx = image_store
    _, k_entries, k_cid = _run_and_commit(root, "kernel", "snap:rk")
    _lamina(root, "rm", "-f", k_cid, mode="kernel")
    user, _, python = users
    base = Path(tempfile.mkdtemp(prefix="lamina-fuse-ctr-rl-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    shutil.copytree(ctx, base / "ctx")
    for dirpath, dirnames, filenames in os.walk(base):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            os.lchown(n, user.uid, user.uid)
    base.chmod(0o755)
    store = base / "store"
    env = {"SOURCE_DATE_EPOCH": EPOCH, "LAMINA_OVERLAY": "fuse"}

    def as_user(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return lamina_as(user, python, *args, root=store, env_extra=env, check=check)

    with _fuse_open_to_users():
        as_user("build", "--network", "none", "-t", "img", str(base / "ctx"))
        cid = as_user("run", "-d", "--network", "none", "img", "sh", "-c",
                      CHANGES).stdout.strip()
        try:
            assert wait_for(lambda: b"ready" in (store / "containers" / cid / "ctr.log")
                            .read_bytes())
            assert _state(store, cid)["overlay"] == "fuse"
            as_user("commit", cid, "snap:rl")
            shown = as_user("run", "--rm", "--network", "none", "snap:rl", "sh", "-c",
                            "cat /d/g; ls /x 2>&1; stat -c '%a %u' /keep/owned")
            assert shown.stdout.splitlines() == ["g", "ls: /x: No such file or directory",
                                                 "4755 1000"]
            as_user("rm", "-f", cid)
            as_user("save", "snap:rl", "-o", str(base / "snap.tar"))
        finally:
            _kill_monitors(store)
    # the rootless store is not opened as root (store.overlayform): its saved layer,
    # with the same clamping as _layer
    assert _entries(_saved_top_layer(base / "snap.tar")) == k_entries
    time.sleep(0.1)
    assert _mentions(str(store)) == ([], [])
