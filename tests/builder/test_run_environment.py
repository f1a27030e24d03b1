"""What a RUN sees of its surroundings, pinned to BuildKit's behaviour.

Expected values come from BuildKit's source (moby/buildkit) and were checked against
`docker build` with BuildKit (Debian 12's docker.io 20.10, DOCKER_BUILDKIT=1) on
these machines:

- host name `buildkitsandbox` (executor/oci/hosts.go defaultHostname, set in the
  spec's UTS namespace by executor/oci/spec.go);
- /etc/hosts exactly `127.0.0.1\\tlocalhost buildkitsandbox\\n::1\\tlocalhost
  ip6-localhost ip6-loopback\\n` (initHostsFile), bind-mounted read-only with
  nosuid,nodev,noexec (spec_linux.go generateMountOpts -> withROBind), as is
  /etc/resolv.conf; no /etc/hostname at all (nothing mounts or writes one);
- the mount stubs the executor had to create (/etc/hosts, /etc/resolv.conf, and
  with RemoveMountStubsRecursive their missing parents such as /etc) are removed
  after the step (executor/stubs.go MountStubsCleaner): they never reach the layer;
- environment: the image's Env, PATH defaulting to
  /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin when the image has
  none (solver/llbsolver/ops/exec.go addDefaultEnvvar; dockerfile2llb also writes it
  into the image config), and HOME as runc sets it when absent: the user's home
  from the image's /etc/passwd, else "/". No TERM, no HOSTNAME (those are `docker
  run`'s, not BuildKit's).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.builder.buildkit import build_rootfs, busybox_binary, image_config, lamina, make_context

pytestmark = pytest.mark.root

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOSTS = b"127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def _rootfs_tar(with_etc: bool) -> bytes:
    """A busybox root with no config at all (lamina import: no Env, no PATH)."""
    buf = io.BytesIO()
    data = Path(busybox_binary()).read_bytes()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, kind, mode=0o755, content=b"", link=""):
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1_600_000_000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        add("bin", "dir")
        add("bin/busybox", "file", content=data)
        for applet in ("sh", "env", "hostname", "cat", "test", "grep", "echo", "id", "ls"):
            add(f"bin/{applet}", "symlink", link="busybox")
        add("tmp", "dir", 0o1777)
        if with_etc:
            add("etc", "dir")
            add("etc/passwd", "file", 0o644,
                b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
            add("etc/group", "file", 0o644, b"root:x:0:\nalice:x:1000:\n")
    return buf.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with two imported images without any config: `noetc` (no /etc at all)
    and `withetc` (/etc/passwd with root and alice)."""
    tmp = tmp_path_factory.mktemp("runenv")
    root = tmp / "store"
    for ref, with_etc in (("noetc:1", False), ("withetc:1", True)):
        tar = tmp / f"{ref.split(':')[0]}.tar"
        tar.write_bytes(_rootfs_tar(with_etc))
        r = lamina(root, "import", str(tar), ref)
        assert r.code == 0, r.stderr
    return root


def _build(store: Path, tmp_path: Path, dockerfile: str, *args: str) -> Path:
    ctx = make_context(tmp_path / "ctx", dockerfile)
    dest = tmp_path / "out"
    build_rootfs(store, ctx, dest, *args)
    return dest


def _env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_host_name_hosts_and_no_hostname_file(store, tmp_path):
    out = _build(store, tmp_path, """\
FROM withetc:1
RUN hostname > /hn && cat /etc/hosts > /hosts.seen \\
    && (test -e /etc/hostname && echo present || echo absent) > /hostname-file \\
    && grep -E ' /etc/(hosts|resolv.conf|hostname) ' /proc/self/mountinfo > /mounts \\
    && (echo 10.0.0.1 x >> /etc/hosts && echo writable || echo read-only) > /hosts-write
""")
    assert (out / "hn").read_text() == "buildkitsandbox\n"
    assert (out / "hosts.seen").read_bytes() == HOSTS
    assert (out / "hostname-file").read_text() == "absent\n"
    assert (out / "hosts-write").read_text() == "read-only\n"
    mounts = (out / "mounts").read_text().splitlines()
    targets = sorted(line.split()[4] for line in mounts)
    assert targets == ["/etc/hosts", "/etc/resolv.conf"]
    for line in mounts:
        options = set(line.split()[5].split(","))
        assert {"ro", "nosuid", "nodev", "noexec"} <= options, line
    # none of the injected files is part of the image
    assert not (out / "etc" / "hosts").exists()
    assert not (out / "etc" / "resolv.conf").exists()
    assert not (out / "etc" / "hostname").exists()


