"""`lamina build` end to end, instruction by instruction: the effect of each one on the
built root filesystem (read back with `--output type=local`) and on the image config
and history, with expected values from the Dockerfile reference and BuildKit's
behaviour. One module-scoped build carries most metadata instructions; COPY, ADD,
.dockerignore and RUN --mount have builds of their own."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import lzma
import os
import bz2
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from tests.builder.buildkit import (
    build, build_rootfs, image_config, make_context, mode_of, owner_of,
)

pytestmark = pytest.mark.root


def _id_fields(text: str) -> dict[str, str]:
    """busybox `id` output -> {"uid": "1000(alice)", "gid": ..., "groups": ...}."""
    return dict(part.split("=", 1) for part in text.split())


def _group_ids(groups: str) -> set[int]:
    return {int(g.split("(")[0]) for g in groups.split(",")}


# --- metadata instructions, ARG, USER, WORKDIR, SHELL: one build ------------------------

MAIN = """\
ARG BASE=bb
ARG GLOBAL_ONLY=global
FROM ${BASE} AS main
MAINTAINER Jane Doe <jane@example.com>
ARG A1=default1
ARG A2
ARG GLOBAL_ONLY
ENV E1=one E2="two words"
ENV E3 ${A1}-suffix
LABEL l1=v1 "l two"="v 2"
LABEL from.arg=${A1}
EXPOSE 80 443/udp 8080/tcp
VOLUME ["/data", "/logs"]
VOLUME /cache
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=1s --retries=4 CMD wget -q localhost || exit 1
WORKDIR /w1
WORKDIR sub
RUN pwd > /pwd.txt && echo "A1=$A1 A2=$A2 E1=$E1 E2=$E2 E3=$E3 G=$GLOBAL_ONLY" > /vars.txt
RUN env > /env.txt
USER alice
WORKDIR /alice-work
RUN id > /tmp/id-alice.txt && touch /home/alice/made-by-alice
USER 1001:50
RUN id > /tmp/id-1001.txt
USER root
SHELL ["/bin/sh", "-c", "echo custom-shell > /shell.txt; eval \\"$1\\"", "shell0"]
RUN echo "dollar0=$0" > /shell-arg.txt
CMD echo shell form
ENTRYPOINT ["/bin/echo", "ep"]
"""


@pytest.fixture(scope="module")
def main_build(build_store, tmp_path_factory):
    root, _ = build_store
    base = tmp_path_factory.mktemp("main-build")
    ctx = make_context(base / "ctx", MAIN)
    run = build_rootfs(root, ctx, base / "rootfs", "-t", "main:1", "--build-arg", "A2=given",
                       "--build-arg", "UNDECLARED=x")
    return run, image_config(root, "main:1"), base / "rootfs"


def test_env_in_config_and_run(main_build):
    run, config, rootfs = main_build
    env = config["config"]["Env"]
    assert "E1=one" in env
    assert "E2=two words" in env
    assert "E3=default1-suffix" in env  # ENV expands ARG values
    # ARGs are not persisted in the image's environment
    assert not any(e.startswith(("A1=", "A2=", "GLOBAL_ONLY=", "UNDECLARED=")) for e in env)
    assert any(e.startswith("PATH=") for e in env)
    run_env = (rootfs / "env.txt").read_text().splitlines()
    assert "E2=two words" in run_env
    assert "A2=given" in run_env  # build args are in the RUN environment
    assert not any(l.startswith("UNDECLARED=") for l in run_env)


def test_arg_defaults_build_args_and_global_arg(main_build):
    run, config, rootfs = main_build
    assert (rootfs / "vars.txt").read_text() == \
        "A1=default1 A2=given E1=one E2=two words E3=default1-suffix G=global\n"
    # an undeclared --build-arg is reported, as docker does
    assert "UNDECLARED" in run.stderr


def test_label_expose_volume_stopsignal_healthcheck(main_build):
    _, config, _ = main_build
    c = config["config"]
    assert c["Labels"] == {"l1": "v1", "l two": "v 2", "from.arg": "default1"}
    assert c["ExposedPorts"] == {"80/tcp": {}, "443/udp": {}, "8080/tcp": {}}
    assert c["Volumes"] == {"/data": {}, "/logs": {}, "/cache": {}}
    assert c["StopSignal"] == "SIGTERM"
    assert c["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q localhost || exit 1"],
        "Interval": 5_000_000_000, "Timeout": 3_000_000_000,
        "StartPeriod": 1_000_000_000, "Retries": 4,
    }


def test_maintainer_sets_author(main_build):
    _, config, _ = main_build
    assert config["author"] == "Jane Doe <jane@example.com>"


def test_workdir_created_and_relative(main_build):
    _, config, rootfs = main_build
    assert (rootfs / "pwd.txt").read_text() == "/w1/sub\n"
    assert (rootfs / "w1" / "sub").is_dir()
    # BuildKit creates the WORKDIR as the USER in force
    assert owner_of(rootfs / "alice-work") == (1000, 1000)
    assert config["config"]["WorkingDir"] == "/alice-work"


def test_user_by_name_and_uid_gid(main_build):
    _, config, rootfs = main_build
    alice = _id_fields((rootfs / "tmp" / "id-alice.txt").read_text())
    assert alice["uid"] == "1000(alice)" and alice["gid"] == "1000(alice)"
    # supplementary groups from /etc/group (wheel, staff); whether the primary group is
    # repeated in the list differs between runtimes
    assert _group_ids(alice["groups"]) - {1000} == {10, 50}
    assert owner_of(rootfs / "home" / "alice" / "made-by-alice") == (1000, 1000)
    bob = _id_fields((rootfs / "tmp" / "id-1001.txt").read_text())
    assert bob["uid"] == "1001(bob)" and bob["gid"] == "50(staff)"
    assert config["config"]["User"] == "root"


def test_shell_cmd_entrypoint(main_build):
    _, config, rootfs = main_build
    c = config["config"]
    shell = ["/bin/sh", "-c", 'echo custom-shell > /shell.txt; eval "$1"', "shell0"]
    assert c["Shell"] == shell
    # RUN in shell form runs SHELL + [command]
    assert (rootfs / "shell.txt").read_text() == "custom-shell\n"
    assert (rootfs / "shell-arg.txt").read_text() == "dollar0=shell0\n"
    # CMD in shell form is wrapped in SHELL; a CMD set in this stage survives ENTRYPOINT
    assert c["Cmd"] == shell + ["echo shell form"]
    assert c["Entrypoint"] == ["/bin/echo", "ep"]


def test_history(main_build):
    _, config, _ = main_build
    hist = config["history"]
    base_len = len(image_config_base_history(config))
    ours = hist[base_len:]
    by = [h["created_by"] for h in ours]
    assert "ENV E1=one E2=two words" in by
    # BuildKit's parseExpose sorts the words (sort.Strings), then prints the list
    assert "EXPOSE [443/udp 80/tcp 8080/tcp]" in by
    run_pwd = [b for b in by if "pwd > /pwd.txt" in b]
    assert len(run_pwd) == 1
    # BuildKit records the build args a RUN sees: |N K=V ... before the command
    assert run_pwd[0].startswith("RUN |3 A1=default1 A2=given GLOBAL_ONLY=global /bin/sh -c pwd")
    assert run_pwd[0].endswith(" # buildkit")
    for h in ours:
        assert h["comment"] == "buildkit.dockerfile.v0"
        if h["created_by"].startswith(("ENV", "LABEL", "EXPOSE", "VOLUME", "USER", "CMD",
                                       "ENTRYPOINT", "SHELL", "STOPSIGNAL", "HEALTHCHECK",
                                       "MAINTAINER", "ARG")):
            assert h.get("empty_layer") is True, h
    layers = [h for h in hist if not h.get("empty_layer")]
    assert len(layers) == len(config["rootfs"]["diff_ids"])


def image_config_base_history(config: dict) -> list:
    """The base image bb has 4 history entries (tests/builder/buildkit.BASE_DOCKERFILE)."""
    return config["history"][:4]


def test_entrypoint_resets_inherited_cmd_and_shell_forms(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "p", "FROM bb\nCMD [\"base-cmd\"]\n")
    build(root, ctx, "-t", "with-cmd").check()
    ctx = make_context(tmp_path / "c", "FROM with-cmd\nENTRYPOINT exec top -b\n")
    build(root, ctx, "-t", "child-ep").check()
    c = image_config(root, "child-ep")["config"]
    # docker: ENTRYPOINT resets a CMD inherited from the base image; shell form wraps
    assert c["Entrypoint"] == ["/bin/sh", "-c", "exec top -b"]
    assert c.get("Cmd") in (None, [])


def test_onbuild_recorded_and_triggered(build_store, tmp_path):
    root, _ = build_store
    parent = make_context(tmp_path / "parent", """\
