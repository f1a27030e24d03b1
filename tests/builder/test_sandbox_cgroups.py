"""Every RUN step in its own cgroup (issue 7): limits applied from the build's flags
(docker's names), every process accounted and killed, the cgroup removed after the
step, stale ones of a killed lamina removed by the next one. Probed from inside real
RUN steps; the v1 path on this host, the v2 interface on its unified hierarchy."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lamina.builder.sandbox import cgrouplayout, cgroups, sandbox
from lamina.builder.errors import SandboxError
from tests.builder.buildkit import build, lamina_argv, make_context, python_env
from tests.builder.conftest import DEFAULT_ENV
from tests.conftest import IN_CI

pytestmark = pytest.mark.root

LAYOUT = cgrouplayout.layout()
V1 = LAYOUT.version == "v1"
# CI machines are like this one (cgroup v1 hybrid: v1 controllers and a v2 unified
# hierarchy): there these tests run, and fail rather than skip if a hierarchy is missing


def _step_dirs(controller: str) -> list[Path]:
    base = LAYOUT.v1[controller] / cgrouplayout.DIR_NAME
    try:
        return [p for p in base.iterdir() if p.is_dir()
                and p.name.startswith(f"{os.getpid()}-")]
    except FileNotFoundError:
        return []


def _run_watching(lower, step_dirs, argv, limits, inspect):
    """sandbox.run with `inspect()` called from the output callback once the step
    prints READY (the step is then running in its cgroup)."""
    upper, work = step_dirs()
    spec = sandbox.SandboxSpec(lower_dirs=(lower,), upper_dir=upper, work_dir=work,
                               argv=tuple(argv), env=DEFAULT_ENV, limits=limits)
    seen: dict = {}
    out = bytearray()

    def on_output(data: bytes) -> None:
        out.extend(data)
        if b"READY" in out and "result" not in seen:
            seen["result"] = inspect()

    code = sandbox.run(spec, on_output)
    return code, bytes(out), seen.get("result")


# --- pure: what is written where ----------------------------------------------------

def test_settings_follow_docker_semantics():
    mib = 1 << 20
    v1 = cgroups.v1_settings(cgroups.Limits(memory=64 * mib, pids=100, cpu_shares=512,
                                            cpu_period=50000, cpu_quota=25000,
                                            cpuset_cpus="0"))
    assert v1["pids"] == (("pids.max", "100"),)
    # docker: --memory-swap unset = twice --memory (memory plus as much swap)
    assert v1["memory"] == (("memory.limit_in_bytes", str(64 * mib)),
                            ("memory.memsw.limit_in_bytes", str(128 * mib)))
    assert v1["cpu"] == (("cpu.shares", "512"), ("cpu.cfs_period_us", "50000"),
                         ("cpu.cfs_quota_us", "25000"))
    assert v1["cpuset"] == (("cpuset.cpus", "0"),)
    assert v1["devices"][0] == ("devices.deny", "a")
    assert ("devices.allow", "c 136:* rwm") in v1["devices"]
    assert ("devices.allow", "b *:* m") in v1["devices"]
    unlimited = cgroups.v1_settings(cgroups.Limits(memory=64 * mib, memory_swap=-1, pids=-1))
    assert unlimited["pids"] == (("pids.max", "max"),)
    assert unlimited["memory"] == (("memory.limit_in_bytes", str(64 * mib)),)
    assert cgroups.v1_settings(cgroups.Limits())["pids"] == (
        ("pids.max", str(cgroups.DEFAULT_PIDS_LIMIT)),)

    v2 = dict(cgroups.v2_settings(cgroups.Limits(memory=64 * mib, memory_swap=96 * mib,
                                                 cpu_shares=1024, cpu_quota=50000)))
    # v2 swap is swap alone; runc's shares->weight: 1024 -> 39; cpu.max "quota period"
    assert v2 == {"pids.max": str(cgroups.DEFAULT_PIDS_LIMIT), "memory.max": str(64 * mib),
                  "memory.swap.max": str(32 * mib), "cpu.weight": "39",
                  "cpu.max": "50000 100000"}
    assert cgroups.shares_to_weight(2) == 1 and cgroups.shares_to_weight(262144) == 10000


def test_invalid_limits_are_user_errors():
    for limits in (cgroups.Limits(memory=1024), cgroups.Limits(memory_swap=1 << 30),
                   cgroups.Limits(memory=64 << 20, memory_swap=32 << 20),
                   cgroups.Limits(cpu_shares=1), cgroups.Limits(cpuset_cpus="a-b")):
        with pytest.raises(SandboxError):
            limits.validate()


# --- v1 (this host) -----------------------------------------------------------------

@pytest.mark.skipif(not V1 and not IN_CI, reason="needs cgroup v1 controllers (this project's CI host)")
def test_step_runs_in_its_own_cgroup_with_the_limits(busybox_rootfs, step_dirs):
    limits = cgroups.Limits(memory=64 << 20, pids=77)

    def inspect():
        found = {}
        for controller in ("pids", "memory", "devices", "freezer"):
            (d,) = _step_dirs(controller)
            found[controller] = d
        # the step's shell may be forking meanwhile: read the hierarchies until two
        # reads in a row agree (each controller's file is read at another instant)
        for _ in range(100):
            procs = sorted((found["pids"] / "cgroup.procs").read_text().split())
            same = all(sorted((d / "cgroup.procs").read_text().split()) == procs
                       for d in found.values())
            if same:
                break
            time.sleep(0.01)
        return {"dirs": found, "procs": len(procs),
                "pids.max": (found["pids"] / "pids.max").read_text().strip(),
                "memory": (found["memory"] / "memory.limit_in_bytes").read_text().strip(),
                "devices": (found["devices"] / "devices.list").read_text().split("\n"),
                "same_procs": same}

    code, out, seen = _run_watching(
        busybox_rootfs, step_dirs,
        ["sh", "-c", "sleep 30 & echo READY; cat /proc/self/cgroup; sleep 0.5"],
        limits, inspect)
    assert code == 0, out
    assert seen is not None, out
    # C1, the namespace's init, sh, the background sleep
    assert seen["procs"] >= 4 and seen["same_procs"], seen
    assert seen["pids.max"] == "77" and seen["memory"] == str(64 << 20)
    assert "c 1:3 rwm" in seen["devices"] and "b *:* m" in seen["devices"]
    assert not any(l.startswith("a ") for l in seen["devices"])
    # the step sees its own cgroup as the root of each hierarchy (cgroup namespace)
    lines = [l for l in out.decode().splitlines() if ":pids:" in l]
    assert lines and lines[0].endswith(":pids:/"), out
    # afterwards: every process killed (the background sleep too), every dir removed
    for d in seen["dirs"].values():
        assert not d.exists(), d


@pytest.mark.skipif(not V1 and not IN_CI, reason="needs cgroup v1 controllers (this project's CI host)")
def test_step_reads_its_limits_in_sys_fs_cgroup(busybox_rootfs, step_dirs):
    """BuildKit has runc mount /sys/fs/cgroup in every RUN (executor/oci withCGroup:
    ro,nosuid,noexec,nodev; runc's v1 layout: a tmpfs with each hierarchy read-only in
    a dir of its name): a JVM or a Go runtime in a RUN reads its memory and pids limits
    there. Here the step's own cgroup is each hierarchy's root (cgroup namespace)."""
    upper, work = step_dirs()
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; "
              "grep -q \"^$$ *$\" /sys/fs/cgroup/pids/cgroup.procs && echo own-root; "
              "awk '$5 ~ \"^/sys/fs/cgroup\" { for (i = 7; $i != \"-\"; i++); "
              "print $5, $6, $(i + 1) }' /proc/self/mountinfo | sed 's/,relatime//' | sort; "
              "touch /sys/fs/cgroup/memory/x 2>/dev/null || echo hierarchy-read-only")
    spec = sandbox.SandboxSpec(lower_dirs=(busybox_rootfs,), upper_dir=upper, work_dir=work,
                               argv=("sh", "-c", script), env=DEFAULT_ENV,
                               limits=cgroups.Limits(memory=48 << 20, pids=66))
    out = bytearray()
    assert sandbox.run(spec, out.extend) == 0, out
    lines = out.decode().splitlines()
    assert lines[:2] == [str(48 << 20), "66"], lines
    assert "/sys/fs/cgroup rw,nosuid,nodev,noexec tmpfs" in lines, lines
    for controller in ("memory", "pids", "cpu", "devices"):
        assert f"/sys/fs/cgroup/{controller} ro,nosuid,nodev,noexec cgroup" in lines, lines
    assert lines[-1] == "hierarchy-read-only" and not list(upper.iterdir()), lines


@pytest.mark.skipif(not V1 and not IN_CI, reason="needs cgroup v1 controllers")
def test_fork_bomb_is_stopped_by_the_pids_limit(build_store, tmp_path):
    root, _ = build_store
    # busybox sh takes no ":" as a function name: the same bomb, named
    ctx = make_context(tmp_path / "bomb", "FROM bb\nRUN bomb(){ bomb|bomb& }; bomb; sleep 1; "
                       "while :; do sleep 1000 & done\n")
    t0 = time.monotonic()
    run = build(root, ctx, "--no-cache", "--pids-limit", "50")
    assert time.monotonic() - t0 < 60
    assert run.code == 1, run.stderr
    assert "can't fork: Resource temporarily unavailable" in run.stderr
    assert "did not complete successfully" in run.stderr
    # nothing of the step survives on the host, no step cgroup is left
    assert not _procs_named(b"sleep\x001000")
    assert _step_dirs("pids") == []


def _procs_named(cmdline: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(cmdline):
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not V1 and not IN_CI, reason="needs cgroup v1 controllers")
def test_memory_hog_is_killed_with_a_clear_message(build_store, tmp_path):
    root, _ = build_store
    # dd's one 200 MiB buffer, filled from /dev/zero: 200 MiB resident
    ctx = make_context(tmp_path / "hog", "FROM bb\n"
                       "RUN dd if=/dev/zero of=/dev/null bs=200M count=1\n")
    run = build(root, ctx, "--no-cache", "--memory", "32m")
    assert run.code == 1, run.stderr
    assert "Dockerfile:2: RUN was killed: out of memory (limit 32MiB)" in run.stderr
    # the same step without the limit succeeds: the limit did it
    ok = build(root, ctx, "--no-cache", "--memory", "1g")
    assert ok.code == 0, ok.stderr


def test_limit_without_its_controller_is_an_error(build_store, tmp_path, monkeypatch):
    root, _ = build_store
    monkeypatch.setattr(cgrouplayout, "VERSION", "off")
    ctx = make_context(tmp_path / "off", "FROM bb\nRUN echo ran-without-cgroups\n")
    run = build(root, ctx, "--no-cache", "--memory", "64m", "--pids-limit", "10")
    assert run.code == 1
    assert "cannot apply --memory, --pids-limit: cgroups are switched off" in run.stderr
    # without a limit asked for: the build runs, and says once what it cannot do
    run = build(root, ctx, "--no-cache").check()
    assert run.stderr.count("no pids cgroup controller here") == 1
    assert "ran-without-cgroups" in run.stderr


@pytest.mark.skipif(not V1 and not IN_CI, reason="needs cgroup v1 controllers")
def test_cpu_limits_are_applied(busybox_rootfs, step_dirs):
    limits = cgroups.Limits(cpu_shares=512, cpu_period=50000, cpu_quota=25000,
                            cpuset_cpus="0")

    def inspect():
        (cpu,) = _step_dirs("cpu")
        (cpuset,) = _step_dirs("cpuset")
        return ((cpu / "cpu.shares").read_text().strip(),
                (cpu / "cpu.cfs_quota_us").read_text().strip(),
                (cpuset / "cpuset.cpus").read_text().strip())

    code, out, seen = _run_watching(busybox_rootfs, step_dirs,
                                    ["sh", "-c", "echo READY; grep Cpus_allowed_list "
                                     "/proc/self/status; sleep 0.3"], limits, inspect)
    assert code == 0, out
    assert seen == ("512", "25000", "0")
    assert b"Cpus_allowed_list:\t0\n" in out


@pytest.mark.skipif(not V1 and not IN_CI, reason="needs cgroup v1 controllers")
def test_stale_cgroups_of_a_killed_lamina_are_removed(build_store, tmp_path):
    # a lamina SIGKILLed mid-step leaves its step cgroup; the next lamina removes it
    root, _ = build_store
    ctx = make_context(tmp_path / "stale", "FROM bb\nRUN echo started; sleep 60\n")
    proc = subprocess.Popen(lamina_argv(root, "build", "--progress", "plain", "--no-cache",
                                        str(ctx)),
                            env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = LAYOUT.v1["pids"] / cgrouplayout.DIR_NAME
    deadline = time.monotonic() + 60
    left = []
    while time.monotonic() < deadline and not left:
        left = [p for p in base.glob(f"{proc.pid}-*") if p.is_dir()] if base.exists() else []
        time.sleep(0.05)
    if not left:
        proc.kill()
        pytest.fail("the build never created its step cgroup: "
                    + proc.communicate()[1].decode()[-2000:])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    # the step's processes die with lamina (parent-death signal), which takes a moment
    # on a loaded machine: a cgroup still holding them cannot be removed yet
    procs = left[0] / "cgroup.procs"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and procs.exists() and procs.read_text().strip():
        time.sleep(0.05)
    assert left[0].exists()  # nobody removed it: lamina was killed
    assert not procs.read_text().strip(), "the killed lamina's step processes lived on"
    removed = cgroups.sweep_stale()
    assert left[0] in removed and not left[0].exists()


# --- the v2 interface, on this host's unified hierarchy ------------------------------

@pytest.mark.skipif(LAYOUT.v2 is None and not IN_CI, reason="no cgroup v2 hierarchy")
def test_v2_step_cgroup_holds_and_kills_every_process(busybox_rootfs, step_dirs, monkeypatch):
    monkeypatch.setattr(cgrouplayout, "VERSION", "v2")
    lay = cgrouplayout.layout()
    bases = {p / cgrouplayout.DIR_NAME for p in (lay.v2, cgrouplayout.v2_root(lay)) if p is not None}

    def inspect():
        found = [p for b in bases if b.exists() for p in b.glob(f"{os.getpid()}-*")]
        assert len(found) == 1, found
        return found[0], len((found[0] / "cgroup.procs").read_text().split())

    limits = cgroups.Limits(pids=-1)  # no v2 controller here: membership and kill only
    code, out, seen = _run_watching(busybox_rootfs, step_dirs,
                                    ["sh", "-c", "sleep 30 & echo READY; sleep 0.3"],
                                    limits, inspect)
    assert code == 0, out
    step, procs = seen
    assert procs >= 4
    assert not step.exists()


def test_cli_flags_parse_as_docker(build_store, tmp_path):
    from lamina.builder.cli.resources import parse_limits

    limits = parse_limits({"memory": "512m", "memory_swap": "-1", "pids_limit": -1,
                           "cpuset_cpus": "0-1"})
    # docker's RAMInBytes: binary units
    assert limits.memory == 512 * 1024 * 1024 and limits.memory_swap == -1
    assert limits.pids_max() is None and limits.cpuset_cpus == "0-1"
    assert parse_limits({}).pids_max() == cgroups.DEFAULT_PIDS_LIMIT
    root, _ = build_store
    ctx = make_context(tmp_path / "flags", "FROM bb\nRUN true\n")
    run = build(root, ctx, "--memory", "lots")
    assert run.code != 0 and "invalid --memory 'lots'" in run.stderr
    run = build(root, ctx, "--memory", "64m", "--memory-swap", "32m")
    assert run.code != 0 and "--memory-swap must be at least --memory" in run.stderr
