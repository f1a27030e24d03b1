"""The seccomp filter of RUN steps, probed from inside real steps (issue 7), and the
policy data it is compiled from.

Expected results are docker's: its default profile (moby profiles/seccomp/default.json)
denies with EPERM what it does not allow, answers clone3 with ENOSYS, allows clone
without namespace flags, a few personality values, sockets but AF_ALG and AF_VSOCK,
and gives the CAP_SYS_ADMIN group (mount, unshare, setns, bpf, perf_event_open...)
only to containers holding CAP_SYS_ADMIN."""

from __future__ import annotations

import errno
import re

import pytest

from lamina.builder.sandbox import seccomp
from lamina.builder.sandbox.linux import DEFAULT_CAPABILITIES
from tests.builder.sandboxprobe import parse, probe_layer  # noqa: F401 - fixture

CAP_SYS_ADMIN = 21
CAP_SYS_PTRACE = 19


def _status(run_sandbox, lowers, **kw) -> dict[str, str]:
    code, out, _ = run_sandbox(lowers, ["cat", "/proc/self/status"], **kw)
    assert code == 0, out
    return dict(line.split(":\t", 1) for line in out.decode().splitlines() if ":\t" in line)


@pytest.mark.root
@pytest.mark.parametrize("uid", [0, 1000])
def test_every_step_runs_under_a_seccomp_filter_without_no_new_privs(busybox_rootfs, run_sandbox, uid):
    status = _status(run_sandbox, [busybox_rootfs], uid=uid, gid=uid)
    assert status["Seccomp"].strip() == "2"
    assert status["NoNewPrivs"].strip() == "0"  # docker leaves it off: setuid works


DENIED_BY_DOCKER = ("keyctl", "add_key", "request_key", "perf_event_open", "bpf", "userfaultfd",
                    "io_uring_setup", "clone_newuser", "unshare_newuser",
                    "personality_no_randomize", "socket_vsock", "socket_alg")


@pytest.mark.root
@pytest.mark.parametrize("uid", [0, 1000])
def test_syscalls_docker_denies_fail_with_eperm(busybox_rootfs, probe_layer, run_sandbox, uid):
    code, out, _ = run_sandbox([probe_layer, busybox_rootfs], ["/probe", *DENIED_BY_DOCKER],
                               uid=uid, gid=uid)
    assert code == 0, out
    results = parse(out)
    assert results == {name: errno.EPERM for name in DENIED_BY_DOCKER}, out.decode()


@pytest.mark.root
def test_clone3_is_not_implemented_and_libc_falls_back(busybox_rootfs, probe_layer, run_sandbox):
    code, out, _ = run_sandbox([probe_layer, busybox_rootfs],
                               ["/probe", "clone3", "clone", "thread"])
    assert code == 0, out
    assert parse(out) == {"clone3": errno.ENOSYS, "clone": "ok", "thread": "ok"}, out.decode()


@pytest.mark.root
def test_what_docker_allows_still_works(busybox_rootfs, probe_layer, run_sandbox):
    code, out, _ = run_sandbox([probe_layer, busybox_rootfs],
                               ["/probe", "personality_query", "personality_linux32",
                                "socket_unix", "ids"])
    assert code == 0, out
    assert parse(out) == {"personality_query": "ok", "personality_linux32": "ok",
                          "socket_unix": "ok"}, out.decode()
    script = ("set -e; mkdir /d; echo hi > /d/f; chmod 640 /d/f; chown 1000:50 /d/f; "
              "ln -s f /d/l; mv /d/l /d/l2; mknod /d/null c 1 3; mkfifo /d/fifo; "
              "ls -ln /d | sort; chroot / true; echo done")
    code, out, upper = run_sandbox([busybox_rootfs], ["sh", "-c", script])
    assert code == 0, out
    text = out.decode()
    assert re.search(r"^-rw-r----- +1 1000 +50 .* f$", text, re.M), text
    assert re.search(r"^crw-r--r-- +1 0 +0 +1, +3 .* null$", text, re.M), text
    assert text.rstrip().endswith("done")
    assert (upper / "d" / "null").is_char_device()


@pytest.mark.root
@pytest.mark.parametrize("flags", ["-U", "-U -m", "-m", "-n", "-p -f"])
def test_unshare_of_new_namespaces_is_denied(busybox_rootfs, run_sandbox, flags):
    code, out, _ = run_sandbox([busybox_rootfs],
                               ["sh", "-c", f"unshare {flags} true; echo status=$?"])
    assert code == 0, out
    assert "status=0" not in out.decode() and "Operation not permitted" in out.decode(), out


