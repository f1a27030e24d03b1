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
from tests.conftest import IN_CI, require_tool

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


@dataclass(frozen=True)
class Known:
    """A path where buildah 1.28 is known to differ from BuildKit: what each tool must
    produce there (field -> value; `content` is compared as bytes; None: absent). Both
    sides are checked exactly, then the path is left out of the tree comparison."""

    path: str
    why: str
    ours: dict | None
    theirs: dict | None


def _check_known(tree: dt.Tree, root: Path, k: Known, want: dict | None, who: str) -> None:
    e = tree.get(k.path)
    if want is None:
        assert e is None, f"{who}: {k.path} should be absent ({k.why})"
        return
    assert e is not None, f"{who}: {k.path} is missing ({k.why})"
    for field_name, value in want.items():
        if field_name == "content":
            got = (root / k.path).read_bytes()
        else:
            got = getattr(e, field_name)
        assert got == value, f"{who}: {k.path} {field_name}={got!r}, expected {value!r} ({k.why})"


# ------------------------------------------------------------------ the two builders

@dataclass
class Builders:
    tmp: Path
    lamina_root: Path
    buildah_base: list[str]

    def lamina(self, ctx: Path, dockerfile: Path, out: Path, args: dict, target: str | None):
        cmd = [sys.executable, "-m", "lamina", "--root", str(self.lamina_root), "build",
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
    subprocess.run([sys.executable, "-m", "lamina", "--root", str(b.lamina_root), "import",
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
            if word.upper() == "ONBUILD":
                # docker's legacy builder (and buildah) record ONBUILD in the history;
                # BuildKit only adds the trigger to the config (dispatchOnbuild commits
                # no history entry)
                continue
        else:
            word = text.split(None, 1)[0] if text else ""
        out.append(word.upper())
    return out


@dataclass(frozen=True)
class Compared:
    ours: dt.Tree
    theirs: dt.Tree
    our_root: Path
    their_root: Path
    our_links: set
    their_links: set
    our_config: dict
    their_config: dict


def compare(builders: Builders, name: str, ctx: Path, **kw) -> Compared:
    ours, theirs = builders.both(name, ctx, **kw)
    our_root, their_root = builders.tmp / f"rootfs-lamina-{name}", builders.tmp / f"rootfs-buildah-{name}"
    a, al = rootfs(ours, our_root)
    b, bl = rootfs(theirs, their_root)
    return Compared(a, drop_mount_stubs(b, a), our_root, their_root, al, bl, ours.config,
                    theirs.config)


def assert_same(c: Compared, *, known: tuple[Known, ...] = (),
                known_config: dict[str, tuple] | None = None,
                links: tuple[set, set] | None = None, skip_history: int = 1) -> None:
    """The two images agree, up to the `known` paths (each checked on both sides), the
    `known_config` fields (field -> (ours, theirs)) and, when given, the expected
    hard-link groups of each side."""
    ours, theirs = dict(c.ours), dict(c.theirs)
    for k in known:
        _check_known(ours, c.our_root, k, k.ours, "lamina")
        _check_known(theirs, c.their_root, k, k.theirs, "buildah")
        ours, theirs = dt.without(ours, [k.path]), dt.without(theirs, [k.path])
    problems = dt.diff_trees(ours, theirs)
    assert not problems, "root filesystems differ:\n" + "\n".join(problems[:60])
    if links is None:
        assert c.our_links == c.their_links, "hard-link groups differ"
    else:
        assert (c.our_links, c.their_links) == links
    theirs_cfg = json.loads(json.dumps(c.their_config))
    theirs_cfg.get("config", {}).get("Labels", {}).pop("io.buildah.version", None)
    a, b = dt.config_fields(c.our_config), dt.config_fields(theirs_cfg)
    for key, (want_ours, want_theirs) in (known_config or {}).items():
        assert (a.pop(key), b.pop(key)) == (want_ours, want_theirs), key
    assert a == b, "configs differ:\n" + "\n".join(
        f"{k}: lamina={a[k]!r} buildah={b[k]!r}" for k in a if a[k] != b[k])
    assert c.our_config.get("author") == c.their_config.get("author")
    # history: the base image's entries (one each: the imported tar) are the tools' own
    ours_h = history_keywords(c.our_config, buildah=False)
    theirs_h = history_keywords(c.their_config, buildah=True)
    assert ours_h[skip_history:] == theirs_h[skip_history:]
    layers = [h for h in c.our_config["history"] if not h.get("empty_layer")]
    assert len(layers) == len(c.our_config["rootfs"]["diff_ids"])


def case_dir(tmp: Path, name: str) -> Path:
    ctx = tmp / f"ctx-{name}"
    shutil.copytree(CASES_DIR / name, ctx, symlinks=True)
    return ctx


# ------------------------------------------------------------------ dedicated cases
# What git cannot hold (modes beyond 644/755, hard links, archives) each case's
# `prepare` makes in the temporary copy of its context.

def _prepare_modes(ctx: Path) -> None:
    m = ctx / "modes"
    (m / "sticky-dir").mkdir(parents=True)
    (m / "private-dir").mkdir()
    for name, mode in (("p600", 0o600), ("suid", 0o4755), ("sgid", 0o2750),
                       ("sticky-dir/f", 0o644), ("private-dir/f", 0o640)):
        (m / name).write_text(name)
        os.chmod(m / name, mode)
    os.chmod(m / "sticky-dir", 0o1777)
    os.chmod(m / "private-dir", 0o700)
    os.chown(m / "p600", 1234, 5678)   # context owners never reach the image


def _prepare_hardlinks(ctx: Path) -> None:
    (ctx / "ctx" / "hl1").write_text("linked\n")
    os.link(ctx / "ctx" / "hl1", ctx / "ctx" / "hl2")
    os.link(ctx / "ctx" / "hl1", ctx / "ctx" / "d" / "hl3")


def _tar_bytes(entries, compression: str = "") -> bytes:
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:" + compression) as tar:
        for name, kind, mode, uid, gid, data in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, 1_600_000_000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _prepare_archives(ctx: Path) -> None:
    entries = [("top", "dir", 0o750, 1000, 50, None),
               ("top/f", "file", 0o640, 1001, 10, b"f\n"),
               ("top/exec", "file", 0o4755, 0, 0, b"#!/bin/sh\n"),
               ("top/link", "symlink", 0o777, 0, 0, "f"),
               ("top/hard", "hardlink", 0o640, 1001, 10, "top/f"),
               ("./dotted/x", "file", 0o600, 7, 8, b"x\n")]
    (ctx / "plain.tar").write_bytes(_tar_bytes(entries))
    (ctx / "gzipped.tar.gz").write_bytes(_tar_bytes(entries[:3], "gz"))
    (ctx / "renamed.bin").write_bytes(_tar_bytes(entries[1:3], "xz"))


@dataclass(frozen=True)
class Case:
    prepare: Callable[[Path], None] | None = None
    args: dict = field(default_factory=dict)
    target: str | None = None
    known: tuple[Known, ...] = ()
    known_config: dict = field(default_factory=dict)
    links: tuple[set, set] | None = None


def _groups(*groups: tuple[str, ...]) -> set:
    return {frozenset(g) for g in groups}


# buildah 1.28 strips setuid/setgid from files it copies out of the build context
# (its copier's StripSetuidBit/StripSetgidBit); BuildKit keeps the context's mode bits
# (fsutil sends the full mode, the copier applies it), and so does lamina.
_SETID = "buildah 1.28 strips setuid/setgid of context files; BuildKit keeps them"

# VOLUME only records the path in the config in BuildKit (dispatchVolume touches no
# file); buildah creates the directory in the image.
_VOLUME = "buildah creates VOLUME directories; BuildKit only records them in the config"

# A hard link made by RUN to a file of a lower layer: overlayfs copies the file up
# first, so the new layer holds the old name and the new one as a pair, and the names
# left in the lower layer keep the old inode (BuildKit's overlayfs snapshotter
# and docker's overlay2 give exactly this). buildah on vfs storage diffs whole trees and
# also writes the lower names whose link count changed, so all names stay one group.
_LINKS_OURS = _groups(("h/a", "h/d"), ("h/b", "h/c"), ("h/e", "h/f"),
                      ("fromctx/hl1", "fromctx/hl2", "fromctx/d/hl3"))
_LINKS_THEIRS = _groups(("h/a", "h/b", "h/c", "h/d"), ("h/e", "h/f"),
                        ("fromctx/hl1", "fromctx/hl2", "fromctx/d/hl3"))

CASES = {
    "copy-rules": Case(),
    "chown-chmod": Case(prepare=_prepare_modes, known=(
        Known("modes/suid", _SETID, {"mode": 0o4755}, {"mode": 0o755}),
        Known("modes/sgid", _SETID, {"mode": 0o2750}, {"mode": 0o750}),
        Known("o/both", "a numeric --chmod also gives the directories the copy creates its mode "
              "(BuildKit >= 0.21, issue 5943); buildah 1.28 creates them 0755",
              {"type": "dir", "mode": 0o700}, {"type": "dir", "mode": 0o755}))),
    "specials": Case(),
    "whiteouts": Case(),
    "links": Case(prepare=_prepare_hardlinks, links=(_LINKS_OURS, _LINKS_THEIRS)),
    "env-workdir": Case(),
    "multistage": Case(),
    # A stage built FROM another stage inherits the ARGs that stage declared, with
    # their values (BuildKit's dispatchState.init appends base.buildArgs); buildah 1.28
    # (like docker's legacy builder) starts the stage with no ARGs.
    "args": Case(args={"OVERRIDDEN": "from-cli", "BEFORE": "before-cli"}, target="second", known=(
        Known("second", "ARGs of the base stage are inherited (BuildKit), not in buildah 1.28",
              {"content": b"[local-default] [local-default]\n"},
              {"content": b"[] [local-default]\n"}),)),
    "dockerignore": Case(),
    "add-tar": Case(prepare=_prepare_archives),
    # The shell form of CMD/ENTRYPOINT uses SHELL (reference: "SHELL ... used for the
    # shell form of commands"; BuildKit's dispatchCmd calls withShell); buildah 1.28
    # always uses /bin/sh -c there.
    "metadata": Case(known=tuple(Known(v, _VOLUME, None, {"type": "dir", "mode": 0o755})
                                 for v in ("v1", "v2", "data")),
                     known_config={"Cmd": (["/bin/sh", "-ec", "echo shell form after SHELL"],
                                           ["/bin/sh", "-c", "echo shell form after SHELL"])}),
    "store-dedup": Case(),
    "onbuild": Case(),
}

# lamina's store deduplicates equal files of different layers with hard links, and the
# overlay view shows them: a RUN sees a link count of 2, COPY --from copies the two
# names as one hard-linked file. In BuildKit (and buildah) they are two files.
XFAIL: dict[str, str] = {}  # case name -> why lamina is known to differ (none now)


def test_every_case_dir_is_listed():
    # diffcases/buildkit/ holds the cases of test_differential_buildkit.py only
    assert sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir() and p.name != "buildkit") \
        == sorted(CASES)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=XFAIL[n], strict=True)) if n in XFAIL else n
    for n in sorted(CASES)])
