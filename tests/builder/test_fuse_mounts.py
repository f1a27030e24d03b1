"""RUN --mount views through fuse-overlayfs (builder.sandbox.fuseviews), forced with
LAMINA_OVERLAY=fuse on this kernel, which allows overlayfs everywhere.

The oracle is the kernel's overlayfs: the same Dockerfile, whose steps read and write
the mounted views of another stage (and of the context), gives the same image ID
through fuse-overlayfs, as root and rootless. Daemons and mounts are read from /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.builder.test_fuse_overlay import (ENV, NOTE, _fuse_open_to_users, _iid, _lamina,
                                             _mentions, _program)
from tests.builder.test_rootless import lamina_as, users  # noqa: F401 - fixture

pytestmark = pytest.mark.root

LISTING = ('(cd /m && find . | sort | while read f; do if [ -d "$f" ]; then'
           ' stat -c "%n %a %u %g %F" "$f"; else stat -c "%n %a %u %g %s %F" "$f"; fi; done)')
DOCKERFILE = f"""\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base AS stage
RUN mkdir -p /data/sub /data/gone && echo from-stage > /data/sub/f && echo g > /data/g \\
 && chown 1000:1000 /data/sub/f

FROM base
# rw: the step reads the stage's file, writes (a copy-up, a whiteout, an opaque dir, new
# dirs) and sees its writes; none of them may reach the stage or this layer
RUN --mount=from=stage,source=/data,target=/m,rw \\
    cat /m/sub/f > /copied && echo w > /m/sub/f && rm /m/g && rm -rf /m/gone \\
 && mkdir /m/gone && mkdir -p /m/new/deep && touch /m/new/x && cat /m/sub/f >> /copied \\
 && {LISTING} > /listing
RUN --mount=from=stage,source=/data,target=/m,rw cat /m/sub/f /m/g > /second
RUN --mount=from=stage,target=/s cat /s/data/sub/f > /ro \\
 && (touch /s/x 2>/dev/null && echo writable || echo read-only) >> /ro