@pytest.mark.root
def test_mount_is_denied_even_inside_a_new_user_namespace(busybox_rootfs, run_sandbox):
    script = "unshare -Urm sh -c 'mount -t tmpfs none /tmp && echo mounted'; mount -t tmpfs none /tmp; echo end"
    code, out, _ = run_sandbox([busybox_rootfs], ["sh", "-c", script])
    assert code == 0, out
    assert b"mounted" not in out, out
    assert b"Operation not permitted" in out and b"mount: permission denied" in out, out


@pytest.mark.root
def test_setuid_programs_of_the_image_still_raise_privileges(busybox_rootfs, probe_layer,
                                                           run_sandbox, tmp_path):
    # no_new_privs stays off (as docker): a setuid-root program run by USER alice
    # becomes root, as in `docker build` (su, sudo, ping in images rely on it)
    code, out, upper = run_sandbox([probe_layer, busybox_rootfs],
                                   ["sh", "-c", "cp /probe /suid-probe && chmod 4755 /suid-probe"])
    assert code == 0, out
    code, out, _ = run_sandbox([upper, probe_layer, busybox_rootfs],
                               ["/suid-probe", "ids"], uid=1000, gid=1000)
    assert code == 0, out
    assert b"ids uid=1000 euid=0" in out, out


# --- the policy data (no root needed) ---------------------------------------------

def _allowed(rules, name):
    return [r for r in rules if r.syscall == name and r.action == "allow"]


def test_policy_never_allows_what_docker_keeps_from_a_build():
    profile = seccomp.load_profile()
    rules = seccomp.policy_rules(DEFAULT_CAPABILITIES, "x86_64", "6.1.0")
    for name in profile["never_allowed_by_default"]["syscalls"]:
        assert not _allowed(rules, name), name
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl"):
        assert not _allowed(seccomp.policy_rules(frozenset(range(41)), "x86_64", "6.1.0"), name)


def test_policy_conditions_match_dockers():
    rules = seccomp.policy_rules(DEFAULT_CAPABILITIES, "x86_64", "6.1.0")
    (clone,) = _allowed(rules, "clone")
    assert clone.conditions == (seccomp.Condition(0, "masked==", 0, 0x7E020000),)
    assert [r.action for r in rules if r.syscall == "clone3"] == ["ENOSYS"]
    assert sorted(r.conditions[0].value for r in _allowed(rules, "personality")) == \
        [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert {(c.op, c.value) for r in _allowed(rules, "socket") for c in r.conditions} == \
        {("<", 38), ("==", 39), (">", 40)}
    assert _allowed(rules, "chroot") and _allowed(rules, "arch_prctl")  # CAP_SYS_CHROOT, x86_64
    assert _allowed(rules, "ptrace")  # unconditional from kernel 4.8 on


def test_capability_groups_follow_the_steps_capabilities():
    admin = seccomp.policy_rules(DEFAULT_CAPABILITIES | {CAP_SYS_ADMIN}, "x86_64", "6.1.0")
    for name in ("mount", "umount2", "unshare", "setns", "clone3"):
        assert _allowed(admin, name), name
    (clone,) = _allowed(admin, "clone")
    assert clone.conditions == ()
    old = seccomp.policy_rules(DEFAULT_CAPABILITIES, "x86_64", "4.4.0")
    assert not _allowed(old, "ptrace")
    assert _allowed(seccomp.policy_rules(DEFAULT_CAPABILITIES | {CAP_SYS_PTRACE}, "x86_64", "4.4.0"),
                    "ptrace")
    arm = seccomp.policy_rules(DEFAULT_CAPABILITIES, "aarch64", "6.1.0")
    assert not _allowed(arm, "arch_prctl") and _allowed(arm, "set_tls")
    assert seccomp.architectures("aarch64") == ("aarch64", "arm")
    assert seccomp.architectures("x86_64") == ("x86_64", "x86", "x32")


def test_compiled_program_is_classic_bpf_of_sane_size():
    program = seccomp.filter_program()
    assert len(program) % 8 == 0 and 100 < len(program) // 8 <= 4096
    assert seccomp.filter_program() is program  # compiled once per process