FROM bb
ONBUILD COPY trigger.txt /from-trigger.txt
ONBUILD RUN echo triggered > /onbuild-ran
RUN echo parent > /parent.txt
""")
    build(root, parent, "-t", "onbuild-parent").check()
    cfg = image_config(root, "onbuild-parent")["config"]
    assert cfg["OnBuild"] == ["COPY trigger.txt /from-trigger.txt",
                              "RUN echo triggered > /onbuild-ran"]
    child = make_context(tmp_path / "child", "FROM onbuild-parent\nRUN cat /onbuild-ran\n",
                         {"trigger.txt": "from the child's context\n"})
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, child, rootfs, "-t", "onbuild-child")
    assert (rootfs / "from-trigger.txt").read_text() == "from the child's context\n"
    assert (rootfs / "onbuild-ran").read_text() == "triggered\n"
    # triggers run once: the child image does not carry them on
    assert not image_config(root, "onbuild-child")["config"].get("OnBuild")


# --- COPY ---------------------------------------------------------------------------------

COPY_DOCKERFILE = """\
FROM bb AS src
RUN mkdir -p /made && echo made > /made/m.txt

FROM bb
ENV E=expanded
COPY dir /c1/
COPY dir/ /c2
COPY f1.txt /c3
COPY f1.txt /c4/
COPY f1.txt f2.txt /c5/
COPY w/*.log /c6/
COPY --chown=alice:staff f1.txt /c7/
COPY --chown=bob f1.txt /c7b
COPY --chown=1005:1006 dir /c7c
COPY --chmod=0640 f1.txt /c8
COPY --chmod=u=rwx,go=rx f1.txt /c8s
COPY --from=src /made/m.txt /c9/
COPY --from=0 /made /c10
COPY --link f1.txt /c11/
COPY --exclude=*.tmp tree /c12/
COPY --exclude=**/*.tmp tree /c12b/
COPY --parents dir/sub/b.txt f1.txt /c13/
COPY <<EOF /c14.txt
heredoc $E
EOF
COPY <<"EOF" /c15.txt
heredoc $E
EOF
WORKDIR /rel
COPY f1.txt ./relative.txt
COPY link-to-f1 /c16
COPY links /c17/
"""


@pytest.fixture(scope="module")
def copy_build(build_store, tmp_path_factory):
    root, _ = build_store
    base = tmp_path_factory.mktemp("copy-build")
    ctx = make_context(base / "ctx", COPY_DOCKERFILE, {
        "dir/a.txt": "a\n", "dir/sub/b.txt": "b\n",
        "f1.txt": ("one\n", 0o644), "f2.txt": "two\n",
        "w/x1.log": "x1", "w/x2.log": "x2", "w/y.txt": "y",
        "tree/keep/k.txt": "k", "tree/drop.tmp": "drop", "tree/keep/also.tmp": "drop",
    })
    (ctx / "link-to-f1").symlink_to("f1.txt")
    (ctx / "links").mkdir()
    (ctx / "links" / "l").symlink_to("../f1.txt")
    rootfs = base / "rootfs"
    run = build_rootfs(root, ctx, rootfs, "-t", "copies")
    return run, rootfs


def _tree(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*")}


def test_copy_directory_copies_its_contents(copy_build):
    _, r = copy_build
    assert _tree(r / "c1") == {"a.txt", "sub", "sub/b.txt"}
    assert _tree(r / "c2") == {"a.txt", "sub", "sub/b.txt"}


def test_copy_trailing_slash(copy_build):
    _, r = copy_build
    assert (r / "c3").is_file() and (r / "c3").read_text() == "one\n"
    assert (r / "c4").is_dir() and (r / "c4" / "f1.txt").read_text() == "one\n"


def test_copy_several_sources_and_wildcards(copy_build):
    _, r = copy_build
    assert _tree(r / "c5") == {"f1.txt", "f2.txt"}
    assert _tree(r / "c6") == {"x1.log", "x2.log"}


def test_copy_chown_chmod(copy_build):
    _, r = copy_build
    assert owner_of(r / "c7" / "f1.txt") == (1000, 50)
    assert owner_of(r / "c7b") == (1001, 1001)  # user only: the user's primary group
    assert owner_of(r / "c7c") == (1005, 1006)
    assert owner_of(r / "c7c" / "sub" / "b.txt") == (1005, 1006)
    # files copied from the context are owned by root without --chown
    assert owner_of(r / "c3") == (0, 0)
    assert mode_of(r / "c8") == 0o640
    assert mode_of(r / "c8s") == 0o755
    assert mode_of(r / "c3") == 0o644


def test_copy_from_stage_name_and_index(copy_build):
    _, r = copy_build
    assert (r / "c9" / "m.txt").read_text() == "made\n"
    assert (r / "c10" / "m.txt").read_text() == "made\n"  # directory contents


def test_copy_link_exclude_parents(copy_build):
    _, r = copy_build
    assert (r / "c11" / "f1.txt").read_text() == "one\n"
    # .dockerignore semantics, relative to the source: `*.tmp` matches the top level only
    assert _tree(r / "c12") == {"keep", "keep/k.txt", "keep/also.tmp"}
    assert _tree(r / "c12b") == {"keep", "keep/k.txt"}
    assert _tree(r / "c13") == {"dir", "dir/sub", "dir/sub/b.txt", "f1.txt"}


def test_copy_heredoc_and_relative_dest(copy_build):
    _, r = copy_build
    assert (r / "c14.txt").read_text() == "heredoc expanded\n"
    assert (r / "c15.txt").read_text() == "heredoc $E\n"  # quoted delimiter: no expansion
    assert (r / "rel" / "relative.txt").read_text() == "one\n"


def test_copy_symlinks(copy_build):
    _, r = copy_build
    # BuildKit follows a symlink named as a source (FollowSymlinks) ...
    assert not (r / "c16").is_symlink() and (r / "c16").read_text() == "one\n"
    # ... and copies symlinks inside a copied directory as symlinks
    assert os.readlink(r / "c17" / "l") == "../f1.txt"


# --- ADD ----------------------------------------------------------------------------------

def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o640, 123, 456
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):  # keep the test output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _git_repo(path: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(path.parent)}
    path.mkdir()
    (path / "README").write_text("from git\n")
    (path / "sub").mkdir()
    (path / "sub" / "inner.txt").write_text("inner\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "c1"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True)


def test_add_archives_url_and_git(build_store, tmp_path, http_root):
    root, _ = build_store
    served, base_url = http_root
    payload = b"downloaded payload\n"
    (served / "payload.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    repo = tmp_path / "repo"
    _git_repo(repo)
    members = {"top.txt": b"top\n", "d/inner.txt": b"inner\n"}
    ctx = make_context(tmp_path / "ctx", f"""\
