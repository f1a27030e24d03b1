"""Rootless lamina (issue 11): builds as an ordinary user with subordinate ID ranges.

The module creates a real unprivileged user (useradd) with its own ranges in
/etc/subuid and /etc/subgid, runs lamina as that user (runuser) and removes both
afterwards. Expected values come from root builds of the same inputs (the image ID
must be identical) and from the kernel (owners, mounts, processes).

The venv's interpreter may live where the user cannot read it (pyenv under /root):
then the user runs Debian's python3 of the same minor version with the venv's
site-packages added.
"""

from __future__ import annotations

import glob
import io
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import assume, given, settings, strategies as st

from lamina.builder.sandbox.delegation import own_v2_cgroup
from lamina.builder.sandbox.userns import (IdRange, IdMapping, map_args,
                                           parse_subordinate, plan_mapping)
from lamina.store.overlayform import host_user_namespace
from tests.builder.test_sandbox_network import TOKEN, host_loopback, peer  # noqa: F401 - fixtures
from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[2]
RANGE = 65536


# --- pure parts -------------------------------------------------------------------------

def test_subordinate_ranges_are_read_by_name_or_uid_in_file_order():
    text = ("alice:100000:65536\n# comment\nbob:165536:65536\n1000:300000:10\n"
            "alice:bad:1\nalice:500000:0\nalice:400000:5\n")
    assert parse_subordinate(text, "alice", 1000) == ((100000, 65536), (300000, 10), (400000, 5))
    assert parse_subordinate(text, "carol", 1002) == ()


def test_mapping_puts_the_user_at_0_and_the_ranges_after_it():
    m = plan_mapping(1000, 1001, ((100000, 65536),), ((200000, 10), (300000, 5)))
    assert m.uids == (IdRange(0, 1000, 1), IdRange(1, 100000, 65536))
    assert m.gids == (IdRange(0, 1001, 1), IdRange(1, 200000, 10), IdRange(11, 300000, 5))
    assert m.subordinate and m.size == 16
    # newuidmap's argument triplets: inside outside count
    assert map_args(m.uids) == ["0", "1000", "1", "1", "100000", "65536"]


def test_own_id_inside_a_range_is_mapped_once():
    m = plan_mapping(100005, 100005, ((100000, 10),), ((100000, 10),))
    assert m.uids == (IdRange(0, 100005, 1), IdRange(1, 100000, 5), IdRange(6, 100006, 4))
    outside = [r.outside + i for r in m.uids for i in range(r.count)]
    assert len(outside) == len(set(outside)) == 10


_RANGES = st.lists(st.tuples(st.integers(1, 300000), st.integers(1, 70000)), max_size=4)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 400000), _RANGES)
def test_mapping_is_one_to_one_and_dense_from_0(own, subs):
    # user_namespaces(7): ranges must not overlap, inside or outside
    assume(all(a[0] + a[1] <= b[0] or b[0] + b[1] <= a[0]
               for i, a in enumerate(subs) for b in subs[i + 1:]))
    m = plan_mapping(own, own, tuple(subs), tuple(subs))
    inside = [r.inside + i for r in m.uids for i in range(r.count)]
    outside = [r.outside + i for r in m.uids for i in range(r.count)]
    assert inside == list(range(len(inside)))           # 0.. without gaps
    assert len(set(outside)) == len(outside)            # no host ID twice
    assert m.uids[0] == IdRange(0, own, 1)              # the user is root
    covered = {x for s0, c in subs for x in range(s0, s0 + c)} | {own}
    assert set(outside) == (covered if subs else {own})
    assert all(r.count > 0 for r in m.uids) and m.uids == m.gids


def test_no_ranges_gives_a_single_id_mapping():
    m = plan_mapping(1000, 1000, (), ((5, 5),))
    assert m == IdMapping((IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),))
    assert not m.subordinate and m.size == 1


