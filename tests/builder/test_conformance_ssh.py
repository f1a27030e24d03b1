"""`RUN --mount=type=ssh` with `lamina build --ssh` (issue 14), end to end against
real OpenSSH: the agent request is answered inside the RUN by the host's own
`ssh-add -l` (copied into the image with its libraries), and its listing must equal
`ssh-keygen -lf` of the key on the host. Socket metadata as BuildKit's own test
(frontend/dockerfile/dockerfile_ssh_test.go: mode=741,uid=100,gid=102 gives
`stat -c "%u %g %f"` = "100 102 c1e1"); default target /run/buildkit/ssh_agent.N
and SSH_AUTH_SOCK as client/llb/exec.go."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.builder.buildkit import build, build_rootfs, make_context
from tests.conftest import require_tool

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    require_tool("ssh-keygen")
    d = tmp_path_factory.mktemp("sshkey")
    key = d / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "issue14@test",
                    "-f", str(key)], check=True)
    key.chmod(0o644)  # a key file's own mode must not matter (buildx reads any file)
    listing = subprocess.run(["ssh-keygen", "-lf", str(key) + ".pub"], check=True,
                             capture_output=True, text=True).stdout.strip()
    return key, listing


def _ssh_add_tree(dest: Path) -> None:
    """/usr/bin/ssh-add and every library ldd names, at their own paths under dest."""
    binary = shutil.which("ssh-add")
    assert binary
    paths = [binary]
    for line in subprocess.run(["ldd", binary], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                paths.append(p)
    for p in paths:
        target = dest / p.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(p), target)


DOCKERFILE = """\
FROM bb
COPY tools/ /
RUN --mount=type=ssh echo "$SSH_AUTH_SOCK" > /sock && ssh-add -l > /listed-root
USER alice
RUN --mount=type=ssh,uid=1000 ssh-add -l > /tmp/listed-alice
USER root
RUN --mount=type=ssh,mode=741,uid=100,gid=102 \\
    [ "$(stat -c "%u %g %f" $SSH_AUTH_SOCK)" = "100 102 c1e1" ] && touch /params-ok
RUN --mount=type=ssh,id=other,target=/agent.sock \\
    --mount=type=ssh echo "$SSH_AUTH_SOCK" > /sock-two
"""


def _ctx(tmp_path: Path) -> Path:
    ctx = make_context(tmp_path / "ctx", DOCKERFILE)
    _ssh_add_tree(ctx / "tools")
    return ctx


def test_ssh_key_file_served_to_the_run(build_store, tmp_path, keypair):
    require_tool("ssh-agent")
    root, _ = build_store
    key, listing = keypair
    out = tmp_path / "rootfs"
    build_rootfs(root, _ctx(tmp_path), out, "--no-cache", "--ssh", f"default={key}",
                 "--ssh", f"other={key}")
    assert (out / "sock").read_text() == "/run/buildkit/ssh_agent.0\n"
    assert (out / "listed-root").read_text().strip() == listing
    assert (out / "tmp" / "listed-alice").read_text().strip() == listing
    assert (out / "params-ok").exists()
    # the first ssh mount names SSH_AUTH_SOCK, whatever its target
    assert (out / "sock-two").read_text() == "/agent.sock\n"
    # nothing of the agent or the key stays in the image
    assert not (out / "run" / "buildkit").exists() and not (out / "agent.sock").exists()
    secret = key.read_bytes()
    for path in out.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20:
            assert secret not in path.read_bytes(), path


def test_ssh_agent_socket_forwarded(build_store, tmp_path, keypair, monkeypatch):
    require_tool("ssh-agent")
    root, _ = build_store
    key, listing = keypair
    sock = Path(f"/tmp/lamina-test-agent-{os.getpid()}.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if sock.exists():
                break
            time.sleep(0.01)
        private = tmp_path / "k"
        private.write_bytes(key.read_bytes())
        private.chmod(0o600)
        subprocess.run(["ssh-add", "-q", str(private)], check=True,
                       env={"SSH_AUTH_SOCK": str(sock), "PATH": os.environ["PATH"]})
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY tools/ /\nUSER alice\n"
                           "RUN --mount=type=ssh,uid=1000 ssh-add -l > /tmp/listed\n"
                           # BuildKit's default socket is 0:0 0600: not alice's
                           "RUN --mount=type=ssh ! ssh-add -l 2>/tmp/refused\n")
        _ssh_add_tree(ctx / "tools")
        out = tmp_path / "rootfs"
        build_rootfs(root, ctx, out, "--no-cache", "--ssh", "default")
        assert (out / "tmp" / "listed").read_text().strip() == listing
        assert "Permission denied" in (out / "tmp" / "refused").read_text()
        # --ssh ID=SOCKET (buildx's form): that agent for the mounts with id=ID, without
        # SSH_AUTH_SOCK in lamina's environment; a mount of another id stays optional
        monkeypatch.delenv("SSH_AUTH_SOCK")
        (ctx / "Dockerfile.id").write_text(
            "FROM bb\nCOPY tools/ /\n"
            "RUN --mount=type=ssh,id=deploy ssh-add -l > /listed-id && echo $SSH_AUTH_SOCK > /sock-id\n"
            "RUN --mount=type=ssh [ ! -e /run/buildkit/ssh_agent.0 ] && touch /no-default\n")
        build_rootfs(root, ctx, out, "-f", str(ctx / "Dockerfile.id"), "--ssh", f"deploy={sock}")
        assert (out / "listed-id").read_text().strip() == listing
        assert (out / "sock-id").read_text() == "/run/buildkit/ssh_agent.0\n"
        assert (out / "no-default").exists()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait()
        sock.unlink(missing_ok=True)


def test_ssh_mount_not_given(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\n"
                       "RUN --mount=type=ssh [ ! -e /run/buildkit/ssh_agent.0 ] && touch /ok\n")
    out = tmp_path / "rootfs"
    build_rootfs(root, ctx, out, "--no-cache")
    assert (out / "ok").exists()  # optional by default: BuildKit skips the mount
    ctx = make_context(tmp_path / "ctx2", "FROM bb\nRUN --mount=type=ssh,required true\n")
    run = build(root, ctx)
    assert run.code != 0 and 'no SSH key "default" forwarded' in run.stderr, run.stderr


def test_ssh_flag_errors(build_store, tmp_path, monkeypatch):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN --mount=type=ssh true\n")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    run = build(root, ctx, "--ssh", "default")
    assert run.code != 0 and "SSH_AUTH_SOCK" in run.stderr
    run = build(root, ctx, "--ssh", f"default={tmp_path / 'nope'}")
    assert run.code != 0 and "neither an agent socket nor a readable private key" in run.stderr
    ctx2 = make_context(tmp_path / "ctx2", "FROM bb\nRUN --mount=type=ssh,src=/x true\n")
    run = build(root, ctx2)
    assert run.code != 0 and "ssh does not support source" in run.stderr


def test_ssh_passphrase_key_is_an_error(build_store, tmp_path):
    require_tool("ssh-agent")
    root, _ = build_store
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-pass", "-f", str(key)],
                   check=True)
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN --mount=type=ssh true\n")
    run = build(root, ctx, "--no-cache", "--ssh", f"default={key}")
    assert run.code != 0 and "passphrase" in run.stderr, run.stderr