FROM bb
ADD plain.tar /plain/
ADD packed.tgz /gz
ADD packed.tar.bz2 /bz2/
ADD packed.xz /xz/
COPY packed.tgz /copied/
ADD --checksum=sha256:{digest} {base_url}/payload.bin /url/
ADD file://{repo}#main /git/
ADD file://{repo}#main:sub /gitsub/
""", {
        "plain.tar": _tar_bytes(members),
        "packed.tgz": gzip.compress(_tar_bytes(members), mtime=0),
        "packed.tar.bz2": bz2.compress(_tar_bytes(members)),
        "packed.xz": lzma.compress(_tar_bytes(members)),  # detected by content, not name
    })
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs, "--allow", f"fs.read={repo}")
    for d in ("plain", "gz", "bz2", "xz"):
        assert _tree(rootfs / d) == {"top.txt", "d", "d/inner.txt"}, d
        assert (rootfs / d / "d" / "inner.txt").read_bytes() == b"inner\n"
    # ownership and mode come from the archive
    assert owner_of(rootfs / "plain" / "top.txt") == (123, 456)
    assert mode_of(rootfs / "plain" / "top.txt") == 0o640
    # COPY never extracts
    assert (rootfs / "copied" / "packed.tgz").read_bytes()[:2] == b"\x1f\x8b"
    # a URL is downloaded as a file named after the URL, mode 0600
    assert (rootfs / "url" / "payload.bin").read_bytes() == payload
    assert mode_of(rootfs / "url" / "payload.bin") == 0o600
    assert _tree(rootfs / "git") == {"README", "sub", "sub/inner.txt"}  # no .git
    assert _tree(rootfs / "gitsub") == {"inner.txt"}


def test_add_of_a_host_git_repository_needs_an_allow(build_store, tmp_path):
    """A Dockerfile alone may not read host paths: `ADD file://...` needs --allow fs.read."""
    root, _ = build_store
    repo = tmp_path / "private-repo"
    _git_repo(repo)
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nADD file://{repo}#main /git/\n", {})
    run = build(root, ctx)
    assert run.code != 0
    assert "--allow fs.read=" in run.stderr and "Dockerfile:2" in run.stderr
    assert "Traceback" not in run.stderr
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert build(root, ctx, "--allow", f"fs.read={other}").code != 0
    build(root, ctx, "--allow", f"fs.read={tmp_path}").check()


def test_add_url_checksum_mismatch_fails(build_store, tmp_path, http_root):
    root, _ = build_store
    served, base_url = http_root
    (served / "f").write_bytes(b"data")
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nADD --checksum=sha256:{'0' * 64} {base_url}/f /f\n")
    run = build(root, ctx, "-t", "bad-checksum")
    assert run.code != 0
    assert "checksum mismatch" in run.stderr and "Dockerfile:2:" in run.stderr
    assert "Traceback" not in run.stderr


# --- .dockerignore ------------------------------------------------------------------------

def test_dockerignore_exceptions_and_double_star(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY . /ctx/\n", {
        ".dockerignore": "**/*.log\n!keep.log\nsecret/\n*.md\n!README.md\n",
        "a.log": "x", "keep.log": "keep", "deep/er/b.log": "x", "deep/er/c.txt": "c",
        "secret/key": "k", "README.md": "r", "NOTES.md": "n", "src/app.py": "p",
    })
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs)
    assert _tree(rootfs / "ctx") == {
        "keep.log", "deep", "deep/er", "deep/er/c.txt", "README.md", "src", "src/app.py",
        "Dockerfile", ".dockerignore",
    }


# --- RUN heredoc and RUN --mount ----------------------------------------------------------

def test_run_heredoc(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
ENV WHO=world
RUN <<EOF
echo "one $WHO" > /h1
echo two >> /h1
EOF
RUN <<'EOF' sh
echo "literal $WHO" > /h2
EOF
RUN cat <<EOF > /h3
in a file
EOF
""")
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs)
    assert (rootfs / "h1").read_text() == "one world\ntwo\n"
    # a quoted delimiter is not expanded by the Dockerfile, but the shell sees $WHO set
    assert (rootfs / "h2").read_text() == "literal world\n"
    assert (rootfs / "h3").read_text() == "in a file\n"


