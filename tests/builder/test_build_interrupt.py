"""Interrupting `lamina build` (Ctrl-C, i.e. SIGINT to the foreground process group, and
SIGINT/SIGTERM to lamina alone) while a RUN is running: lamina exits non-zero quickly,
leaves no mount under the store root and no process of the step, `lamina fsck` finds
the store clean, nothing is tagged, and the next build works."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.builder.buildkit import (
    build, has_image, lamina, lamina_argv, make_base, make_context, procs_with_cmdline,
    python_env, store_mounts,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("interrupt")
    root = base / "store"
    make_base(root, base / "base-ctx")
    return root


def _temp_entries(store) -> list[str]:
    """What is left in the store's temp dir (lamina's own owner lock files aside)."""
    tmp = store / "tmp"
    return sorted(p.name for p in tmp.iterdir() if not p.name.endswith(".owner")) \
        if tmp.exists() else []


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("how", ["ctrl-c", "sigint", "sigterm", "sigkill"])
def test_interrupted_run_cleans_up(store, tmp_path, how):
    marker = {"ctrl-c": "1001", "sigint": "1002", "sigterm": "1003", "sigkill": "1004"}[how]
    needle = f"sleep\x00{marker}".encode()
    ctx = make_context(tmp_path / "ctx", f"""\
FROM bb
RUN echo before > /before
RUN --mount=type=cache,target=/cache --mount=type=tmpfs,target=/tmpfs \\
    echo started && sleep {marker}
""")
    proc = subprocess.Popen(lamina_argv(store, "build", "--progress", "plain", "-t", f"intr:{how}",
                                        str(ctx)),
                            env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        pids = _wait_for(lambda: procs_with_cmdline(needle), 30, "the RUN's sleep to start")
        # the step's mounts live in its own mount namespace, never in the host's
        assert os.readlink(f"/proc/{pids[0]}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert store_mounts(store) == []
        t0 = time.monotonic()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does
        else:
            proc.send_signal({"sigint": signal.SIGINT, "sigterm": signal.SIGTERM,
                              "sigkill": signal.SIGKILL}[how])
        out, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err.decode()
    assert proc.returncode != 0
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"
    assert "Traceback" not in err, err
    if how != "sigkill":  # a killed lamina cannot clean up: the next start does
        assert _temp_entries(store) == []
    assert not any(l.startswith(b"sha256:") for l in out.splitlines())
    _wait_for(lambda: not procs_with_cmdline(needle), 5, "the sleep to be gone")
    assert store_mounts(store) == []
    assert not has_image(store, f"intr:{how}")
    fsck = lamina(store, "fsck")
    assert fsck.code == 0, fsck.stdout + fsck.stderr
    # the store still works: the interrupted step is not cached, the one before it is
    ctx2 = make_context(tmp_path / "ctx2", f"FROM bb\nRUN echo before > /before\nRUN echo after-{how}\n")
    again = build(store, ctx2, "-t", f"after:{how}").check()
    assert again.steps[0].cached and not again.steps[1].cached
    assert has_image(store, f"after:{how}")
    assert store_mounts(store) == []
    assert _temp_entries(store) == []  # what the interrupted build left is gone too
