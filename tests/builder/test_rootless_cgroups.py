"""Rootless step cgroups (issue 11): lamina run by an ordinary user in a cgroup v2
subtree delegated to that user moves itself into a leaf and puts every RUN step in a
cgroup under the subtree; anywhere else limits are skipped with a note saying why.

This machine's cgroup v2 hierarchy (hybrid: the unified mount) offers no pids or
memory controller, so the tests delegate a cgroup of it to the test user as systemd's
``Delegate=yes`` does (the dir, ``cgroup.procs``, ``cgroup.subtree_control`` and
``cgroup.threads`` chowned to the user) and force ``LAMINA_CGROUPS=v2``: what they
show is the kernel's own bookkeeping — which cgroup each process is in — and that a
limit with no controller behind it is refused rather than silently dropped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from lamina.builder.sandbox.delegation import own_v2_cgroup
from tests.builder.test_rootless import (_iid, _skip_or_fail, lamina_as_root,  # noqa: F401
                                         users)

DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox sleep 3; /bin/busybox echo ran > /ran"]
"""


def _cgroup2_mount() -> Path | None:
    return own_v2_cgroup("0::/\n", Path("/proc/self/mountinfo").read_text())


@pytest.fixture()
def context(users, busybox_path):
    user = users[0]
    ctx = Path(tempfile.mkdtemp(prefix="lamina-cg-ctx-"))  # pytest's tmp dirs are 0700
    ctx.chmod(0o755)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    shutil.copy(busybox_path, ctx / "busybox")
    for p in (ctx, *ctx.iterdir()):
        os.chown(p, user.uid, user.uid)
    yield ctx
    shutil.rmtree(ctx)


def _remove_tree(d: Path) -> None:
    """Kill what is left in cgroup `d` and below, then remove the dirs bottom-up."""
    for dirpath, dirnames, _ in sorted(os.walk(d), key=lambda t: -t[0].count("/")):
        kill = Path(dirpath) / "cgroup.kill"
        if kill.exists():
            kill.write_text("1")
        for _ in range(200):
            try:
                os.rmdir(dirpath)
                break
            except OSError:
                time.sleep(0.02)


@pytest.fixture()
def delegated(users):
    """A cgroup of the v2 hierarchy delegated to the test user, as systemd does it."""
    user = users[0]
    mount = _cgroup2_mount()
    if mount is None:
        _skip_or_fail("no cgroup2 mount")
    own = mount / f"lamina-test-delegated-{os.getpid()}"
    own.mkdir()
    for p in (own, own / "cgroup.procs", own / "cgroup.subtree_control",
              own / "cgroup.threads"):
        os.chown(p, user.uid, user.uid)
    yield own
    _remove_tree(own)
    assert not own.exists()


