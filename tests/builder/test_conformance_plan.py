"""Issue 14 at the planning level and in the pure helpers, with expected values from
BuildKit's sources: dockerfile2llb/convert_runmount.go (a mount without target goes
to the working directory, "/" is an error, the cache id defaults to
path.Clean(target) as written), convert_ssh.go and client/llb/exec.go (ssh ids,
targets, mode, "ssh does not support source"), client/llb fileop.go WithUser with
solver/llbsolver/ops readUser (COPY --chown), and buildx's --ssh syntax."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lamina.builder.errors import BuildError
from lamina.builder.plan.plan import plan_build
from lamina.builder.plan.resolved import Platform
from lamina.builder.plan.stageplan import plan_all
from lamina.builder.steps.chown import resolve_chown
from lamina.builder.steps.ssh import AgentRelay, SSHSource, parse_ssh_flags
from lamina.grammar import parse


def _mounts(text: str):
    plan = plan_build(parse(text, path="Dockerfile"), platform=Platform("linux", "amd64"))
    steps = plan_all(plan)[plan.target].steps
    runs = [s for s in steps if s.keyword == "RUN"]
    return [r.resolved.mounts for r in runs]


def test_mounts_without_target_use_the_working_directory():
    (bind,), (ro,), (cache,), (tmpfs,), (rel,), (nested,) = _mounts("""\