def test_run_mount_cache_persists_across_builds(build_store, tmp_path):
    root, _ = build_store
    rootfs = tmp_path / "rootfs"
    for n in (1, 2):
        ctx = make_context(tmp_path / f"ctx{n}", f"""\
FROM bb
RUN --mount=type=cache,target=/var/cache/app,id=cache-test-{tmp_path.name} \\
    echo build{n} >> /var/cache/app/log && cat /var/cache/app/log > /seen
""")
        build_rootfs(root, ctx, rootfs)
    assert (rootfs / "seen").read_text() == "build1\nbuild2\n"
    assert not (rootfs / "var" / "cache" / "app" / "log").exists()  # never in a layer


def test_run_mount_tmpfs_and_bind(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
RUN --mount=type=tmpfs,target=/scratch echo hi > /scratch/f \\
    && grep ' /scratch ' /proc/mounts | cut -d' ' -f3 > /tmpfs-type
RUN --mount=type=bind,source=data,target=/mnt/data \\
    cat /mnt/data/d.txt > /bound.txt && ! touch /mnt/data/new 2>/dev/null && echo ro > /ro
RUN --mount=type=bind,source=data,target=/mnt/rw,rw touch /mnt/rw/written
""", {"data/d.txt": "bound content\n"})
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs)
    assert (rootfs / "tmpfs-type").read_text() == "tmpfs\n"
    assert not (rootfs / "scratch" / "f").exists()
    assert (rootfs / "bound.txt").read_text() == "bound content\n"
    assert (rootfs / "ro").exists()  # read-only by default
    assert not (rootfs / "mnt" / "data" / "d.txt").exists()
    assert not (rootfs / "mnt" / "rw" / "written").exists()  # rw writes are discarded
    assert not (ctx / "data" / "written").exists()  # and never reach the context


def test_run_mount_secret(build_store, tmp_path):
    root, _ = build_store
    secret_value = "s3cr3t-" + tmp_path.name
    secret = tmp_path / "token"
    secret.write_text(secret_value)
    want = hashlib.md5(secret_value.encode()).hexdigest()  # the Dockerfile shows no secret
    ctx = make_context(tmp_path / "ctx", f"""\
FROM bb
RUN --mount=type=secret,id=tok test "$(md5sum < /run/secrets/tok | cut -c1-32)" = {want} \\
    && echo ok > /secret-ok
RUN --mount=type=secret,id=tok,env=TOKEN test "$(printf %s "$TOKEN" | md5sum | cut -c1-32)" = {want} \\
    && echo ok > /secret-env-ok
""")
    out = tmp_path / "rootfs.tar"
    run = build(root, ctx, "-t", "with-secret", "--secret", f"id=tok,src={secret}",
                "--output", f"type=tar,dest={out}").check()
    data = out.read_bytes()
    assert b"secret-ok" in data and b"secret-env-ok" in data
    assert secret_value.encode() not in data  # not in any layer
    assert b"run/secrets/tok" not in data
    assert secret_value not in json.dumps(image_config(root, "with-secret"))  # not in history
    assert secret_value not in run.stderr
    # not in the cache key: another secret value still hits the cache
    other = tmp_path / "other"
    other.write_text("different")
    ctx2 = make_context(tmp_path / "ctx", None)
    again = build(root, ctx2, "--secret", f"id=tok,src={other}")
    # the RUN would fail with the other value if it ran: a hit proves the key ignores it
    assert again.code == 0, again.stderr
    assert all(s.cached for s in again.steps)


# --- predefined args, network, Dockerfile-specific .dockerignore -------------------------

def test_platform_and_proxy_args(build_store, tmp_path):
    import platform as host
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(host.machine(), host.machine())
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", f"""\
ARG TARGETARCH
FROM bb AS base-{arch}
RUN echo {arch} > /picked
FROM bb AS base-other
RUN echo other > /picked
FROM base-${{TARGETARCH}}
ARG TARGETPLATFORM
ARG BUILDPLATFORM
ARG TARGETOS TARGETARCH
RUN echo "$TARGETPLATFORM $BUILDPLATFORM $TARGETOS $TARGETARCH" > /platform \\
    && echo "proxy=$HTTP_PROXY" > /proxy
""")
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs, "-t", "platform-args",
                 "--build-arg", "HTTP_PROXY=http://proxy.invalid:3128")
    assert (rootfs / "picked").read_text() == f"{arch}\n"  # global ARG in FROM
    assert (rootfs / "platform").read_text() == f"linux/{arch} linux/{arch} linux {arch}\n"
    # proxy args are predefined: usable without ARG, and kept out of the history
    assert (rootfs / "proxy").read_text() == "proxy=http://proxy.invalid:3128\n"
    cfg = image_config(root, "platform-args")
    assert "proxy.invalid" not in json.dumps(cfg)
    assert not any(e.startswith("HTTP_PROXY=") for e in cfg["config"]["Env"])


def test_network_none_and_host_on_request(build_store, tmp_path):
    # the default network is tested in test_sandbox_network
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
RUN tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort > /ifaces-none && hostname > /hostname
RUN --network=host tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort > /ifaces-host
""")
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs, "--network", "none", "--allow", "network.host")
    assert (rootfs / "ifaces-none").read_text().split() == ["lo"]
    host_ifaces = sorted(l.split(":")[0].strip() for l in
                         Path("/proc/net/dev").read_text().splitlines()[2:])
    assert (rootfs / "ifaces-host").read_text().split() == host_ifaces
    assert (rootfs / "hostname").read_text().strip() != os.uname().nodename