def test_case(builders, tmp_path, name):
    case = CASES[name]
    ctx = case_dir(tmp_path, name)
    if case.prepare:
        case.prepare(ctx)
    c = compare(builders, name, ctx, args=case.args, target=case.target)
    assert_same(c, known=case.known, known_config=case.known_config, links=case.links)


# ------------------------------------------------------------------ samples

SAMPLES = REPO / "samples"


def sample_copy(tmp: Path, name: str, busybox: str | None = None) -> Path:
    """A temporary copy of samples/<name> (never write into samples/), with the host's
    static busybox in it when the sample's Dockerfile needs one."""
    ctx = tmp / f"sample-{name}"
    shutil.copytree(SAMPLES / name, ctx, symlinks=True,
                    ignore=shutil.ignore_patterns("busybox", "__pycache__"))
    if busybox:
        shutil.copy2(busybox, ctx / "busybox")
    return ctx


def without_heredocs(dockerfile: str) -> str:
    """buildah 1.28 has no heredocs (they came with buildah 1.33): the sample's
    `RUN <<EOF` script becomes the same script on one line, which /bin/sh -c runs the
    same way (BuildKit runs a heredoc without a shebang as `/bin/sh -c <body>`)."""
    lines, out, body = dockerfile.splitlines(), [], None
    for line in lines:
        if body is None and line.startswith("RUN <<EOF"):
            body = []
        elif body is not None and line == "EOF":
            out.append("RUN " + "; ".join(body))
            body = None
        elif body is not None:
            body.append(line)
        else:
            out.append(line)
    assert body is None
    return "\n".join(out) + "\n"


