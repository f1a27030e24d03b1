"""The sandbox's lifecycle: every process and mount ends with the step (success,
failure, exception in the output callback, SIGINT, SIGKILL of lamina), output streams
live, and (property) the mount points it creates never reach the layer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lamina.builder.sandbox import sandbox
from tests.builder.conftest import DEFAULT_ENV
from tests.builder.test_sandbox import REPO, _host_mounts, _procs_with_cmdline, _sh, _tree

pytestmark = pytest.mark.root


# --- processes and mounts end with the step ---------------------------------------------

def test_background_process_dies_with_the_step(busybox_rootfs, run_sandbox):
    start = time.monotonic()
    code, out, _ = run_sandbox([busybox_rootfs], _sh("sleep 1234 & echo started"))
    assert code == 0 and out == b"started\n"
    assert time.monotonic() - start < 10
    assert _procs_with_cmdline(b"sleep\x001234") == []


def test_init_reaps_orphans(busybox_rootfs, run_sandbox):
    # orphans are re-parented to our init (pid 1), which must reap them: no zombies
    code, out, _ = run_sandbox([busybox_rootfs], _sh(
        "for i in 1 2 3; do (true &); done; sleep 0.3; "
        "grep -l '^State:.*Z' /proc/[0-9]*/status; echo done"))
    assert code == 0
    assert out == b"done\n"


def test_output_streams_live(busybox_rootfs, step_dirs):
    upper, work = step_dirs()
    stamps = []
    spec = sandbox.SandboxSpec((busybox_rootfs,), upper, work,
                               tuple(_sh("echo one; sleep 1; echo two")), DEFAULT_ENV)
    sandbox.run(spec, lambda b: stamps.append((time.monotonic(), b)))
    text = b"".join(b for _, b in stamps)
    assert text == b"one\ntwo\n"
    first = next(t for t, b in stamps if b"one" in b)
    last = next(t for t, b in stamps if b"two" in b)
    assert last - first > 0.5  # "one" arrived before the command finished


def test_exception_in_callback_kills_everything(busybox_rootfs, step_dirs):
    upper, work = step_dirs()

    class Stop(Exception):
        pass

    def on_output(data: bytes) -> None:
        if b"ready" in data:
            raise Stop

    spec = sandbox.SandboxSpec((busybox_rootfs,), upper, work,
                               tuple(_sh("sleep 1001 & sleep 1001 & echo ready; wait")),
                               DEFAULT_ENV)
    with pytest.raises(Stop):
        sandbox.run(spec, on_output)
    assert _procs_with_cmdline(b"sleep\x001001") == []
    assert str(upper.parent) not in _host_mounts()
    assert os.listdir(work) == []


_DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from lamina.builder.sandbox import sandbox
spec = sandbox.SandboxSpec((Path({lower!r}),), Path({upper!r}), Path({work!r}),
                           ("sh", "-c", "sleep {n} & sleep {n} & echo ready; wait"),
                           (("PATH", "/bin"),))
def out(b):
    sys.stdout.buffer.write(b); sys.stdout.flush()
try:
    sandbox.run(spec, out)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_interrupting_lamina_leaves_no_process_and_no_mount(busybox_rootfs, step_dirs, how):
    upper, work = step_dirs()
    n = 1100 + how
    code = _DRIVER.format(repo=str(REPO), lower=str(busybox_rootfs), upper=str(upper),
                          work=str(work), n=n)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 5  # "ready" may come before both sleeps have exec'd
        while len(_procs_with_cmdline(f"sleep\x00{n}".encode())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_procs_with_cmdline(f"sleep\x00{n}".encode())) == 2
        proc.send_signal(how)
        rest = proc.stdout.read()
        proc.wait(timeout=20)
        if how == signal.SIGINT:
            assert rest == b"INTERRUPTED\n" and proc.returncode == 130
            assert os.listdir(work) == []
            # synchronous: run() returned only after the namespace was empty
            assert _procs_with_cmdline(f"sleep\x00{n}".encode()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5  # SIGKILL: the chain of PDEATHSIGs is asynchronous
    while _procs_with_cmdline(f"sleep\x00{n}".encode()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _procs_with_cmdline(f"sleep\x00{n}".encode()) == []
    assert str(upper) not in _host_mounts()
    assert str(work.parent) not in _host_mounts()


# --- property: mount points never leak into the layer ----------------------------------

_TARGETS = ["/m1", "/etc/m2", "/var/lib/m3", "/tmp/deep/er/m4", "/home/alice/m5",
            "/link/m6", "/etc/passwd", "/dev/m7"]
_WRITES = [None, "/etc/new", "/var/lib/x/new", "/newtop", "/link/y/new", "/tmp/deep/new"]


@pytest.fixture(scope="module")
def link_layer(tmp_path_factory):
    d = tmp_path_factory.mktemp("linklayer")
    os.symlink("/var", d / "link")
    return d


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(targets=st.lists(st.sampled_from(_TARGETS), unique=True, max_size=4),
       kinds=st.lists(st.booleans(), min_size=4, max_size=4),
       write=st.sampled_from(_WRITES))
def test_stubs_never_reach_the_layer(busybox_rootfs, link_layer, tmp_path_factory, targets,
                                     kinds, write):
    base = tmp_path_factory.mktemp("prop")
    upper, work = base / "upper", base / "work"
    upper.mkdir()
    work.mkdir()
    os.utime(upper, ns=(5, 5))
    secret = base / "secret"
    secret.write_text("s")
    mounts = tuple(
        sandbox.SecretMount(secret, t) if file_kind
        else sandbox.TmpfsMount(t)
        for t, file_kind in zip(targets, kinds))
    if "/etc/passwd" in targets:  # an existing file: only a file can be mounted on it
        mounts = tuple(sandbox.SecretMount(secret, m.target) if m.target == "/etc/passwd"
                       else m for m in mounts)
    script = "true" if write is None else f"mkdir -p {os.path.dirname(write)} && echo x > {write}"
    lower_before = _snapshot(busybox_rootfs)
    code = sandbox.run(sandbox.SandboxSpec((link_layer, busybox_rootfs), upper, work,
                                           ("sh", "-c", script), DEFAULT_ENV, mounts=mounts),
                       lambda b: None)
    assert code == 0
    expected: set[str] = set()
    if write is not None:
        real = write.replace("/link/", "/var/")
        parts = real.strip("/").split("/")
        expected = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    assert set(_tree(upper)) == expected
    if write is None:
        assert os.lstat(upper).st_mtime_ns == 5   # the upper root's own time is restored
    assert _snapshot(busybox_rootfs) == lower_before


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (os.lstat(p).st_mode, os.lstat(p).st_mtime_ns)
            for p in root.rglob("*") if not p.is_relative_to(root / "bin")
            and not p.is_relative_to(root / "usr") and not p.is_relative_to(root / "sbin")}