def test_dockerfile_specific_dockerignore(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", None, {
        "build/app.Dockerfile": "FROM bb\nCOPY . /ctx/\n",
        "build/app.Dockerfile.dockerignore": "b.txt\nbuild\n",
        ".dockerignore": "a.txt\n",  # ignored: the Dockerfile's own file wins
        "a.txt": "a", "b.txt": "b",
    })
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs, "-f", str(ctx / "build" / "app.Dockerfile"))
    assert _tree(rootfs / "ctx") == {"a.txt", ".dockerignore"}


def test_run_mount_bind_from_stage_and_image(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb AS tools
ARG TOOL_VERSION=1
RUN mkdir -p /opt/tools && echo "tool v$TOOL_VERSION" > /opt/tools/version

FROM bb
RUN --mount=type=bind,from=tools,source=/opt/tools,target=/mnt/tools \\
    cat /mnt/tools/version > /got && ! touch /mnt/tools/x 2>/dev/null && echo ro > /ro
RUN --mount=type=bind,from=tools,target=/mnt/all,rw \\
    touch /mnt/all/written && cat /mnt/all/opt/tools/version > /got2
RUN --mount=type=bind,from=bb,source=/etc/passwd,target=/p head -1 /p | cut -d: -f1 > /from-image
""")
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs)
    assert (rootfs / "got").read_text() == "tool v1\n"
    assert (rootfs / "ro").exists()  # read-only unless rw
    assert (rootfs / "got2").read_text() == "tool v1\n"
    assert not (rootfs / "mnt" / "tools" / "version").exists()
    assert not (rootfs / "mnt" / "all" / "written").exists()  # rw writes are discarded
    assert (rootfs / "from-image").read_text() == "root\n"
    # the mounted stage is part of the RUN's key
    run = build_rootfs(root, ctx, rootfs, "--build-arg", "TOOL_VERSION=2")
    assert (rootfs / "got").read_text() == "tool v2\n"
    assert "source stage:0 changed" in run.step("target=/mnt/tools").miss
    assert run.step("from=bb").cached is False  # its parent step changed