def test_sample_hello(builders, tmp_path, busybox_path):
    ctx = sample_copy(tmp_path, "hello", busybox_path)
    theirs_df = tmp_path / "Dockerfile.buildah"
    theirs_df.write_text(without_heredocs((ctx / "Dockerfile").read_text()))
    assert "<<" not in theirs_df.read_text()
    c = compare(builders, "sample-hello", ctx, buildah_dockerfile=theirs_df)
    assert c.ours["var/log/hello/build.txt"].type == "file"
    assert (c.our_root / "var/log/hello/build.txt").read_text() == "built with greeting hello\n"
    assert_same(c, skip_history=0)


def test_sample_multistage(builders, tmp_path, busybox_path):
    ctx = sample_copy(tmp_path, "multistage", busybox_path)
    c = compare(builders, "sample-multistage", ctx)
    assert sorted(c.ours) == ["bin", "bin/busybox", "srv", "srv/report.txt"]
    assert (c.our_root / "srv/report.txt").read_text().startswith("report version 1.0\n")
    # An image FROM scratch has WorkingDir "/" in BuildKit (dockerfile2llb's emptyImage
    # sets it); buildah 1.28 leaves it empty.
    assert_same(c, skip_history=0, known_config={"WorkingDir": ("/", None)})


# -------------------------------------------------------------- python-app (Debian base)
# The slow one: samples/python-app/make-base.sh runs debootstrap (~100 s, needs the
# Debian mirror) once per session; the same root filesystem tar is then imported into
# both stores. Its `lamina` is a stand-in that keeps a copy of the tar for buildah.