def test_mount_stubs_and_their_parents_leave_no_trace(store, tmp_path):
    # the image has no /etc: the sandbox creates /etc, /etc/hosts, /etc/resolv.conf to
    # mount on; BuildKit (RemoveMountStubsRecursive) removes all of them - but not runc's
    # own /dev, /proc and /sys mount points, which stay in its layer
    out = _build(store, tmp_path, "FROM noetc:1\nRUN echo ran > /ran\n")
    assert (out / "ran").read_text() == "ran\n"
    assert sorted(p.name for p in out.iterdir()) == ["bin", "dev", "proc", "ran", "sys", "tmp"]


def test_a_run_that_writes_etc_keeps_it_but_not_the_stubs(store, tmp_path):
    out = _build(store, tmp_path, "FROM noetc:1\nRUN echo n > /etc/motd\n")
    assert sorted(p.name for p in (out / "etc").iterdir()) == ["motd"]


def test_environment_of_an_image_without_env(store, tmp_path):
    out = _build(store, tmp_path, "FROM noetc:1\nRUN env > /env.txt\n")
    env = _env((out / "env.txt").read_text())
    # PATH: BuildKit's default; HOME: runc's default without /etc/passwd; PWD and
    # SHLVL are the shell's own
    assert env == {"PATH": DEFAULT_PATH, "HOME": "/", "PWD": "/", "SHLVL": "1"}


def test_home_comes_from_passwd_unless_set(store, tmp_path):
    out = _build(store, tmp_path, """\
FROM withetc:1
RUN env > /root.env
USER alice
RUN env > /tmp/alice.env
USER 4321
RUN env > /tmp/nobody.env
USER root
ENV HOME=/custom
RUN env > /custom.env
""")
    assert _env((out / "root.env").read_text())["HOME"] == "/root"
    assert _env((out / "tmp/alice.env").read_text())["HOME"] == "/home/alice"
    assert _env((out / "tmp/nobody.env").read_text())["HOME"] == "/"
    custom = _env((out / "custom.env").read_text())
    assert custom["HOME"] == "/custom"
    for env in (custom, _env((out / "root.env").read_text())):
        assert "TERM" not in env and "HOSTNAME" not in env
        assert env["PATH"] == DEFAULT_PATH


def test_image_config_gets_the_default_path(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", "FROM noetc:1\nENV A=1\n")
    r = lamina(store, "build", "--progress", "plain", "-t", "pathcfg:1", str(ctx))
    assert r.code == 0, r.stderr
    cfg = image_config(store, "pathcfg:1")["config"]
    # dockerfile2llb: PATH appended to the base's Env before the stage's own ENV
    assert cfg["Env"] == [f"PATH={DEFAULT_PATH}", "A=1"]


def test_build_arg_and_env_reach_the_run_but_not_an_unset_path(store, tmp_path):
    out = _build(store, tmp_path, """\
FROM noetc:1
ARG VERSION=1.2
ENV PATH=/opt/bin:/bin
RUN env > /env.txt
""", "--build-arg", "VERSION=2.0")
    env = _env((out / "env.txt").read_text())
    assert env == {"PATH": "/opt/bin:/bin", "HOME": "/", "PWD": "/", "SHLVL": "1",
                   "VERSION": "2.0"}



def dup_env_archive(path: Path) -> Path:
    """A docker-archive of `dupenv:1`: the busybox root and a config whose Env repeats
    a name (as some hand-made or converted images do)."""
    import hashlib

    layer = _rootfs_tar(False)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/bin", "A=1", "A=2"]},
              "rootfs": {"type": "layers",
                         "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}
    cfg = json.dumps(config).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["dupenv:1"],
                            "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("layer.tar", layer), ("config.json", cfg),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def test_base_image_env_duplicates(store, tmp_path):
    """A base image whose Env repeats a name: BuildKit keeps the config's entries as
    they are (an ENV replaces the first one: dockerfile2llb addEnv) and a RUN sees the
    last value (the LLB env is built by adding the entries in order), or the ENV's."""
    r = lamina(store, "load", "-i", str(dup_env_archive(tmp_path / "dup.tar")))
    assert r.code == 0, r.stderr
    out = _build(store, tmp_path, """\
FROM dupenv:1
RUN echo "$A" > /before
ENV A=new
RUN echo "$A" > /after
""")
    assert (out / "before").read_text() == "2\n"
    assert (out / "after").read_text() == "new\n"
    ctx = make_context(tmp_path / "ctx2", "FROM dupenv:1\nENV A=new\n")
    assert lamina(store, "build", "--progress", "plain", "-t", "dupenv:2", str(ctx)).code == 0
    assert image_config(store, "dupenv:2")["config"]["Env"] == ["PATH=/bin", "A=new", "A=2"]
