"""Helpers for the store metadata tests: busybox root filesystems packed with the
system's own `tar` (and gzip/zstd/xz/bzip2 CLIs), and running `lamina` as a
separate process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
APPLETS = ("sh", "ls", "cat", "echo", "true")


def make_rootfs(dest: Path, busybox: str, *, extra: dict[str, bytes] | None = None,
                mtime: int = 1_600_000_000) -> Path:
    """A tiny root: bin/busybox, symlinks for a few applets, etc/motd, plus `extra`
    files; every time set to `mtime` so that two roots built apart are identical."""
    (dest / "bin").mkdir(parents=True)
    (dest / "etc").mkdir()
    shutil.copyfile(busybox, dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    for a in APPLETS:
        os.symlink("busybox", dest / "bin" / a)
    (dest / "etc" / "motd").write_text("hello from lamina tests\n")
    for name, data in (extra or {}).items():
        p = dest / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for dirpath, dirnames, filenames in os.walk(dest, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (mtime, mtime), follow_symlinks=False)
    os.utime(dest, (mtime, mtime))
    return dest


_COMPRESSORS = {"none": None, "gzip": ["gzip", "-n"], "zstd": ["zstd", "-q"], "xz": ["xz", "-1"],
                "bzip2": ["bzip2", "-1"]}


def make_tar(src: Path, out: Path, compression: str = "none") -> Path:
    """`tar -C src -cf - .` (GNU tar), piped through the compressor's CLI."""
    tar = subprocess.run(["tar", "-C", str(src), "--numeric-owner", "-cf", "-", "."],
                         check=True, capture_output=True).stdout
    cmd = _COMPRESSORS[compression]
    if cmd is not None:
        require_tool(cmd[0])
        tar = subprocess.run(cmd + ["-c"], input=tar, check=True, capture_output=True).stdout
    out.write_bytes(tar)
    return out


def lamina_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lamina", "--root", str(root), *args]


def lamina(root: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(lamina_cmd(root, *args), cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"lamina {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p
