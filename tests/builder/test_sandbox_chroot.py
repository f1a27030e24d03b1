"""lamina run inside a plain chroot (as some CI and packaging systems do): its / is a
directory of some mount, not a mount point. A build with RUN, COPY and WORKDIR must
work there, and no mount of the build may show up in the namespace lamina was
started from, even when the mount holding the chroot is shared (systemd's default)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builder.buildkit import REPO, make_context

pytestmark = pytest.mark.root


def _chroot_script(base: Path, binds: list[str], argv: list[str]) -> str:
    """A shell script for a new mount namespace: a shared tmpfs at base/t, the chroot
    dir base/t/root on it (NOT a mount point), the host dirs lamina needs bound in, then
    the command chrooted there; the mount table of this namespace under base/t is
    written before and after (base/before, base/after)."""
    t, root = base / "t", base / "t" / "root"
    lines = ["set -e", f"T={shlex.quote(str(t))}", f"R={shlex.quote(str(root))}",
             'mkdir -p "$T"', 'mount -t tmpfs -o mode=755 lamina-chroot-test "$T"',
             'mount --make-shared "$T"', 'mkdir -p "$R/dev" "$R/proc" "$R/tmp"',
             'chmod 1777 "$R/tmp"']
    for path in binds:
        q = shlex.quote(path)
        lines += [f'mkdir -p "$R"{q}', f'mount --rbind {q} "$R"{q}']
    for name in ("bin", "lib", "lib64", "sbin"):
        host = Path("/") / name
        if host.is_symlink():
            lines.append(f'ln -s {shlex.quote(os.readlink(host))} "$R/{name}"')
        elif host.is_dir():
            lines += [f'mkdir -p "$R/{name}"', f'mount --rbind /{name} "$R/{name}"']
    lines += ['mount --rbind /dev "$R/dev"', 'mount -t proc proc "$R/proc"',
              # the chroot dir itself must not be a mount point
              'if mountpoint -q "$R"; then echo "chroot dir is a mount point" >&2; exit 99; fi',
              f'cut -d" " -f5 /proc/self/mountinfo | sort > {shlex.quote(str(base / "before"))}',
              'set +e',
              f'chroot "$R" {" ".join(shlex.quote(a) for a in argv)}',
              'rc=$?',
              f'cut -d" " -f5 /proc/self/mountinfo | sort > {shlex.quote(str(base / "after"))}',
              'exit $rc']
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("network", ["none", "default"])
def test_build_works_when_root_is_not_a_mount_point(build_store, tmp_path, network):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", (
        "FROM bb\n"
        "RUN echo ran-in-chroot > /ran && cat /proc/1/cmdline | tr '\\0' ' ' > /init\n"
        "WORKDIR /app\n"
        "COPY f /app/f\n"
        "RUN cat /app/f > /app/g\n"), {"f": "copied\n"})
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "lamina", "--root", str(root), "build", "--progress",
            "plain", "--no-cache", "--network", network, "--output", f"type=local,dest={out}", str(ctx)]
    binds = sorted({"/usr", "/etc", str(Path(sys.base_prefix).resolve()), str(REPO),
                    str(root), str(tmp_path)})
    script = _chroot_script(tmp_path, binds, argv)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 99, proc.stderr
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Invalid argument" not in proc.stderr
    assert (out / "ran").read_text() == "ran-in-chroot\n"
    assert (out / "app" / "g").read_text() == "copied\n"
    assert (out / "init").read_text().startswith("lamina-init")
    # nothing the build mounted propagated into the namespace it was started from
    # (the tmpfs holding the chroot dir is shared there)
    # (only mount points under this test's tree: other processes of the machine may
    # mount and unmount elsewhere meanwhile)
    mine = str(tmp_path)
    before = [m for m in (tmp_path / "before").read_text().splitlines() if m.startswith(mine)]
    after = [m for m in (tmp_path / "after").read_text().splitlines() if m.startswith(mine)]
    assert after == before


def test_a_chroot_that_cannot_be_handled_fails_in_one_sentence(busybox_rootfs, run_sandbox,
                                                               monkeypatch):
    # / not a mount point (EINVAL) and no way out of the chroot (chroot(2) refused):
    # one sentence naming the cause, not a raw mount error
    from lamina.builder.errors import SandboxError
    from lamina.builder.sandbox import linux

    real_mount = linux.mount

    def not_a_mount_point(source, target, fstype=None, flags=0, data=None):
        if target == "/" and flags & linux.MS_PRIVATE:
            exc = SandboxError("mount propagation/remount on / : Invalid argument (EINVAL)")
            exc.errno = 22
            raise exc
        return real_mount(source, target, fstype, flags, data)

    def no_chroot(path):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(linux, "mount", not_a_mount_point)  # the forked sandbox inherits it
    monkeypatch.setattr(os, "chroot", no_chroot)
    with pytest.raises(SandboxError) as err:
        run_sandbox([busybox_rootfs], ["true"])
    message = str(err.value)
    assert message.startswith("lamina runs in a chroot (its / is not a mount point) and could not")
    assert "\n" not in message and "Operation not permitted" in message
