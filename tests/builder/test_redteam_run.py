"""Red-team pins: what lamina itself holds must stay out of a RUN's reach. The
sandbox's init (PID 1 of the step) is a fork of lamina: it holds lamina's open store
database and lock files and lamina's whole environment; the step must see none of it."""

from __future__ import annotations

import pytest

from tests.builder.buildkit import build, make_context

pytestmark = pytest.mark.root


def test_run_sees_no_fd_env_or_init_state_of_lamina(build_store, tmp_path, monkeypatch):
    root, _ = build_store
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/lamina-redteam-agent.sock")
    monkeypatch.setenv("LAMINA_REDTEAM_TOKEN", "s3cr3t-token")
    # the fds a process of the step starts with (those of sleep: the shell's at fork)
    script = ("sleep 30 & P=$!; echo FDS $(ls /proc/$P/fd | sort -n | tr '\\n' ' '); "
              "kill $P; env | sort; "
              "for f in /proc/1/fd/* /proc/1/environ /proc/1/mem; do "
              "head -c1 $f >/dev/null 2>&1 && echo READABLE $f; done; "
              "ls /proc/1/root/ >/dev/null 2>&1 && echo READABLE /proc/1/root; echo end")
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nRUN {script}\n")
    run = build(root, ctx, "--no-cache")
    assert run.code == 0, run.stderr
    out = run.steps[-1].output
    assert out[-1] == "end"
    assert "FDS 0 1 2" in out, out
    assert not [line for line in out if line.startswith("READABLE")], out
    text = "\n".join(out)
    assert "SSH_AUTH_SOCK" not in text and "s3cr3t-token" not in text


def test_step_init_holds_no_descriptor_of_lamina(build_store, tmp_path):
    """Seen from the host while the step runs: the init (lamina-init) keeps only its
    stdio, never the store's database, lock files or pipes of lamina."""
    import os
    import subprocess
    import time

    from tests.builder.buildkit import lamina_argv, procs_with_cmdline

    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN sleep 5\n")
    proc = subprocess.Popen(lamina_argv(root, "build", "--no-cache", "--progress", "plain", str(ctx)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def descends_from_the_build(pid: int) -> bool:
            # only this build's init (other builds may run on the machine meanwhile)
            while pid > 1:
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        pid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    return False
                if pid == proc.pid:
                    return True
            return False

        deadline = time.monotonic() + 20
        fds = None
        while fds is None and time.monotonic() < deadline:
            for init in procs_with_cmdline(b"lamina-init"):
                if init == os.getpid() or not descends_from_the_build(init):
                    continue
                time.sleep(0.3)  # past its fork of the command
                try:  # `sleep 5` keeps it alive; a process that ended meanwhile is looked for again
                    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{init}/fd"))
                    targets = [os.readlink(f"/proc/{init}/fd/{fd}") for fd in fds if fd > 2]
                except FileNotFoundError:
                    fds = None
                    continue
                break
            time.sleep(0.05)
        assert fds is not None, "the step's init was not seen"
        assert fds and max(fds) <= 2, targets
    finally:
        proc.kill()  # the build is stopped on purpose: only its init was of interest
        proc.wait()
