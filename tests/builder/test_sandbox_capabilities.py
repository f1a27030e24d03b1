"""Capabilities of RUN steps (issue 7): bounding = docker's 14 default capabilities;
root gets them permitted and effective, another USER none; inheritable and ambient
are always empty — also when lamina itself was started with inheritable and ambient
CAP_SYS_ADMIN.

docker's values for comparison (`docker run --rm busybox grep Cap /proc/self/status`):
CapInh 0, CapPrm = CapEff = CapBnd = 00000000a80425fb, CapAmb 0; with `--user 1000`:
CapPrm = CapEff = 0, CapBnd = 00000000a80425fb."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.builder.buildkit import BuildRun, make_context
from tests.conftest import require_tool

DOCKER_DEFAULT = 0xA80425FB
CAP_SYS_ADMIN_BIT = 1 << 21

ROOT_EXPECTED = {"CapInh": 0, "CapPrm": DOCKER_DEFAULT, "CapEff": DOCKER_DEFAULT,
                 "CapBnd": DOCKER_DEFAULT, "CapAmb": 0}
USER_EXPECTED = {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": DOCKER_DEFAULT, "CapAmb": 0}


def _caps(lines) -> dict[str, int]:
    caps = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name.startswith("Cap"):
            caps[name.strip()] = int(value.strip(), 16)
    return caps


@pytest.mark.root
@pytest.mark.parametrize("uid, expected", [(0, ROOT_EXPECTED), (1000, USER_EXPECTED)])
def test_capability_sets_are_dockers(busybox_rootfs, run_sandbox, uid, expected):
    code, out, _ = run_sandbox([busybox_rootfs], ["grep", "^Cap", "/proc/self/status"],
                               uid=uid, gid=uid)
    assert code == 0, out
    assert _caps(out.decode().splitlines()) == expected


def _capsh(*command: str) -> subprocess.CompletedProcess:
    """`command` started with inheritable and ambient CAP_SYS_ADMIN."""
    capsh = require_tool("capsh")
    return subprocess.run([capsh, "--inh=cap_sys_admin", "--addamb=cap_sys_admin", "--",
                           "-c", 'exec "$@"', "capsh-wrapper", *command],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.root
def test_inheritable_and_ambient_capabilities_of_lamina_do_not_reach_a_run(build_store, tmp_path):
    # the precondition of the attack: the wrapper really hands lamina these sets
    probe = _capsh("grep", "^Cap", "/proc/self/status")
    assert probe.returncode == 0, probe.stderr
    outer = _caps(probe.stdout.splitlines())
    assert outer["CapInh"] & CAP_SYS_ADMIN_BIT and outer["CapAmb"] & CAP_SYS_ADMIN_BIT

    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\n"
                       "RUN echo as-root; grep ^Cap /proc/self/status\n"
                       "USER alice\n"
                       "RUN echo as-alice; grep ^Cap /proc/self/status\n")
    proc = _capsh(sys.executable, "-m", "lamina", "--root", str(root), "build", "--no-cache",
                  "--progress", "plain", str(ctx))
    run = BuildRun(proc.returncode, proc.stdout, proc.stderr).check()
    assert _caps(run.step("echo as-root").output) == ROOT_EXPECTED, proc.stderr
    assert _caps(run.step("echo as-alice").output) == USER_EXPECTED, proc.stderr