def test_own_v2_cgroup_of_a_systemd_user_session_and_of_a_hybrid_host():
    # a cgroup v2 host: systemd's user@1000.service is the user's delegated subtree
    mountinfo = ("22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n"
                 "35 25 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    proc = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope\n"
    assert own_v2_cgroup(proc, mountinfo) == Path(
        "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope")
    # hybrid (v1 controllers, an empty v2 at unified): the v2 dir, found under unified
    hybrid = ("30 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
              "31 25 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n")
    assert own_v2_cgroup("12:pids:/\n0::/init.scope\n", hybrid) == Path(
        "/sys/fs/cgroup/unified/init.scope")
    assert own_v2_cgroup("12:pids:/\n", hybrid) is None
    assert own_v2_cgroup(proc, "22 1 0:21 / / rw - ext4 /dev/vda rw\n") is None


def test_host_user_namespace_is_the_full_identity_map():
    assert host_user_namespace("         0          0 4294967295\n")
    assert not host_user_namespace("         0       1000          1\n")
    assert not host_user_namespace("0 1000 1\n1 100000 65536\n")


# --- the user ---------------------------------------------------------------------------

def _free_range() -> int:
    """A start past every range in /etc/subuid and /etc/subgid."""
    end = 1_000_000
    for f in ("/etc/subuid", "/etc/subgid"):
        for line in Path(f).read_text().splitlines():
            parts = line.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                end = max(end, int(parts[1]) + int(parts[2]))
    return end + RANGE


def _drop_lines(name: str) -> None:
    for f in ("/etc/subuid", "/etc/subgid"):
        p = Path(f)
        lines = [l for l in p.read_text().splitlines(keepends=True) if not l.startswith(name + ":")]
        p.write_text("".join(lines))


class User:
    def __init__(self, name: str, ranges: bool) -> None:
        self.name = name
        subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                        "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                       check=True, capture_output=True)
        self.uid = pwd.getpwnam(name).pw_uid
        self.start = None
        _drop_lines(name)
        if ranges:
            self.start = _free_range()
            for f in ("/etc/subuid", "/etc/subgid"):
                with open(f, "a") as fh:
                    fh.write(f"{name}:{self.start}:{RANGE}\n")
        self.home = Path(tempfile.mkdtemp(prefix=f"lamina-{name}-"))
        self.home.chmod(0o755)
        os.chown(self.home, self.uid, self.uid)

    def delete(self) -> None:
        subprocess.run(["userdel", self.name], capture_output=True)
        _drop_lines(self.name)
        shutil.rmtree(self.home, ignore_errors=True)

    def outside_ids(self) -> set[int]:
        ids = {self.uid}
        if self.start is not None:
            ids |= set(range(self.start, self.start + RANGE))
        return ids


def _python_for(user: str, where: Path) -> list[str]:
    """An interpreter command the user can run that imports this lamina (and whose
    sys.executable does too: `lamina run` starts its monitor with it)."""
    ok = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", "import lamina"],
                        capture_output=True)
    if ok.returncode == 0:
        return [sys.executable, "-m", "lamina"]
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.path.exists(system):
        _skip_or_fail(f"the user cannot run {sys.executable} and there is no {system}")
    # a venv of the system interpreter that adds this venv's site-packages (.pth)
    venv = where / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_dir = sysconfig.get_paths()["purelib"]
    (Path(glob.glob(str(venv / "lib" / "python*" / "site-packages"))[0]) / "lamina-dev.pth"
     ).write_text(f"import site; site.addsitedir({site_dir!r})\n")
    for dirpath, _, filenames in os.walk(venv):
        for n in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            if not os.path.islink(n):
                os.chmod(n, os.stat(n).st_mode | 0o555 if os.path.isdir(n) else
                         os.stat(n).st_mode | 0o444)
    return [str(venv / "bin" / "python"), "-m", "lamina"]


