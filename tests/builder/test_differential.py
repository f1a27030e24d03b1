"""Differential tests: build the same Dockerfile with lamina and with
`buildah bud --isolation chroot` (Debian's buildah 1.28), then compare the two images:
the root filesystems (paths, types, modes, owners, content, link targets, hard-link
groups — never mtimes), the config fields docker defines, and the shape of the history.

Both images are exported as docker-archives and their layers applied by our own applier
(tests.builder.difftools), so what is compared is what a registry would receive.

Dedicated cases live in tests/builder/diffcases/<name>/ (a context with a Dockerfile);
they build FROM `diffbase:1`, one busybox root filesystem tar imported into both stores
(lamina import; buildah from scratch + add + commit). The samples hello and multistage
make their own base in a stage (FROM scratch + COPY busybox); python-app runs on a
debootstrap base (slow: see test_sample_python_app).

When the tools disagree, the Dockerfile reference / BuildKit decides. Differences that
are buildah 1.28's (quirks, or older docker behaviour) are listed below, each with why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from tests.builder import difftools as dt
from tests.builder.conftest import GROUP, PASSWD, _make_rootfs
from tests.conftest import require_tool

pytestmark = [pytest.mark.root, pytest.mark.interop]

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = Path(__file__).resolve().parent / "diffcases"
BASE_REF = "diffbase:1"

# -------------------------------------------------------------- known differences
#
# buildah 1.28 leaves the mount points it made for a RUN in the image: empty /dev,
# /proc, /sys, /run and empty /etc/hosts, /etc/hostname, /etc/resolv.conf (and /etc
# itself when the image had none). BuildKit removes the stubs it created (its
# executor's mount-stub cleaner), and lamina does as BuildKit: drop them from
# buildah's tree when they are empty and the Dockerfile did not make them.
MOUNT_STUBS = ("dev", "proc", "sys", "run", "etc/hosts", "etc/hostname", "etc/resolv.conf")


def drop_mount_stubs(theirs: dt.Tree, ours: dt.Tree) -> dt.Tree:
    out = dict(theirs)
    for path in MOUNT_STUBS:
        e = out.get(path)
        if e is None or path in ours:
            continue
        empty_file = e.type == "file" and e.data == dt.EMPTY_SHA256
        empty_dir = e.type == "dir" and not any(p.startswith(path + "/") for p in out)
        if empty_file or empty_dir:
            del out[path]
    if "etc" in out and "etc" not in ours and not any(p.startswith("etc/") for p in out):
        del out["etc"]
    return out


# ------------------------------------------------------------------ the two builders

@dataclass
class Builders:
    tmp: Path
    lamina_root: Path
    buildah_base: list[str]

    def lamina(self, ctx: Path, dockerfile: Path, out: Path, args: dict, target: str | None):
        cmd = [sys.executable, "-m", "builder.cli", "--root", str(self.lamina_root), "build",
               "--progress", "plain", "-f", str(dockerfile), "--output", f"type=docker,dest={out}"]
        cmd += [f"--build-arg={k}={v}" for k, v in args.items()]
        cmd += ["--target", target] if target else []
        r = subprocess.run(cmd + [str(ctx)], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"lamina build failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
        return dt.read_docker_archive(out)

    def buildah(self, ctx: Path, dockerfile: Path, out: Path, args: dict, target: str | None):
        tag = f"localhost/diff-{out.stem}:latest"
        cmd = self.buildah_base + ["bud", "--isolation", "chroot", "--format", "docker",
                                   "--pull=never", "-f", str(dockerfile), "-t", tag]
        cmd += [f"--build-arg={k}={v}" for k, v in args.items()]
        cmd += ["--target", target] if target else []
        r = subprocess.run(cmd + [str(ctx)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"buildah bud failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
        r = subprocess.run(self.buildah_base + ["push", tag, f"docker-archive:{out}:{tag}"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return dt.read_docker_archive(out)

    def both(self, name: str, ctx: Path, *, args: dict | None = None, target: str | None = None,
             buildah_dockerfile: Path | None = None):
        """Build `ctx` with both tools at once; -> (ours, theirs) ArchiveImages."""
        args = args or {}
        with ThreadPoolExecutor(2) as pool:
            ours = pool.submit(self.lamina, ctx, ctx / "Dockerfile",
                               self.tmp / f"lamina-{name}.tar", args, target)
            theirs = pool.submit(self.buildah, ctx, buildah_dockerfile or ctx / "Dockerfile",
                                 self.tmp / f"buildah-{name}.tar", args, target)
            return ours.result(), theirs.result()


def _base_rootfs(tmp: Path, busybox: str) -> Path:
    """The busybox base of the dedicated cases: conftest's root plus a user whose primary
    group differs from its uid (carol 1002:50), so `--chown=carol` shows which gid wins."""
    root = _make_rootfs(tmp / "rootfs", busybox, full=True)
    (root / "etc" / "passwd").write_text(PASSWD + "carol:x:1002:50::/home/carol:/bin/sh\n")
    (root / "etc" / "group").write_text(GROUP)
    tar = tmp / "base.tar"
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tar), "."], check=True)
    return tar


@pytest.fixture(scope="session")
def builders(tmp_path_factory, busybox_path) -> Builders:
    buildah = require_tool("buildah")
    tmp = tmp_path_factory.mktemp("differential")
    b = Builders(tmp, tmp / "lamina", [buildah, "--root", str(tmp / "buildah"), "--runroot",
                                       str(tmp / "buildah-run"), "--storage-driver", "vfs"])
    tar = _base_rootfs(tmp, busybox_path)
    subprocess.run([sys.executable, "-m", "builder.cli", "--root", str(b.lamina_root), "import",
                    str(tar), BASE_REF], cwd=REPO, check=True, capture_output=True, timeout=120)
    ctr = subprocess.run(b.buildah_base + ["from", "scratch"], check=True, capture_output=True,
                         text=True, timeout=60).stdout.strip()
    subprocess.run(b.buildah_base + ["add", ctr, str(tar), "/"], check=True, capture_output=True,
                   timeout=120)
    subprocess.run(b.buildah_base + ["commit", ctr, f"localhost/{BASE_REF}"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run(b.buildah_base + ["rm", ctr], check=True, capture_output=True, timeout=60)
    return b


# ------------------------------------------------------------------ comparison

def rootfs(image: dt.ArchiveImage, dest: Path) -> tuple[dt.Tree, set]:
    root = dt.apply_layers(image.layers, dest)
    return dt.snapshot(root), dt.hardlink_groups(root)


def history_keywords(config: dict, *, buildah: bool) -> list[str]:
    """The instruction keyword of each history entry.

    The wording differs by design: BuildKit writes "RUN /bin/sh -c cmd # buildkit",
    "COPY a b # buildkit", "ENV k=v"; buildah writes docker's legacy form,
    "/bin/sh -c #(nop) ENV k=v", "/bin/sh -c #(nop) COPY file:<digest> in /b" and, for
    RUN, "|N ARGS /bin/sh -c cmd". Only the keyword sequence is comparable. (The
    `empty_layer` flags are not: without --layers buildah puts the whole stage in one
    layer and marks every entry but the last empty; with --layers on vfs storage it takes
    ~5x longer.)"""
    out = []
    for h in config.get("history", []):
        text = h.get("created_by", "")
        if buildah:
            word = text.split("#(nop) ", 1)[1].split(None, 1)[0] if "#(nop) " in text else "RUN"
        else:
            word = text.split(None, 1)[0] if text else ""
        out.append(word.upper())
    return out


@dataclass(frozen=True)
class Compared:
    ours: dt.Tree
    theirs: dt.Tree
    our_links: set
    their_links: set
    our_config: dict
    their_config: dict


def compare(builders: Builders, name: str, ctx: Path, **kw) -> Compared:
    ours, theirs = builders.both(name, ctx, **kw)
    a, al = rootfs(ours, builders.tmp / f"rootfs-lamina-{name}")
    b, bl = rootfs(theirs, builders.tmp / f"rootfs-buildah-{name}")
    return Compared(a, drop_mount_stubs(b, a), al, bl, ours.config, theirs.config)


def assert_same(c: Compared, *, ignore_config: tuple[str, ...] = (), skip_history: int = 1) -> None:
    problems = dt.diff_trees(c.ours, c.theirs)
    assert not problems, "root filesystems differ:\n" + "\n".join(problems[:60])
    assert c.our_links == c.their_links, "hard-link groups differ"
    theirs_cfg = json.loads(json.dumps(c.their_config))
    theirs_cfg.get("config", {}).get("Labels", {}).pop("io.buildah.version", None)
    problems = [p for p in dt.diff_configs(c.our_config, theirs_cfg)
                if p.split(":", 1)[0] not in ignore_config]
    assert not problems, "configs differ:\n" + "\n".join(problems)
    # history: the base image's entries (one each: the imported tar) are the tools' own
    ours = history_keywords(c.our_config, buildah=False)
    theirs = history_keywords(c.their_config, buildah=True)
    assert ours[skip_history:] == theirs[skip_history:]
    layers = [h for h in c.our_config["history"] if not h.get("empty_layer")]
    assert len(layers) == len(c.our_config["rootfs"]["diff_ids"])


def case_dir(tmp: Path, name: str) -> Path:
    ctx = tmp / f"ctx-{name}"
    shutil.copytree(CASES_DIR / name, ctx, symlinks=True)
    return ctx


def test_copy_rules(builders, tmp_path):
    c = compare(builders, "copy-rules", case_dir(tmp_path, "copy-rules"))
    assert_same(c)
