"""What the sandbox stages on the host stays inside the store, and the store keeps
other local users out (issue: heredoc names wrote host files; a setuid-root file a
RUN made was runnable by any user through a 0755 store)."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from lamina.builder.steps.run import heredoc_target
from tests.builder.buildkit import build, build_rootfs, make_context

pytestmark = pytest.mark.root


def test_heredoc_target_stays_under_dev_pipes():
    assert heredoc_target("EOF") == "/dev/pipes/EOF"
    assert heredoc_target("/tmp/pwned") == "/dev/pipes/tmp/pwned"
    assert heredoc_target("../../x") == "/dev/pipes/x"
    assert heredoc_target("a/../../../etc/passwd") == "/dev/pipes/etc/passwd"


@pytest.mark.parametrize("name", ["/tmp/lamina-pwned-{tag}", "../../../../../../tmp/lamina-pwned-{tag}"])
def test_heredoc_name_never_writes_a_host_file(build_store, tmp_path, name):
    root, _ = build_store
    tag = uuid.uuid4().hex[:12]
    name = name.format(tag=tag)
    host_victim = Path("/tmp") / f"lamina-pwned-{tag}"
    dockerfile = (f"FROM bb\nRUN <<{name}\n#!/bin/sh\necho ran > /ran\n{name}\n"
                  "RUN cat /ran\n")
    ctx = make_context(tmp_path / "ctx", dockerfile)
    try:
        run = build(root, ctx)
        assert not host_victim.exists(), "the heredoc body was written to a host path"
        if name.startswith("/"):
            # as BuildKit: the script is /dev/pipes/<name cleaned> and it runs
            run.check()
            out = tmp_path / "out"
            build_rootfs(root, ctx, out)
            assert (out / "ran").read_text() == "ran\n"
            assert not (out / "dev" / "pipes").exists() or not any((out / "dev" / "pipes").iterdir())
    finally:
        if host_victim.exists():
            host_victim.unlink()


def _as_nobody(fn) -> int:
    """Run fn() in a forked child with uid/gid 65534; its exit code (0 = fn returned True)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = 0 if fn() else 3
        except BaseException:  # noqa: BLE001
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_setuid_file_made_by_run_is_out_of_other_users_reach(tmp_path):
    from tests.builder.buildkit import make_base
    root = tmp_path / "fresh-store"
    make_base(root, tmp_path / "base")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN cp /bin/busybox /suid && chmod 4755 /suid\n")
    build(root, ctx, "-t", "suid").check()
    found = [p for p in (root / "layers").rglob("suid") if p.stat().st_mode & stat.S_ISUID]
    assert found, "the setuid file should be in an extracted layer dir"
    target = found[0]

    def reach() -> bool:
        try:
            os.stat(target)
        except PermissionError:
            return False
        return True

    # another local user cannot even reach the path (exit 3 = reach() was False)
    assert _as_nobody(reach) == 3
    for sub in ("layers", "tmp", "blobs"):
        assert stat.S_IMODE((root / sub).stat().st_mode) & 0o077 == 0, sub


def test_an_existing_loose_store_root_is_tightened(tmp_path):
    from lamina.store.store import Store
    root = tmp_path / "old-store"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    with Store(root):
        pass
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_cache_mount_mode_0777_is_not_a_world_reachable_dir(tmp_path, build_store):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx",
                       "FROM bb\nRUN --mount=type=cache,target=/c,mode=0777 touch /c/x && ls -ld /c\n")
    build(root, ctx).check()
    caches = [p for p in root.rglob("*") if p.is_dir() and stat.S_IMODE(p.stat().st_mode) == 0o777]
    assert caches, "the cache dir itself keeps the mode the Dockerfile asked for"
    for c in caches:
        # some directory between the store root and the cache dir shuts others out
        chain = [c.parent, *c.parent.parents]
        chain = chain[:chain.index(root.parent)] if root.parent in chain else chain
        assert any(stat.S_IMODE(d.stat().st_mode) & 0o005 == 0 for d in chain), c