DEBIAN_REF = "debian-python:bookworm"


_DEBIAN_TARS: dict[str, Path | str] = {}


def debian_rootfs_tar(tmp_path_factory) -> Path:
    """The root filesystem tar of samples/python-app/make-base.sh (debootstrap minbase
    with python3-minimal and passwd), made once per test session and shared by the
    differential suites (this one and test_differential_buildkit.py). Its `lamina` is a
    stand-in that only keeps a copy of the tar; each suite imports it into its stores.
    Skips (fails in CI) when the Debian mirror cannot be reached."""
    require_tool("debootstrap")
    key = str(tmp_path_factory.getbasetemp())
    if key not in _DEBIAN_TARS:
        tmp = tmp_path_factory.mktemp("debian-base")
        tar = tmp / "rootfs.tar"
        standin = tmp / "lamina"
        standin.write_text("#!/bin/sh\n# make-base.sh calls: $LAMINA import TAR REF\n"
                           f'set -e\ncp "$2" {tar}\n')
        standin.chmod(0o755)
        for attempt in range(3):  # the mirror is a network peer: retry a transient failure
            r = subprocess.run(["sh", str(SAMPLES / "python-app" / "make-base.sh")],
                               capture_output=True, text=True, timeout=900,
                               env={**os.environ, "LAMINA": str(standin)})
            if r.returncode == 0:
                break
        _DEBIAN_TARS[key] = tar if r.returncode == 0 else (
            f"make-base.sh failed (needs the Debian mirror):\n{r.stderr[-2000:]}")
    found = _DEBIAN_TARS[key]
    if isinstance(found, str):
        if IN_CI:
            pytest.fail(found)
        pytest.skip(found)
    return found


@pytest.fixture(scope="session")
def debian_base(builders, tmp_path_factory) -> Path:
    tar = debian_rootfs_tar(tmp_path_factory)
    subprocess.run([sys.executable, "-m", "lamina", "--root", str(builders.lamina_root),
                    "import", str(tar), DEBIAN_REF], cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    ctr = subprocess.run(builders.buildah_base + ["from", "scratch"], check=True,
                         capture_output=True, text=True, timeout=60).stdout.strip()
    subprocess.run(builders.buildah_base + ["add", ctr, str(tar), "/"], check=True,
                   capture_output=True, timeout=600)
    subprocess.run(builders.buildah_base + ["commit", ctr, f"localhost/{DEBIAN_REF}"],
                   check=True, capture_output=True, timeout=600)
    subprocess.run(builders.buildah_base + ["rm", ctr], check=True, capture_output=True,
                   timeout=60)
    return tar


@pytest.mark.skipif(not (IN_CI or os.environ.get("LAMINA_SLOW_TESTS")),
                    reason="debootstrap base (~2 min): runs in CI, or with LAMINA_SLOW_TESTS=1")
def test_sample_python_app(builders, debian_base, tmp_path):
    ctx = sample_copy(tmp_path, "python-app")
    c = compare(builders, "sample-python-app", ctx)
    assert c.ours["srv/app/__main__.py"].uid == 10001
    assert_same(c)