def _skip_or_fail(reason: str) -> None:
    """Outside CI a missing prerequisite skips; in CI (root, a machine like this one)
    it is a failure, never a silent skip."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        _skip_or_fail("needs root to create users")
    for tool in ("useradd", "userdel", "runuser", "newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing (dev/setup installs uidmap and passwd)")
    tag = os.getpid() % 100000
    made = []
    tools = Path(tempfile.mkdtemp(prefix="lamina-rootless-python-"))
    tools.chmod(0o755)
    try:
        made.append(User(f"lamrl{tag}", ranges=True))
        made.append(User(f"lamrs{tag}", ranges=False))
        yield made[0], made[1], _python_for(made[0].name, tools)
    finally:
        for u in made:
            u.delete()
        shutil.rmtree(tools, ignore_errors=True)
    text = Path("/etc/subuid").read_text() + Path("/etc/subgid").read_text()
    assert f"lamrl{tag}:" not in text and f"lamrs{tag}:" not in text


def lamina_as(user: User, python: list[str], *args: str, root: Path,
              check: bool = True, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {"HOME": str(user.home), "XDG_DATA_HOME": str(user.home / "data"),
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8", **(env_extra or {})}
    cmd = ["runuser", "-u", user.name, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
           *python, "--root", str(root), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def lamina_as_root(*args: str, root: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env_extra or {})})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


DIFF_DOCKERFILE = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base
RUN mkdir -p /d/sub /gone && echo a > /d/sub/f && echo b > /x && echo c > /gone/y \\
 && mkdir -p /etc && echo 'root:x:0:0::/root:/bin/sh' > /etc/passwd
# whiteout, opaque dir, a dir removed
RUN rm /x && rm -rf /d /gone && mkdir /d && echo c > /d/g
# other owners, setuid, hard links
RUN mkdir /x && chown 1000:1000 /x && chown 65534:100 /d/g && chmod 4755 /d/g \\
 && ln /d/g /d/h && mkdir -p /home/u && chown 1000:1000 /home/u
USER 1000:1000
RUN echo hi > /home/u/file && id -u > /home/u/id && id -g >> /home/u/id
"""


@pytest.fixture(scope="module")
def work(users, busybox_path):
    user, _, _ = users
    base = Path(tempfile.mkdtemp(prefix="lamina-rootless-"))
    base.chmod(0o755)
    for name in ("hello", "multistage", "moby-style"):
        shutil.copytree(REPO / "samples" / name, base / name)
        shutil.copy(busybox_path, base / name / "busybox")
    (base / "diff").mkdir()
    (base / "diff" / "Dockerfile").write_text(DIFF_DOCKERFILE)
    shutil.copy(busybox_path, base / "diff" / "busybox")
    for dirpath, dirnames, filenames in os.walk(base):
        for n in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, n), user.uid, user.uid)
    os.chown(base, user.uid, user.uid)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _iid(out: str) -> str:
    ids = re.findall(r"^sha256:[0-9a-f]{64}$", out, re.M)
    assert ids, out
    return ids[-1]


CASES = [("hello", ()), ("multistage", ()), ("moby-style", ()), ("diff", ())]


@pytest.fixture(scope="module")
def root_ids(work, tmp_path_factory):
    """The image IDs of root builds of CASES: what every rootless build must give."""
    root_store = tmp_path_factory.mktemp("root-store")
    return {name: _iid(lamina_as_root("build", "--network", "none", *extra, str(work / name),
                                      root=root_store).stdout)
            for name, extra in CASES}


