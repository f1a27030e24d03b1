"""Fixtures for builder tests.

- ``busybox_rootfs`` (session): a lower layer dir holding a tiny image root made
  from the host's static busybox: /bin/busybox plus one symlink per applet (as
  ``busybox --install -s`` lays them out), /etc/passwd, /etc/group (root, daemon,
  nobody, and users ``alice`` (1000) and ``bob`` (1001), with groups ``staff``
  (50: alice,bob) and ``wheel`` (10: alice)), /root, /home/alice, /tmp (1777),
  /var, /proc, /dev, /sys. Treat it as read-only: use it as a lower dir.
- ``bare_rootfs`` (session): the same without /proc, /dev, /sys, /etc/hosts, /run
  and /etc — a root that makes the sandbox create its mount points.
- ``layer_dirs(n)`` style helpers: ``make_step_dirs(tmp_path)`` gives a fresh
  (upper, work) pair on the same filesystem.
- ``run_sandbox``: run a command in the sandbox on given lower dirs and return
  (exit code, output bytes, upper dir).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001::/home/bob:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """root:x:0:
daemon:x:1:
wheel:x:10:alice
tty:x:5:
staff:x:50:alice,bob
alice:x:1000:
bob:x:1001:
nogroup:x:65534:
"""

DEFAULT_ENV = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),)


def _make_rootfs(root: Path, busybox: str, full: bool) -> Path:
    root.mkdir(parents=True)
    (root / "bin").mkdir()
    data = Path(busybox).read_bytes()
    bb = root / "bin" / "busybox"
    bb.write_bytes(data)
    bb.chmod(0o755)
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for rel in applets:
        link = root / rel
        if link.name == "busybox":
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    if full:
        for d in ("etc", "root", "home/alice", "var/empty", "proc", "dev", "sys", "usr/local/bin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "etc" / "passwd").write_text(PASSWD)
        (root / "etc" / "group").write_text(GROUP)
        os.chown(root / "home" / "alice", 1000, 1000)
        (root / "root").chmod(0o700)
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    return root


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory, busybox_path) -> Path:
    return _make_rootfs(tmp_path_factory.mktemp("layers") / "busybox", busybox_path, full=True)


@pytest.fixture(scope="session")
def bare_rootfs(tmp_path_factory, busybox_path) -> Path:
    return _make_rootfs(tmp_path_factory.mktemp("layers") / "bare", busybox_path, full=False)


@pytest.fixture
def step_dirs(tmp_path):
    """A fresh (upper, work) pair for one step, on one filesystem."""
    counter = {"n": 0}

    def make() -> tuple[Path, Path]:
        counter["n"] += 1
        base = tmp_path / f"step{counter['n']}"
        upper, work = base / "upper", base / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        return upper, work

    return make


@pytest.fixture
def run_sandbox(step_dirs):
    """run_sandbox(lowers, argv, **spec fields) -> (code, output, upper)."""
    from lamina.builder.sandbox import sandbox

    def run(lowers, argv, **kw):
        upper, work = step_dirs()
        kw.setdefault("env", DEFAULT_ENV)
        spec = sandbox.SandboxSpec(lower_dirs=tuple(lowers), upper_dir=upper, work_dir=work,
                                   argv=tuple(argv), **kw)
        chunks: list[bytes] = []
        code = sandbox.run(spec, chunks.append)
        return code, b"".join(chunks), upper

    return run


@pytest.fixture(scope="session")
def build_store(tmp_path_factory):
    """(store root, image ID) of a store holding the busybox base image `bb`, built with
    `lamina build` (tests/builder/buildkit.py); shared by the build integration tests,
    which must treat `bb` as read-only and use Dockerfiles of their own."""
    from tests.builder.buildkit import make_base

    base = tmp_path_factory.mktemp("build-store")
    root = base / "store"
    return root, make_base(root, base / "base-context")