FROM scratch AS binaries
FROM scratch
WORKDIR /go/src/app
RUN --mount=from=binaries true
RUN --mount=ro true
RUN --mount=type=cache true
RUN --mount=type=tmpfs true
RUN --mount=target=. true
RUN --mount=type=cache,target=sub/../cache/ true
""")
    assert (bind.type, bind.target, bind.from_stage, bind.readonly) == ("bind", "/go/src/app", 0, True)
    assert (ro.type, ro.target, ro.readonly) == ("bind", "/go/src/app", True)
    assert (cache.target, cache.id, cache.readonly) == ("/go/src/app", ".", False)
    assert tmpfs.target == "/go/src/app"
    assert rel.target == "/go/src/app"
    assert (nested.target, nested.id) == ("/go/src/app/cache", "cache")


def test_mount_without_target_at_root_is_an_error():
    with pytest.raises(BuildError, match='invalid mount target "/"'):
        _mounts("FROM scratch\nRUN --mount=type=bind true\n")
    with pytest.raises(BuildError, match='invalid mount target "/"'):
        _mounts("FROM scratch\nWORKDIR /\nRUN --mount=type=cache,target=. true\n")


def test_ssh_mount_defaults():
    ((a, b, c),) = _mounts("FROM scratch\nRUN --mount=type=ssh --mount=type=ssh,id=gh,"
                           "target=/s,mode=0640 --mount=type=ssh,required true\n")
    assert (a.id, a.target, a.mode, a.required) == ("default", "/run/buildkit/ssh_agent.0",
                                                     0o600, False)
    assert (b.id, b.target, b.mode) == ("gh", "/s", 0o640)
    assert (c.target, c.required) == ("/run/buildkit/ssh_agent.2", True)
    with pytest.raises(BuildError, match="ssh does not support source"):
        _mounts("FROM scratch\nRUN --mount=type=ssh,src=/x true\n")


def test_cache_mount_from_a_stage_is_planned():
    ((m,),) = _mounts("FROM scratch AS seed\nFROM scratch\n"
                      "RUN --mount=type=cache,from=seed,source=/c,target=/cache true\n")
    assert (m.type, m.from_stage, m.source, m.target, m.id) == ("cache", 0, "/c", "/cache",
                                                                 "/cache")


# --- COPY --chown resolution ------------------------------------------------------------

PASSWD = b"root:x:0:0::/root:/bin/sh\ncarol:x:2000:50::/home/carol:/bin/sh\n"
GROUP = b"root:x:0:\nstaff:x:50:carol\nwheel:x:10:\n"


def _files(path: str):
    return {"/etc/passwd": PASSWD, "/etc/group": GROUP}.get(path)


@pytest.mark.parametrize("spec, expected", [
    ("4242", (4242, 4242)), ("2000", (2000, 2000)), ("carol", (2000, 50)),
    ("carol:wheel", (2000, 10)), ("carol:77", (2000, 77)), ("4242:wheel", (4242, 10)),
    ("4242:77", (4242, 77)), ("root", (0, 0)), ("root:root", (0, 0)), ("root:staff", (0, 50)),
    (":staff", (0, 50)), ("carol:", (2000, 0)), ("4242:", (4242, 0)), ("0", (0, 0)),
    ("+7", (7, 7)),
])
def test_resolve_chown(spec, expected):
    assert resolve_chown(_files, spec) == expected


def test_resolve_chown_without_passwd_files():
    nothing = lambda path: None  # noqa: E731
    assert resolve_chown(nothing, "1000") == (1000, 1000)
    assert resolve_chown(nothing, "root:5") == (0, 5)
    # unknown names are 0 (user) or leave the gid (group), as BuildKit's readUser
    assert resolve_chown(nothing, "carol") == (0, 0)
    assert resolve_chown(nothing, "carol:staff") == (0, 0)
    assert resolve_chown(_files, "nosuch:nosuchgrp") == (0, 0)
    # (readUser: the user part sets uid and gid, an unknown group name changes nothing)
    assert resolve_chown(_files, "nosuch") == (0, 0)
    assert resolve_chown(_files, "nosuch:staff") == (0, 50)
    assert resolve_chown(_files, "carol:nosuchgrp") == (2000, 50)
    assert resolve_chown(_files, "4242:nosuchgrp") == (4242, 4242)
    with pytest.raises(BuildError, match="out of range"):
        resolve_chown(_files, "-1")


# --- --ssh values ---------------------------------------------------------------------------

def test_parse_ssh_flags(tmp_path):
    key = tmp_path / "key"
    key.write_text("not parsed here")
    sock = str(tmp_path / "agent.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock)
    try:
        sources = parse_ssh_flags(["default", f"gh={key},{key}", "other", f"s={sock}"],
                                  environ={"SSH_AUTH_SOCK": sock})
    finally:
        listener.close()
    assert sources == {"default": SSHSource("default", (sock,)),
                       "gh": SSHSource("gh", (str(key), str(key))),
                       "other": SSHSource("other", (sock,)), "s": SSHSource("s", (sock,))}
    assert sources["default"].is_socket and not sources["gh"].is_socket
    with pytest.raises(BuildError, match="SSH_AUTH_SOCK"):
        parse_ssh_flags(["default"], environ={})
    with pytest.raises(BuildError, match="given twice"):
        parse_ssh_flags([f"a={key}", f"a={key}"], environ={})
    with pytest.raises(BuildError, match="neither an agent socket"):
        parse_ssh_flags([f"a={tmp_path / 'missing'}"], environ={})


def test_agent_relay_answers_a_real_agent_request(tmp_path):
    """ssh-add -l through the relay lists what the real ssh-agent holds (oracle:
    ssh-keygen -lf on the public key)."""
    for tool in ("ssh-agent", "ssh-add", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (dev/setup installs openssh-client)")
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "relay", "-f",
                    str(key)], check=True)
    want = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True,
                          text=True, check=True).stdout.strip()
    short = Path(f"/tmp/lamina-relay-test-{os.getpid()}")
    short.mkdir()
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(short / "agent")],
                             stdout=subprocess.DEVNULL)
    relay = None
    try:
        for _ in range(500):
            if (short / "agent").exists():
                break
            time.sleep(0.01)
        env = {"PATH": os.environ["PATH"], "SSH_AUTH_SOCK": str(short / "agent")}
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True)
        relay = AgentRelay(short / "relay", str(short / "agent"), os.getuid(), os.getgid(),
                           0o640).start()
        assert (os.stat(short / "relay").st_mode & 0o7777) == 0o640
        env["SSH_AUTH_SOCK"] = str(short / "relay")
        for _ in range(3):  # several connections, one after the other
            got = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True,
                                 timeout=10)
            assert got.returncode == 0 and got.stdout.strip() == want
    finally:
        if relay is not None:
            relay.close()
        agent.kill()
        agent.wait()
        shutil.rmtree(short, ignore_errors=True)
    assert not (short / "relay").exists()