@pytest.mark.root
def test_rootless_builds_give_the_root_image_ids_and_hit_the_cache(users, work, root_ids):
    user, _, python = users
    store = work / "store"
    for name, extra in CASES:
        mine = lamina_as(user, python, "build", "--network", "none", "-t", f"{name}:rl",
                         *extra, str(work / name), root=store)
        assert _iid(mine.stdout) == root_ids[name], (name, mine.stderr)
        assert "no subordinate IDs" not in mine.stderr
    # the cache: every step of a rebuild is a hit, the ID is unchanged
    again = lamina_as(user, python, "build", "--network", "none", "--progress", "plain",
                      "--memory", "256m", str(work / "diff"), root=store)
    assert "cache miss" not in again.stderr and again.stderr.count("CACHED") >= 5, again.stderr
    # no step cgroups rootless: a limit is skipped with a note, not an error
    assert "--memory skipped" in again.stderr
    # the store: 0700, the user's; layer files keep the image's owners, mapped back
    st = store.stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (user.uid, "0o700")
    owners = {os.lstat(os.path.join(d, n)).st_uid for d, ds, fs in os.walk(store / "layers")
              for n in ds + fs}
    assert user.uid in owners and user.start + 999 in owners  # image uid 0 and 1000
    assert owners <= user.outside_ids()


