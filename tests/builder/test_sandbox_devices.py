"""Host devices stay out of reach of a RUN (issue 7, item 2).

A RUN keeps CAP_MKNOD (images contain device nodes), so it can make a node for the
host's disk; opening it must fail. Two independent defenses, each tested alone by
switching the other off, as the two kinds of host have them:

- the device cgroup (v1 ``devices`` controller, this host): deny all, allow docker's
  list -> EPERM ("Operation not permitted");
- every mount the step sees is ``nodev`` except the single-node bind mounts of the
  minimal /dev (what a host without a device cgroup relies on) -> EACCES
  ("Permission denied").

Every probe runs inside a real RUN step of a `lamina build`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from lamina.builder.sandbox import cgrouplayout, devices
from tests.builder.buildkit import build, make_context

pytestmark = pytest.mark.root

DENIED = ("Permission denied", "Operation not permitted")


MARKER = b"lamina-host-disk-marker\n"


@pytest.fixture(scope="module")
def host_disk(tmp_path_factory):
    """(major, minor) of a real block device of this host: a loop device over a file
    that starts with MARKER (readable and writable by root without harming the host,
    where the host's own disk may be shielded by the machine)."""
    import shutil
    import subprocess

    losetup = shutil.which("losetup")
    assert losetup, "losetup (util-linux) is needed"
    backing = tmp_path_factory.mktemp("disk") / "disk.img"
    backing.write_bytes(MARKER + bytes(1024 * 1024 - len(MARKER)))
    dev = subprocess.run([losetup, "--find", "--show", str(backing)], capture_output=True,
                         text=True)
    assert dev.returncode == 0, f"cannot set up a loop device: {dev.stderr}"
    path = dev.stdout.strip()
    try:
        st = os.stat(path)
        yield os.major(st.st_rdev), os.minor(st.st_rdev)
    finally:
        subprocess.run([losetup, "--detach", path], check=False)


def _probe_script(major: int, minor: int) -> str:
    # every place a RUN can write: the overlay root, the /dev tmpfs, /dev/shm, a cache
    # mount (a host dir), a tmpfs mount, a writable bind of the context
    lines = []
    for where in ("/tmp", "/dev", "/dev/shm", "/cache", "/scratch", "/ctx"):
        node = f"{where}/disk"
        lines.append(
            f"rm -f {node}; if mknod {node} b {major} {minor}; then echo '{where} mknod: OK'; fi\n"
            f"if head -c {len(MARKER)} {node} > /tmp/got 2>/tmp/err; "
            f"then echo \"{where} read: OK $(cat /tmp/got)\"; else echo \"{where} read: $(cat /tmp/err)\"; fi\n"
            f"if (exec 3<>{node}) 2>/tmp/err; "
            f"then echo '{where} open-rw: OK'; else echo \"{where} open-rw: $(cat /tmp/err)\"; fi")
    # a char device outside the list: /dev/kmsg (1:11), opened for writing only
    lines.append("mknod /tmp/kmsg c 1 11 && if (exec 3>/tmp/kmsg) 2>/tmp/err; "
                 "then echo 'kmsg open: OK'; else echo \"kmsg open: $(cat /tmp/err)\"; fi")
    return "\n".join(lines) + "\n"


def _run_probe(build_store, tmp_path, name: str, disk: tuple[int, int]) -> dict[str, str]:
    root, _ = build_store
    dockerfile = ("FROM bb\nCOPY probe.sh /\nRUN --mount=type=cache,target=/cache,id=devprobe "
                  "--mount=type=tmpfs,target=/scratch --mount=type=bind,target=/ctx,rw "
                  "sh /probe.sh\n")
    ctx = make_context(tmp_path / name, dockerfile, {"probe.sh": _probe_script(*disk)})
    run = build(root, ctx, "--no-cache").check()
    results = {}
    for line in run.step("RUN --mount").output:
        m = re.match(r"^(\S+ [a-z-]+): (.*)$", line)
        if m:
            results[m.group(1)] = m.group(2)
    return results


PLACES = ("/tmp", "/dev", "/dev/shm", "/cache", "/scratch", "/ctx")


def _assert_all_denied(results: dict[str, str], errno_text: tuple[str, ...],
                       places: tuple[str, ...] = PLACES) -> None:
    """Every open is denied; in `places` with exactly `errno_text` (elsewhere, a
    mount that was nodev before lamina sealed anything may answer EACCES first)."""
    for where in PLACES:
        # mknod stays allowed, as docker's "c *:* m", "b *:* m"
        assert results.get(f"{where} mknod") == "OK", results
        texts = errno_text if where in places else DENIED
        for what in ("read", "open-rw"):
            got = results.get(f"{where} {what}", "")
            assert not got.startswith("OK") and any(t in got for t in texts), \
                f"{where} {what}: {got!r}"
    got = results.get("kmsg open", "")
    assert not got.startswith("OK") and any(t in got for t in errno_text), results


def test_probe_reads_the_host_disk_without_either_defense(build_store, tmp_path, monkeypatch, host_disk):
    # the probe is real: with both defenses off (today's sandbox) it reads the disk
    monkeypatch.setattr(devices, "DEVICE_CGROUP", False)
    monkeypatch.setattr(devices, "NODEV_MOUNTS", False)
    results = _run_probe(build_store, tmp_path, "open", host_disk)
    assert results["/tmp read"] == "OK " + MARKER.decode().strip(), results
    assert results["/cache read"] == "OK " + MARKER.decode().strip(), results
    assert results["/tmp open-rw"] == "OK", results


def test_host_disk_cannot_be_opened_from_a_run(build_store, tmp_path, host_disk):
    results = _run_probe(build_store, tmp_path, "default", host_disk)
    _assert_all_denied(results, DENIED)


@pytest.mark.skipif(not cgrouplayout.device_cgroup_available(),
                    reason="no cgroup v1 devices controller on this host")
def test_device_cgroup_alone_denies_the_host_disk(build_store, tmp_path, monkeypatch, host_disk):
    # a v1 host: the devices controller alone (nodev switched off) gives EPERM
    monkeypatch.setattr(devices, "NODEV_MOUNTS", False)
    results = _run_probe(build_store, tmp_path, "cgroup-only", host_disk)
    # the overlay root, /dev and a cache mount (a host dir) were never nodev before
    _assert_all_denied(results, ("Operation not permitted",), ("/tmp", "/dev", "/cache"))


def test_nodev_mounts_alone_deny_the_host_disk(build_store, tmp_path, monkeypatch, host_disk):
    # a host without a device cgroup (cgroup v2 without a BPF device filter): nodev
    # on every mount alone gives EACCES
    monkeypatch.setattr(devices, "DEVICE_CGROUP", False)
    results = _run_probe(build_store, tmp_path, "nodev-only", host_disk)
    _assert_all_denied(results, ("Permission denied",))


ALLOWED_SCRIPT = """\
head -c 16 /dev/urandom | wc -c; head -c 16 /dev/random | wc -c
head -c 8 /dev/zero | wc -c
echo hi > /dev/null && echo null: OK
(echo hi > /dev/full) 2>/tmp/e || echo "full: $(cat /tmp/e)"
(exec 3<>/dev/ptmx) && echo ptmx: OK
(exec 3</dev/tty) 2>/tmp/e || echo "tty: $(cat /tmp/e)"
mknod /tmp/mynull c 1 3 && echo mknod-null: OK
echo shm > /dev/shm/x && cat /dev/shm/x
"""


@pytest.mark.parametrize("mode", ["both", "nodev-only", "cgroup-only"])
def test_allowed_devices_still_work(build_store, tmp_path, monkeypatch, mode):
    if mode == "nodev-only":
        monkeypatch.setattr(devices, "DEVICE_CGROUP", False)
    if mode == "cgroup-only":
        if not cgrouplayout.device_cgroup_available():
            pytest.skip("no cgroup v1 devices controller on this host")
        monkeypatch.setattr(devices, "NODEV_MOUNTS", False)
    root, _ = build_store
    ctx = make_context(tmp_path / mode, "FROM bb\nCOPY allowed.sh /\nRUN sh /allowed.sh\n",
                       {"allowed.sh": ALLOWED_SCRIPT})
    out = build(root, ctx, "--no-cache").check().step("RUN sh /allowed").output
    assert out[:3] == ["16", "16", "8"], out
    assert "null: OK" in out and "ptmx: OK" in out and "mknod-null: OK" in out, out
    assert "shm" in out, out
    # opened, then refused by the driver: the open itself was allowed
    assert any(l.startswith("full:") and "No space left on device" in l for l in out), out
    assert any(l.startswith("tty:") and "No such device or address" in l for l in out), out


@pytest.mark.skipif(not cgrouplayout.device_cgroup_available(),
                    reason="no cgroup v1 devices controller on this host")
def test_a_chroots_own_allowed_nodes_open_as_in_docker(build_store, tmp_path):
    """debootstrap (and any chroot builder) makes its own /dev/null, /dev/zero... in
    the image's filesystem and uses them; docker allows it (its device cgroup allows
    those numbers wherever the node is). Where lamina's step has that cgroup, the
    image's filesystem is not nodev: the nodes open - and a node outside the list
    there is still refused, by the cgroup."""
    root, _ = build_store
    script = ("mkdir -p /target/dev && mknod -m 666 /target/dev/null c 1 3 && "
              "mknod -m 666 /target/dev/zero c 1 5 && "
              "echo x > /target/dev/null && head -c 4 /target/dev/zero | wc -c && echo chroot-null: OK; "
              "mknod /target/dev/kmsg c 1 11 && "
              "if (exec 3>/target/dev/kmsg) 2>/tmp/err; then echo 'kmsg: OK'; "
              "else echo \"kmsg: $(cat /tmp/err)\"; fi")
    ctx = make_context(tmp_path / "chroot", f"FROM bb\nRUN {script}\n")
    out = build(root, ctx, "--no-cache").check().step("RUN mkdir").output
    assert "4" in out and "chroot-null: OK" in out, out
    kmsg = next(line for line in out if line.startswith("kmsg:"))
    assert "Operation not permitted" in kmsg, out


def test_copy_cannot_read_a_device_node_of_a_stage(build_store, tmp_path, host_disk):
    # lamina's own COPY runs on the overlay too: a node a RUN made must not be read
    # through it (COPY recreates the node; it never copies the disk's bytes)
    root, _ = build_store
    major, minor = host_disk
    ctx = make_context(tmp_path / "copy", (
        f"FROM bb AS dev\nRUN mknod /disk b {major} {minor}\n"
        "FROM bb\nCOPY --from=dev /disk /copied\n"
        "RUN if [ -b /copied ]; then echo node; else wc -c < /copied; fi\n"))
    run = build(root, ctx, "--no-cache")
    if run.code == 0:
        assert run.step("RUN if").output == ["node"]
    else:
        assert any(t in run.stderr for t in DENIED), run.stderr


# --- pure parts -----------------------------------------------------------------------

def test_allow_list_is_dockers():
    import stat as st

    chr_, blk = st.S_IFCHR | 0o666, st.S_IFBLK | 0o660
    for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2),
                         (136, 0), (136, 4095)):
        assert devices.allowed(chr_, os.makedev(major, minor))
    for major, minor in ((1, 1), (1, 11), (4, 1), (10, 200), (10, 229), (7, 0)):
        assert not devices.allowed(chr_, os.makedev(major, minor))
    assert not devices.allowed(blk, os.makedev(7, 0))
    assert not devices.allowed(blk, os.makedev(1, 3))  # a block 1:3 is not /dev/null
    assert devices.allowed(st.S_IFREG | 0o644, 0)
    lines = [line for _, line in devices.v1_rules()]
    assert lines[0] == "a" and "c *:* m" in lines and "b *:* m" in lines
    assert "c 136:* rwm" in lines and not any(l.startswith("b ") and "r" in l for l in lines)


def test_mountinfo_parsing_unescapes_paths():
    text = ("36 35 98:0 /mnt1 /mnt/with\\040space rw,nosuid,nodev shared:1 - ext3 /dev/root "
            "rw,errors=continue\n"
            "41 31 0:38 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n")
    first, second = devices.parse_mountinfo(text)
    assert first.mount_point == "/mnt/with space" and first.fstype == "ext3"
    assert {"nosuid", "nodev"} <= first.options
    assert second.super_options == ("rw", "cpu", "cpuacct")
