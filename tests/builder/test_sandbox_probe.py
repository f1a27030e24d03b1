"""The docker-default picture seen from inside a real RUN step: one probe script (busybox
sh) runs in a `lamina build` and reports what it sees; each test checks one point
against docker's defaults (moby's daemon/pkg/oci/defaults.go and runc's /dev set up),
never against lamina's own tables.

Points: docker's masked paths are empty, its read-only paths refuse writes (EROFS) and
are read-only mounts, /sys is a read-only sysfs (nosuid, nodev, noexec), /dev holds
exactly docker's entries with the right device numbers, /proc is the step's own (PID 1
is lamina's init, no host process visible), the step has its own mount, PID, IPC, UTS
and network namespaces, no host path is visible, the host name is the sandbox's
default, the capability bounding set is docker's.

Seccomp, cgroups, inheritable/ambient capabilities and the keyring are being added by
other work (issue 7); their probes belong here once they land."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import tempfile
from pathlib import Path

import pytest

from lamina.builder.sandbox import sandbox
from tests.builder.buildkit import REPO, build, make_context

pytestmark = pytest.mark.root

# moby daemon/pkg/oci/defaults.go: MaskedPaths (plus one thermal_throttle dir per CPU
# that has one) and ReadonlyPaths
DOCKER_MASKED = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore",
                 "/proc/keys", "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi",
                 "/proc/timer_list", "/proc/timer_stats", "/sys/devices/virtual/powercap",
                 "/sys/firmware")
DOCKER_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# runc's default devices (the OCI runtime spec's list; console only with a terminal)
DOCKER_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
                  "urandom": (1, 9), "tty": (5, 0)}
# runc's /dev links (core only where the kernel has /proc/kcore); moby's mounts
# pts (devpts), shm (tmpfs), mqueue (mqueue)
DOCKER_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
                    "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
                    "ptmx": "pts/ptmx"}
DOCKER_DEV_DIRS = {"pts", "shm", "mqueue"}
# moby's default capability set (CapBnd bits)
DOCKER_CAPS = {0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31}

PROBE = r"""
for p in $MASKED; do
  if [ -d "$p" ]; then echo "MASKDIR $p $(ls -A "$p" | wc -l)"
  elif [ -e "$p" ]; then echo "MASKFILE $p $(cat "$p" 2>/dev/null | wc -c)"
  else echo "ABSENT $p"; fi
done
for p in $READONLY /sys; do
  # open an existing file for writing (append, no truncation: nothing is written)
  if [ -d "$p" ]; then t=$(find "$p" -type f 2>/dev/null | head -n 1); else t="$p"; fi
  if [ ! -e "$p" ]; then echo "ABSENT $p"
  elif [ -z "$t" ]; then echo "WRITE $p nofile"
  else echo "WRITE $p $( (exec 3>>"$t") 2>&1 | tr '\n' ' ')"; fi
done
for n in $(ls -A /dev); do
  if [ -L "/dev/$n" ]; then echo "DEVLINK $n $(readlink "/dev/$n")"
  elif [ -c "/dev/$n" ]; then echo "DEVCHR $n $(stat -c '%t %T' "/dev/$n")"
  elif [ -d "/dev/$n" ]; then echo "DEVDIR $n"
  else echo "DEVOTHER $n"; fi