RUN --mount=type=bind,target=/c,rw echo changed > /c/Dockerfile && cat /c/Dockerfile > /ctx
RUN --mount=type=cache,from=stage,source=/data,target=/cache,id=seeded cat /cache/sub/f > /cached
# a copied-up directory whose time the step sets (a build normalising its times)
RUN mkdir -p /t/sub && echo a > /t/sub/f
RUN echo b >> /t/sub/f && touch -d @1600000000 /t/sub
"""


@pytest.fixture(scope="module")
def context(tmp_path_factory, busybox_path):
    ctx = tmp_path_factory.mktemp("fuse-mounts") / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    shutil.copy(busybox_path, ctx / "busybox")
    return ctx


@pytest.fixture(scope="module")
def kernel_build(context, tmp_path_factory):
    """(image ID, the image's files) of the kernel overlay's build: the oracle."""
    store = tmp_path_factory.mktemp("kernel-mounts") / "store"
    out = store.parent / "out"
    done = _lamina("build", "--network", "none", "--output", f"type=local,dest={out}",
                   str(context), root=store, mode="kernel")
    return _iid(done.stdout), out


def test_run_mount_of_a_stage_through_fuse_gives_the_kernel_image_id(context, kernel_build,
                                                                      tmp_path):
    iid, files = kernel_build
    # the oracle did what the Dockerfile says
    assert (files / "copied").read_text() == "from-stage\nw\n"
    assert (files / "second").read_text() == "from-stage\ng\n"  # the rw writes were dropped
    assert (files / "ro").read_text() == "from-stage\nread-only\n"
    assert (files / "ctx").read_text() == "changed\n"
    assert (files / "cached").read_text() == "from-stage\n"
    assert "./sub/f 644 1000 1000 2 regular file" in (files / "listing").read_text()
    assert (files / "t" / "sub").stat().st_mtime == 1600000000
    store = tmp_path / "store"
    out = tmp_path / "out"
    done = _lamina("build", "--network", "none", "--output", f"type=local,dest={out}",
                   str(context), root=store, mode="fuse")
    assert done.stderr.count(NOTE) == 1
    for name in ("copied", "second", "ro", "ctx", "cached", "listing"):
        assert (out / name).read_text() == (files / name).read_text(), name
    assert _iid(done.stdout) == iid
    assert (context / "Dockerfile").read_text() == DOCKERFILE  # the context was not written
    assert _mentions(str(store)) == ([], [])  # no daemon, no mount after the steps
    assert not any((store / "tmp").iterdir())


def test_sigkill_during_a_run_mount_leaves_no_daemon_and_no_mount(context, tmp_path):
    store, ctx = tmp_path / "store", tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(context / "busybox", ctx / "busybox")
    marker = f"{os.getpid() % 1000 + 9000}"
    (ctx / "Dockerfile").write_text(
        "FROM scratch AS base\nCOPY busybox /bin/busybox\n"
        "FROM base\n"
        f'RUN --mount=from=base,target=/m,rw ["/bin/busybox", "sleep", "{marker}"]\n')
    proc = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(store), "build",
                             "--network", "none", str(ctx)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, **ENV, "LAMINA_OVERLAY": "fuse"})
    try:
        deadline = time.monotonic() + 60
        while True:
            procs, mounts = _mentions(str(store))
            daemons = [p for p in procs if b"fuse-overlayfs" in _program(p)]
            if len(daemons) == 2 and mounts and _mentions(marker)[0]:
                break  # the step's root and the view of the other stage
            assert time.monotonic() < deadline and proc.poll() is None, "the RUN never started"
            time.sleep(0.05)
        # the view's daemon is outside the step's PID namespace: the step cannot see it
        (step,) = _mentions(marker)[0]
        assert all(os.readlink(f"/proc/{d}/ns/pid") != os.readlink(f"/proc/{step}/ns/pid")
                   for d in daemons)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _mentions(str(store)) != ([], []) or _mentions(marker)[0]:
            assert time.monotonic() < deadline, ("left behind", _mentions(str(store)))
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _lamina("fsck", root=store, mode="fuse")  # the next start cleans up after the killed one
    assert not any((store / "tmp").iterdir())


def test_rootless_run_mount_through_fuse_gives_the_root_image_id(users, context, kernel_build,
                                                                  request):
    iid, _ = kernel_build
    user, _, python = users
    base = Path(tempfile.mkdtemp(prefix="lamina-fuse-mounts-rl-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    shutil.copytree(context, base / "ctx")
    for dirpath, dirnames, filenames in os.walk(base):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            os.lchown(n, user.uid, user.uid)
    base.chmod(0o755)
    store = base / "store"
    with _fuse_open_to_users():
        done = lamina_as(user, python, "build", "--network", "none", str(base / "ctx"),
                         root=store, env_extra={**ENV, "LAMINA_OVERLAY": "fuse"})
    assert done.stderr.count(NOTE) == 1
    assert _iid(done.stdout) == iid
    assert _mentions(str(store)) == ([], [])


def test_views_are_fuse_mounts_whose_writes_stay_on_their_tmpfs(tmp_path):
    """fuseviews on its own, in a mount namespace: a writable view of a stage's layers and
    of a context dir are fuse-overlayfs mounts over a tmpfs upper; a read-only one has no
    upper; the layers are never written; discarding leaves no daemon and no mount."""
    from lamina.builder.sandbox import fuseoverlay, fuseviews, linux
    from lamina.builder.sandbox.rootmounts import BindMount, LayerMount, TmpfsMount
    from tests.builder.test_fuse_overlay import _all_pids, _in_mount_namespace

    low, top, ctx, run = (tmp_path / n for n in ("low", "top", "ctx", "run"))
    for d in (low / "d", top, ctx, run):
        d.mkdir(parents=True)
    (low / "d" / "f").write_text("low")
    (top / "t").write_text("top")
    (ctx / "c").write_text("ctx")
    mounts = (LayerMount(lower_dirs=(top, low), source="/d", target="/a", readonly=False),
              LayerMount(lower_dirs=(top, low), source="/", target="/b"),
              BindMount(source=ctx, target="/c", readonly=False),
              BindMount(source=ctx, target="/d"), TmpfsMount(target="/e"))

    def inside() -> None:
        out, views = fuseviews.mount_views(mounts, run)
        assert out[3:] == mounts[3:]  # a read-only bind and a tmpfs need no view
        rw, ro, bound = (Path(m.view) for m in out[:3])
        for v in (rw, ro, bound):
            assert linux.statfs_type(v) == fuseoverlay.FUSE_SUPER_MAGIC
        assert (rw / "d" / "f").read_text() == "low" and (ro / "t").read_text() == "top"
        (rw / "d" / "f").write_text("changed")
        (bound / "c").write_text("changed")
        with pytest.raises(OSError):
            (ro / "new").write_text("x")
        assert linux.statfs_type(rw.parent) == 0x01021994  # TMPFS_MAGIC: the upper's
        assert (rw.parent / "u" / "d" / "f").read_text() == "changed"
        fuseviews.discard_views(views)
        assert all(fm.pid not in _all_pids() for fm in views)
        assert str(run) not in Path("/proc/self/mountinfo").read_text()

    _in_mount_namespace(inside)
    assert (low / "d" / "f").read_text() == "low" and (ctx / "c").read_text() == "ctx"
    assert not list((run / "v0").iterdir())  # the tmpfs held the upper: nothing on disk
