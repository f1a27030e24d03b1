"""Red-team: an image whose /proc (or /sys) is a symlink. The sandbox mounted proc where
the link led but applied docker's masked and read-only paths under the link's own
path, i.e. nowhere: /proc/sys was writable (kernel.core_pattern is the host's: a RUN
could have the host kernel run a program of its choice as root). As runc, proc and
sysfs now go only on an ordinary directory."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.builder.buildkit import build, busybox_binary, make_context

pytestmark = pytest.mark.root


@pytest.mark.parametrize("name,fstype", [("proc", "proc"), ("sys", "sysfs")])
def test_kernel_filesystem_through_a_symlink_is_refused(build_store, tmp_path, name, fstype):
    root, _ = build_store
    # on scratch: a base built by a RUN has /proc and /sys (runc's mount points stay in
    # the layer, as in BuildKit's), which a symlink cannot replace
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nCOPY busybox /bin/busybox\nCOPY r/ /\n"
                       'RUN ["/bin/busybox", "echo", "step-ran"]\n')
    shutil.copy(busybox_binary(), ctx / "busybox")
    (ctx / "r").mkdir()
    os.symlink(f"/{name}-elsewhere", ctx / "r" / name)
    run = build(root, ctx, "--no-cache")
    assert run.code == 1
    assert run.steps[-1].output == []  # the command never ran
    assert f"/{name} in the image is a symlink: {fstype} can only be mounted on an ordinary directory" in run.stderr


def test_proc_sys_is_read_only_in_a_run(build_store, tmp_path):
    root, _ = build_store
    # opening for writing changes nothing; a read-only mount refuses it (EROFS)
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN sh -c 'exec 3>>/proc/sys/kernel/core_pattern'"
                       " 2>/dev/null && echo SYSCTL-WRITABLE; grep -c . /proc/keys; echo end\n")
    run = build(root, ctx, "--no-cache")
    assert run.code == 0, run.stderr
    assert run.steps[-1].output == ["0", "end"]  # read-only, and /proc/keys masked