def _members(d: Path) -> list[int]:
    try:
        return [int(p) for p in (d / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _cgroup_of(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    return next((ln.split(":", 2)[2] for ln in text.splitlines() if ln.startswith("0::")), None)


def _build_in(own: Path, user, python: list[str], store: Path, *args: str,
              outer: tuple[str, ...] = (), env_extra: dict | None = None, watch: bool = True):
    """Run `lamina build ARGS` as `user`, started inside cgroup `own` (root moves the
    shell in, which then becomes the user: nothing of root's stays in `own`); watch
    which cgroups it and its steps are in. Returns (completed, lamina's cgroup, the
    step cgroups seen holding processes)."""
    env = {"HOME": str(user.home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8", "LAMINA_CGROUPS": "v2", **(env_extra or {})}
    script = ('echo $$ > "$0/cgroup.procs" && exec setpriv --reuid="$1" --regid="$1" '
              '--init-groups "${@:2}"')
    cmd = ["bash", "-c", script, str(own), str(user.uid), "env", "-i",
           *[f"{k}={v}" for k, v in env.items()], *outer, *python, "--root", str(store),
           "build", "--network", "none", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lamina_cgroup, steps = None, set()
    deadline = time.monotonic() + 120
    while watch and proc.poll() is None and time.monotonic() < deadline:
        now = _cgroup_of(proc.pid)
        if now is not None:
            lamina_cgroup = now
        base = own / "lamina"
        if base.is_dir():
            for d in base.iterdir():
                if d.is_dir() and _members(d):
                    steps.add(d.name)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    done.pid = proc.pid  # bash, then setpriv, then lamina: one process, one pid
    return done, lamina_cgroup, steps


@pytest.mark.root
def test_rootless_steps_run_in_cgroups_of_the_delegated_subtree(users, delegated, context,
                                                                tmp_path):
    user, _, python = users
    store = user.home / "store-cg"
    expected = _iid(lamina_as_root("build", "--network", "none", str(context),
                                   root=tmp_path / "root-store").stdout)
    done, lamina_cg, steps = _build_in(delegated, user, python, store, "--no-cache",
                                       str(context))
    assert done.returncode == 0, done.stderr
    assert _iid(done.stdout) == expected  # the same image as root's
    rel = "/" + str(delegated.relative_to(_cgroup2_mount()))
    # lamina left the delegated cgroup for a leaf of its own ...
    assert lamina_cg is not None and Path(lamina_cg).parent == Path(rel), lamina_cg
    leaf = Path(lamina_cg).name
    assert leaf.startswith(f"lamina-{done.pid}-"), lamina_cg
    # ... and the RUN step's processes were in a step cgroup below the subtree
    assert steps, "no step cgroup under the delegated subtree ever held a process"
    # afterwards: no step cgroup, lamina's dir gone, only the (empty) process leaf
    assert not (delegated / "lamina").exists()
    children = [p.name for p in delegated.iterdir() if p.is_dir()]
    assert children == [leaf] and not _members(delegated / leaf)
    assert "no step cgroups" not in done.stderr

    # a limit whose controller the subtree does not offer is refused, not dropped; the
    # next lamina removes the leaf the last one left
    again, _, _ = _build_in(delegated, user, python, store, "--no-cache", "--memory", "64m",
                            str(context), watch=False)
    assert again.returncode != 0
    assert "--memory" in again.stderr and "controller" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr
    assert not (delegated / leaf).exists()

    # lamina started as root of a user namespace it did not make (the unprivileged
    # container case) claims the subtree the same way
    adopted, adopted_cg, adopted_steps = _build_in(
        delegated, user, python, user.home / "store-cg-adopted", "--no-cache", str(context),
        outer=("unshare", "--user", "--map-root-user", "--map-auto"))
    assert adopted.returncode == 0, adopted.stderr
    assert _iid(adopted.stdout) == expected
    assert adopted_cg is not None and Path(adopted_cg).name.startswith(f"lamina-{adopted.pid}-")
    assert adopted_steps


@pytest.mark.root
def test_a_delegated_cgroup_holding_other_processes_is_left_alone(users, delegated, context):
    user, _, python = users
    other = subprocess.Popen(["bash", "-c", 'echo $$ > "$0/cgroup.procs" && exec sleep 120',
                              str(delegated)])
    try:
        for _ in range(100):
            if other.pid in _members(delegated):
                break
            time.sleep(0.02)
        assert other.pid in _members(delegated)
        done, lamina_cg, steps = _build_in(delegated, user, python, user.home / "store-cg2",
                                           str(context))
        assert done.returncode == 0, done.stderr
        # the build runs, without step cgroups, and says why and what to do
        assert "holds other processes" in done.stderr and "systemd-run" in done.stderr
        assert not steps and not (delegated / "lamina").exists()
        # nothing was moved: lamina stayed where it was started, the other process too
        assert lamina_cg == "/" + str(delegated.relative_to(_cgroup2_mount()))
        assert other.pid in _members(delegated)
    finally:
        other.kill()
        other.wait()