@pytest.mark.root
def test_lamina_as_root_of_a_user_namespace_it_did_not_make(users, work, root_ids):
    """The unprivileged-container case: lamina starts as root of a user namespace
    (util-linux unshare maps the user's subordinate ranges), no capability outside."""
    user, _, python = users
    store = work / "store-adopted"
    env = ["env", "-i", f"HOME={user.home}", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    done = subprocess.run(["runuser", "-u", user.name, "--", *env, "unshare", "--user",
                           "--map-root-user", "--map-auto", *python, "--root", str(store),
                           "build", "--network", "none", str(work / "diff")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # (on a host without a delegated cgroup, success means the step cgroup was skipped)
    assert _iid(done.stdout) == root_ids["diff"]


@pytest.mark.root
def test_rootless_layers_hold_the_image_owners_whiteouts_and_opaque_dirs(users, work):
    user, _, python = users
    store = work / "store-save"
    lamina_as(user, python, "build", "--network", "none", "-t", "diff:rl", str(work / "diff"),
              root=store)
    archive = work / "diff.tar"
    lamina_as(user, python, "save", "diff:rl", "-o", str(archive), "--format", "oci", root=store)
    members: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("index.json"))
        while "manifests" in manifest:  # an index (of an index) down to the image manifest
            digest = manifest["manifests"][0]["digest"].split(":")[1]
            manifest = json.load(outer.extractfile(f"blobs/sha256/{digest}"))
        for layer in manifest["layers"]:
            blob = outer.extractfile(f"blobs/sha256/{layer['digest'].split(':')[1]}").read()
            with tarfile.open(fileobj=io.BytesIO(blob)) as t:
                for m in t.getmembers():
                    members[m.name.rstrip("/")] = m  # the top-most layer wins
    assert ".wh.x" in members and ".wh.gone" in members and "d/.wh..wh..opq" in members
    assert (members["x"].uid, members["x"].gid) == (1000, 1000)
    assert (members["d/g"].uid, members["d/g"].gid, members["d/g"].mode) == (65534, 100, 0o4755)
    assert members["d/h"].islnk() and members["d/h"].linkname == "d/g"
    assert (members["home/u/file"].uid, members["home/u/file"].gid) == (1000, 1000)
    assert not any("overlay" in k for m in members.values() for k in m.pax_headers)


@pytest.mark.root
def test_other_commands_work_unprivileged(users, work):
    user, _, python = users
    store, other = work / "store-cmds", work / "store-cmds2"
    built = lamina_as(user, python, "build", "--network", "none", "-t", "hello:rl",
                      str(work / "hello"), root=store)
    iid = _iid(built.stdout)
    images = lamina_as(user, python, "images", "-q", "--no-trunc", root=store)
    assert iid in images.stdout
    archive = work / "hello.tar"
    lamina_as(user, python, "save", "hello:rl", "-o", str(archive), root=store)
    lamina_as(user, python, "load", "-i", str(archive), root=other)
    assert iid in lamina_as(user, python, "images", "-q", "--no-trunc", root=other).stdout
    lamina_as(user, python, "fsck", root=other)
    lamina_as(user, python, "rmi", "hello:rl", root=other)
    lamina_as(user, python, "gc", root=other)
    lamina_as(user, python, "fsck", root=store)
    # the default store: $XDG_DATA_HOME/lamina, 0700
    env_root = user.home / "data" / "lamina"
    done = subprocess.run(["runuser", "-u", user.name, "--", "env", "-i", f"HOME={user.home}",
                           f"XDG_DATA_HOME={user.home / 'data'}", "PATH=/usr/bin:/bin",
                           *python, "images"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert oct(env_root.stat().st_mode & 0o777) == "0o700" and env_root.stat().st_uid == user.uid
    # --output type=local: the files are the user's (as BuildKit's client writes them)
    out = work / "diff-out"
    lamina_as(user, python, "build", "--network", "none", "-o", f"type=local,dest={out}",
              str(work / "diff"), root=store)
    assert (out / "home" / "u" / "id").read_text() == "1000\n1000\n"  # made by uid 1000
    assert {os.lstat(os.path.join(d, n)).st_uid for d, ds, fs in os.walk(out)
            for n in ds + fs} == {user.uid}
    # ... without setuid/setgid: a setuid file of the user's would run as the user for
    # anyone who can reach DEST (the layer keeps the bit; only this copy drops it)
    assert (out / "d" / "g").stat().st_mode & 0o7777 == 0o755
    # run: the image's command in the sandbox, as the image's user
    ran = lamina_as(user, python, "run", "--rm", "--network", "none", "hello:rl", "id", root=store)
    # the primary gid is among the process's groups, as docker's getUser gives them
    assert ran.stdout.strip() == "uid=1000 gid=1000 groups=1000"
    # a file of the store the user cannot remove from outside goes from inside
    check = lamina_as(user, python, "unshare", "--check", root=store)
    assert f"uid {user.uid} outside" in check.stdout and "subordinate IDs: 0..65536" in check.stdout
    lamina_as(user, python, "unshare", "rm", "-rf", str(other), root=store)
    assert not other.exists()


@pytest.mark.root
def test_single_id_mapping_warns_and_builds_what_root_alone_can(users, work):
    _, single, python = users
    ctx = single.home / "single"
    ctx.mkdir()
    shutil.copy(work / "hello" / "busybox", ctx / "busybox")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY busybox /bin/busybox\n'
                                    'RUN ["/bin/busybox", "mkdir", "/made"]\n')
    bad = ctx / "Dockerfile.chown"
    bad.write_text('FROM scratch\nCOPY busybox /bin/busybox\n'
                   'RUN ["/bin/busybox", "chown", "1000:1000", "/bin/busybox"]\n')
    for p in (ctx, *ctx.iterdir()):
        os.chown(p, single.uid, single.uid)
    store = ctx / "store"
    ok = lamina_as(single, python, "build", "--network", "none", str(ctx), root=store)
    assert "no subordinate IDs" in ok.stderr and "only your own ID" in ok.stderr
    failed = lamina_as(single, python, "build", "--network", "none", "-f", str(bad), str(ctx),
                       root=store, check=False)
    assert failed.returncode != 0 and "Invalid argument" in failed.stdout + failed.stderr


def _procs_mentioning(text: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(int(pid))
        except OSError:
            pass
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.root
def test_sigkill_leaves_nothing_mounted_or_running(users, work):
    user, _, python = users
    store = work / "store-kill"
    ctx = work / "kill"
    ctx.mkdir()
    shutil.copy(work / "hello" / "busybox", ctx / "busybox")
    marker = f"{os.getpid() % 1000 + 7000}"
    (ctx / "Dockerfile").write_text(f'FROM scratch\nCOPY busybox /bin/busybox\n'
                                    f'RUN ["/bin/busybox", "sleep", "{marker}"]\n')
    for p in (ctx, *ctx.iterdir()):
        os.chown(p, user.uid, user.uid)
    env = ["env", "-i", f"HOME={user.home}", "PATH=/usr/bin:/bin"]
    proc = subprocess.Popen(["runuser", "-u", user.name, "--", *env, *python, "--root",
                             str(store), "build", "--network", "none", str(ctx)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any(b"sleep" in Path(f"/proc/{p}/cmdline").read_bytes()
                      for p in _procs_mentioning(marker)):
            assert time.monotonic() < deadline and proc.poll() is None, "the RUN never started"
            time.sleep(0.05)
        lamina = [c for c in _children(proc.pid) if str(store).encode()
                  in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(lamina) == 1
        # lamina kept its pid across the re-exec into the user namespace
        assert Path(f"/proc/{lamina[0]}/status").read_text().count(f"\t{user.uid}\t") >= 1
        os.kill(lamina[0], signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (_procs_mentioning(marker) or _procs_mentioning(str(store))
               or any(_owner(p) in user.outside_ids() for p in os.listdir("/proc") if p.isdigit())):
            assert time.monotonic() < deadline, "a process outlived the SIGKILLed lamina"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert str(work) not in Path("/proc/self/mountinfo").read_text()
    leftover = [p for p in os.listdir("/proc") if p.isdigit()
                and _owner(p) in user.outside_ids()]
    assert not leftover, [Path(f"/proc/{p}/cmdline").read_bytes() for p in leftover]
    # the next run cleans up after the killed one; the store checks out
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY busybox /bin/busybox\n'
                                    'RUN ["/bin/busybox", "true"]\n')
    lamina_as(user, python, "build", "--network", "none", str(ctx), root=store)
    lamina_as(user, python, "fsck", root=store)
    assert not any((store / "tmp").iterdir())


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


@pytest.fixture()
def tun_for_users():
    """/dev/net/tun open to every user, as udev makes it (0666) on most systems; a host
    with 0600 (this project's VMs) gets 0666 for the test and its mode back after."""
    tun = Path("/dev/net/tun")
    if not tun.exists():
        _skip_or_fail("no /dev/net/tun")
    mode = tun.stat().st_mode & 0o777
    if mode != 0o666:
        tun.chmod(0o666)
    try:
        yield
    finally:
        if mode != 0o666:
            tun.chmod(mode)


@pytest.mark.root
def test_rootless_run_has_the_default_network_seccomp_and_docker_capabilities(
        users, work, peer, host_loopback, tun_for_users):
    user, _, python = users
    port4, _, hits = host_loopback
    ctx = work / "net"
    ctx.mkdir()
    shutil.copy(work / "hello" / "busybox", ctx / "busybox")
    (ctx / "Dockerfile").write_text(f"""\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN wget -q -O- http://{peer.addr}:{peer.port}/token.txt | sed 's/^/GOT /' \\
 && for u in http://10.0.2.2:{port4}/gw http://127.0.0.1:{port4}/lo; do \\
      timeout 5 wget -q -O- "$u" && echo "REACHED $u"; done; \\
    grep -E '^(Seccomp|CapBnd|CapEff):' /proc/self/status; \\
    ip -o link | cut -d: -f2
""")
    for p in (ctx, *ctx.iterdir()):
        os.chown(p, user.uid, user.uid)
    done = lamina_as(user, python, "build", "--progress", "plain", str(ctx), root=work / "store-net")
    log = done.stderr
    assert f"GOT {TOKEN.strip()}" in log
    assert "REACHED" not in log and hits == []
    assert re.search(r"Seccomp:\s+2\b", log)  # docker's filter, installed inside the namespace
    # docker's default capability set (moby's oci/caps defaults), root of the step
    assert re.search(r"CapBnd:\s+00000000a80425fb\b", log)
    assert re.search(r"CapEff:\s+00000000a80425fb\b", log)
    assert re.search(r"\btap0\b", log)
    # the helper ran as the user (root of lamina's namespace) and is gone with the step
    assert not [p for p in _procs_mentioning("slirp4netns") if _owner(str(p)) in user.outside_ids()]


@pytest.mark.root
def test_concurrent_rootless_builds_share_one_store(users, work, root_ids):
    user, _, python = users
    store = work / "store-concurrent"
    env = ["env", "-i", f"HOME={user.home}", "PATH=/usr/bin:/bin"]
    procs = {name: subprocess.Popen(["runuser", "-u", user.name, "--", *env, *python, "--root",
                                     str(store), "build", "--network", "none", str(work / name)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("hello", "diff", "multistage")}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert _iid(out) == root_ids[name]
    lamina_as(user, python, "fsck", root=store)


@pytest.mark.root
def test_push_and_pull_unprivileged(users, work, tmp_path, root_ids):
    from tests.store.registryfix import registry

    user, _, python = users
    store, other = work / "store-push", work / "store-pull"
    lamina_as(user, python, "build", "--network", "none", "-t", "diff:rl", str(work / "diff"),
              root=store)
    with registry(tmp_path / "registry") as host:
        lamina_as(user, python, "push", "diff:rl", f"{host}/team/diff:1", root=store)
        lamina_as(user, python, "pull", f"{host}/team/diff:1", root=other)
    ids = lamina_as(user, python, "images", "-q", "--no-trunc", root=other).stdout.split()
    assert ids == [root_ids["diff"]]  # pulled layers extracted with the image's owners
    lamina_as(user, python, "fsck", root=other)


@pytest.mark.root
def test_a_rootless_store_is_refused_as_root_and_the_reverse(users, work, tmp_path):
    user, _, python = users
    store = work / "store-forms"
    lamina_as(user, python, "images", root=store)
    assert (store / "overlay-xattrs").read_text() == "user\n"
    as_root = subprocess.run([sys.executable, "-m", "lamina", "--root", str(store), "images"],
                             capture_output=True, text=True, timeout=60)
    assert as_root.returncode == 1
    assert "made by rootless lamina" in as_root.stderr and "Traceback" not in as_root.stderr
    root_store = work / "store-root-form"
    lamina_as_root("images", root=root_store)
    os.chown(root_store, user.uid, user.uid)
    theirs = lamina_as(user, python, "images", root=root_store, check=False)
    assert theirs.returncode == 1 and "made by lamina as root" in theirs.stderr


@pytest.mark.root
def test_differential_cases_give_the_root_image_ids(users, work, busybox_path):
    """Every dedicated case of the differential suite (tests/builder/diffcases) on its
    imported busybox base: the rootless build's image ID is the root build's."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.builder.test_differential import BASE_REF, CASES as DIFF_CASES, _base_rootfs, case_dir

    user, _, python = users
    EPOCH = {"SOURCE_DATE_EPOCH": "1000000"}  # import stamps the time: one for both
    base = work / "diffcases"
    base.mkdir()
    tar = _base_rootfs(base, busybox_path)
    mine, theirs = work / "store-diffcases", base / "root-store"
    contexts = {}
    for name, case in DIFF_CASES.items():
        ctx = case_dir(base, name)
        if case.prepare:
            case.prepare(ctx)
        contexts[name] = ctx
    for dirpath, dirnames, filenames in os.walk(base):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            os.lchown(n, user.uid, user.uid)

    def args(name: str) -> list[str]:
        case = DIFF_CASES[name]
        out = [f"--build-arg={k}={v}" for k, v in case.args.items()]
        return out + (["--target", case.target] if case.target else [])

    def as_user() -> dict[str, str]:
        lamina_as(user, python, "import", str(tar), BASE_REF, root=mine, env_extra=EPOCH)
        return {n: _iid(lamina_as(user, python, "build", "--network", "none", *args(n), str(c),
                                  root=mine).stdout) for n, c in contexts.items()}

    def as_root() -> dict[str, str]:
        lamina_as_root("import", str(tar), BASE_REF, root=theirs, env_extra=EPOCH)
        return {n: _iid(lamina_as_root("build", "--network", "none", *args(n), str(c),
                                       root=theirs).stdout) for n, c in contexts.items()}

    with ThreadPoolExecutor(2) as pool:
        ours, roots = pool.submit(as_user), pool.submit(as_root)
        assert ours.result() == roots.result()