done
for pid in $(ls /proc | grep -E '^[0-9]+$'); do echo "PID $pid"; done
echo "INIT $(tr '\0' ' ' < /proc/1/cmdline)"
echo "SELF $$"
for ns in mnt pid ipc uts net; do echo "NS $ns $(readlink /proc/self/ns/$ns)"; done
echo "HOSTNAME $(hostname)"
echo "KHOSTNAME $(cat /proc/sys/kernel/hostname)"
for p in $HOSTPATHS; do if [ -e "$p" ]; then echo "HOSTPATH $p visible"; else echo "HOSTPATH $p absent"; fi; done
grep -E '^Cap(Bnd|Eff|Prm):' /proc/self/status | tr -s '\t' ' ' | sed 's/^/STATUS /'
sed 's/^/MI /' /proc/self/mountinfo
echo "PROBE-END"
"""


@dataclasses.dataclass
class Report:
    lines: list[str]

    def rows(self, kind: str) -> list[list[str]]:
        return [l.split(" ")[1:] for l in self.lines if l.split(" ", 1)[0] == kind]

    def mounts(self) -> dict[str, tuple[str, str]]:
        """mount point -> (per-mount options, filesystem type), from mountinfo"""
        out = {}
        for fields in self.rows("MI"):
            dash = fields.index("-")
            out[fields[4]] = (fields[5], fields[dash + 1])
        return out


def _host_masked() -> tuple[str, ...]:
    return DOCKER_MASKED + tuple(sorted(glob.glob(
        "/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle")))


@pytest.fixture(scope="module")
def probe(build_store, tmp_path_factory) -> Report:
    root, _ = build_store
    work = tmp_path_factory.mktemp("probe")
    marker = tempfile.NamedTemporaryFile(prefix="lamina-probe-marker-", dir="/tmp")
    host_paths = [marker.name, str(work), str(REPO), str(root)]
    env = (f"MASKED='{' '.join(_host_masked())}' READONLY='{' '.join(DOCKER_READONLY)}' "
           f"HOSTPATHS='{' '.join(host_paths)}'")
    ctx = make_context(work / "ctx", "FROM bb\nCOPY probe.sh /probe.sh\n"
                       f"RUN {env} sh /probe.sh\n", {"probe.sh": PROBE})
    with marker:
        run = build(root, ctx, "--no-cache").check()
    lines = run.step("RUN MASKED").output
    assert lines and lines[-1] == "PROBE-END", run.stderr
    return Report(lines)


def test_masked_paths_are_empty(probe):
    seen = {row[0]: row for row in probe.rows("MASKFILE") + probe.rows("MASKDIR")}
    host_existing = [p for p in _host_masked() if os.path.exists(p)]
    assert host_existing, "no masked path exists on this kernel: the probe proves nothing"
    for path in host_existing:
        assert path in seen, f"{path} vanished instead of being masked"
    for path, row in seen.items():
        assert row[1] == "0", f"{path} shows content: {row}"
    # and one of them, empty inside, has content on the host
    assert any(os.listdir(p) if os.path.isdir(p) else Path(p).read_bytes()
               for p in host_existing)


def test_masked_dirs_are_read_only_tmpfs_and_files_the_null_device(probe):
    mounts = probe.mounts()
    for path in _host_masked():
        if os.path.isdir(path):
            opts, fstype = mounts[path]
            assert fstype == "tmpfs" and "ro" in opts.split(","), (path, opts, fstype)
        elif os.path.exists(path):
            assert path in mounts, f"{path} is not masked by a mount"


def test_read_only_paths_refuse_writes(probe):
    writes = {row[0]: " ".join(row[1:]) for row in probe.rows("WRITE")}
    mounts = probe.mounts()
    existing = [p for p in DOCKER_READONLY if os.path.exists(p)]
    assert "/proc/sys" in existing
    for path in existing:
        assert "ro" in mounts[path][0].split(","), (path, mounts[path])
        if writes[path] != "nofile":  # an empty dir has no file to open
            assert "Read-only file system" in writes[path], (path, writes[path])
    assert "Read-only file system" in writes["/proc/sys"]


def test_sys_is_a_read_only_sysfs(probe):
    writes = {row[0]: " ".join(row[1:]) for row in probe.rows("WRITE")}
    assert "Read-only file system" in writes["/sys"]
    opts, fstype = probe.mounts()["/sys"]
    assert fstype == "sysfs"
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(opts.split(","))


def test_dev_holds_exactly_dockers_entries(probe):
    chars = {name: (int(major, 16), int(minor, 16)) for name, major, minor in probe.rows("DEVCHR")}
    links = {name: target for name, target in probe.rows("DEVLINK")}
    dirs = {row[0] for row in probe.rows("DEVDIR")}
    expected_links = dict(DOCKER_DEV_LINKS)
    if os.path.exists("/proc/kcore"):
        expected_links["core"] = "/proc/kcore"
    assert chars == DOCKER_DEVICES
    assert links == expected_links
    assert dirs == DOCKER_DEV_DIRS
    assert probe.rows("DEVOTHER") == []
    mounts = probe.mounts()
    assert mounts["/dev/pts"][1] == "devpts" and mounts["/dev/shm"][1] == "tmpfs"


def test_proc_is_the_steps_own(probe):
    (init,) = probe.rows("INIT")
    assert " ".join(init).startswith(sandbox.INIT_TITLE.decode())
    pids = {int(row[0]) for row in probe.rows("PID")}
    (self_pid,) = probe.rows("SELF")
    assert 1 in pids and int(self_pid[0]) in pids
    assert len(pids) < 10, pids  # init, the shell, its few children: no host process
    opts, fstype = probe.mounts()["/proc"]
    assert fstype == "proc" and {"nosuid", "nodev", "noexec"} <= set(opts.split(","))


def test_namespaces_are_the_steps_own(probe):
    for kind, ident in probe.rows("NS"):
        assert ident != os.readlink(f"/proc/self/ns/{kind}"), f"{kind} namespace is the host's"


def test_no_host_path_is_visible(probe):
    rows = probe.rows("HOSTPATH")
    assert len(rows) == 4
    assert all(state == "absent" for _, state in rows), rows


def test_hostname_is_the_sandbox_default(probe):
    default = {f.name: f.default for f in dataclasses.fields(sandbox.SandboxSpec)}["hostname"]
    assert probe.rows("HOSTNAME") == [[default]]
    assert probe.rows("KHOSTNAME") == [[default]]


def test_capability_bounding_set_is_dockers(probe):
    status = {row[0].rstrip(":"): int(row[1], 16) for row in probe.rows("STATUS")}
    bits = {n for n in range(64) if status["CapBnd"] >> n & 1}
    assert bits == DOCKER_CAPS
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"]


def test_probe_sees_no_lamina_paths_in_its_root(probe):
    # the overlay is the root; nothing of the host's tree is mounted below it
    for point in probe.mounts():
        assert not re.match(r"^/(work|var/lib/lamina|tmp/pytest)", point), point


def test_sys_stays_read_only_where_sysfs_cannot_be_mounted(busybox_rootfs, run_sandbox,
                                                           monkeypatch):
    # some nested hosts refuse a fresh sysfs (EPERM): the empty /sys the step then gets
    # must still be read-only, or its writes would land in the layer
    from lamina.builder.errors import SandboxError
    from lamina.builder.sandbox import linux

    real_mount = linux.mount

    def refusing_sysfs(source, target, fstype=None, flags=0, data=None):
        if fstype == "sysfs":
            exc = SandboxError("mount sysfs: Operation not permitted (EPERM)")
            exc.errno = 1
            raise exc
        return real_mount(source, target, fstype, flags, data)

    monkeypatch.setattr(linux, "mount", refusing_sysfs)  # the forked sandbox inherits it
    code, out, upper = run_sandbox([busybox_rootfs], ["sh", "-c", "touch /sys/x; ls -A /sys | wc -l"])
    assert b"Read-only file system" in out
    assert out.split()[-1] == b"0"
    assert not (upper / "sys" / "x").exists()
