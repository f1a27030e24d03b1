"""The RUN sandbox: isolation, output, exit status, the upper dir as the layer, RUN
--mount, cleanup of processes and mounts on success, failure and interruption."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from lamina.builder.sandbox import sandbox
from lamina.builder.errors import SandboxError
from tests.builder.conftest import DEFAULT_ENV

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


def _sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def _procs_with_cmdline(needle: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if needle in cmd:
            found.append(int(entry))
    return found


def _host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _tree(upper: Path) -> list[str]:
    return sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))


# --- output, exit status, environment -------------------------------------------

def test_output_and_exit_codes(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], ["echo", "hello world"])
    assert (code, out) == (0, b"hello world\n")
    code, out, _ = run_sandbox([busybox_rootfs], _sh("echo out; echo err >&2; exit 3"))
    assert code == 3
    assert out.splitlines() == [b"out", b"err"]  # stderr merged into the same stream
    code, _, _ = run_sandbox([busybox_rootfs], _sh("kill -9 $$"))
    assert code == 128 + 9


def test_stdin_is_dev_null(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], _sh("wc -c; readlink /proc/self/fd/0"))
    assert code == 0
    assert out.split() == [b"0", b"/dev/null"]


def test_env_is_exactly_the_given_one(busybox_rootfs, run_sandbox):
    env = (("PATH", "/usr/bin:/bin"), ("FOO", "bar baz"), ("EMPTY", ""), ("X", "a=b"))
    code, out, _ = run_sandbox([busybox_rootfs], ["env"], env=env)
    assert code == 0
    assert sorted(out.decode().splitlines()) == sorted(f"{k}={v}" for k, v in env)


def test_cwd(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], ["pwd"], cwd="/home/alice")
    assert (code, out) == (0, b"/home/alice\n")


def test_missing_cwd_is_made_as_buildkit(busybox_rootfs, run_sandbox):
    """A missing working dir is made 0755, the dirs made owned by the step's user
    (BuildKit's executor: MkdirAllAndChown before runc starts the step)."""
    code, out, _ = run_sandbox([busybox_rootfs], _sh("pwd; stat -c '%a %u:%g' /home /home/new /home/new/deep"),
                               cwd="/home/new/deep", uid=1000, gid=1001)
    assert (code, out) == (0, b"/home/new/deep\n755 0:0\n755 1000:1001\n755 1000:1001\n")


def test_unmakeable_cwd_is_a_clear_error(busybox_rootfs, run_sandbox):
    with pytest.raises(SandboxError, match="working directory /etc/passwd/x"):
        run_sandbox([busybox_rootfs], ["pwd"], cwd="/etc/passwd/x")


def test_missing_executable_is_a_clear_error(busybox_rootfs, run_sandbox):
    with pytest.raises(SandboxError, match="cannot exec 'no-such-tool'"):
        run_sandbox([busybox_rootfs], ["no-such-tool"])


def test_user_ids_and_groups(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], _sh("id -u; id -g; id -G; touch /tmp/f; "
                                                     "stat -c %u:%g /tmp/f"),
                               uid=1000, gid=1000, groups=(10, 50))
    assert code == 0
    uid, gid, groups, owner = out.decode().splitlines()
    assert (uid, gid) == ("1000", "1000")
    assert set(groups.split()) == {"1000", "10", "50"}
    assert owner == "1000:1000"


def test_non_root_user_cannot_write_root_owned_dirs(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], _sh("touch /etc/x"), uid=1000, gid=1000)
    assert code != 0
    assert b"Permission denied" in out


def test_capabilities_are_dockers_default_set(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], _sh("grep -E '^Cap(Bnd|Eff)' /proc/self/status"))
    assert code == 0
    caps = dict(line.split(":\t") for line in out.decode().splitlines())
    # moby's default: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    # NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP = 0xa80425fb
    assert int(caps["CapBnd"], 16) == 0xA80425FB
    assert int(caps["CapEff"], 16) == 0xA80425FB


def test_hostname(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], _sh("hostname; test -e /etc/hostname || echo no"),
                               hostname="buildbox")
    # no /etc/hostname in a RUN: BuildKit's executor mounts only /etc/hosts, resolv.conf
    assert (code, out) == (0, b"buildbox\nno\n")
    assert os.uname().nodename != "buildbox"


# --- isolation ------------------------------------------------------------------

def test_pid_namespace_view(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], _sh(
        "echo $$; cat /proc/1/cmdline; echo; ls /proc | grep -E '^[0-9]+$' | wc -l;"
        " cat /proc/1/environ 2>/dev/null; echo; readlink /proc/1/exe 2>/dev/null; echo end"))
    assert code == 0
    lines = out.split(b"\n")
    assert lines[0] == b"2"                          # the command is pid 2, init pid 1
    assert lines[1].rstrip(b"\0") == b"lamina-init"  # our init, not the host's cmdline
    assert int(lines[2]) <= 5                         # init, sh, ls, grep, wc at most
    rest = b"\n".join(lines[3:])
    assert b"PATH=" not in rest                       # init's environ is not readable
    assert sys.executable.encode() not in rest        # nor where its binary lives


def test_no_host_paths_visible(busybox_rootfs, run_sandbox, tmp_path):
    marker = tmp_path / "host-only-marker"
    marker.write_text("x")
    code, out, _ = run_sandbox([busybox_rootfs], _sh(f"test -e {marker} && echo SEEN; "
                                                     f"ls {REPO} 2>&1; ls /; true"))
    assert code == 0
    assert b"SEEN" not in out
    assert b"No such file" in out
    assert set(out.decode().split()) >= {"bin", "etc", "proc", "dev", "sys", "tmp"}


def test_dev_is_minimal_and_works(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], _sh(
        "ls /dev | sort | tr '\\n' ' '; echo; head -c 4 /dev/zero | wc -c; "
        "head -c 8 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok; "
        "readlink /dev/ptmx; readlink /dev/fd; echo hi > /dev/shm/f && cat /dev/shm/f"))
    assert code == 0, out
    lines = out.decode().splitlines()
    # as runc: /dev/core -> /proc/kcore only where the kernel has a kcore
    core = {"core"} if os.path.exists("/proc/kcore") else set()
    assert set(lines[0].split()) == {"fd", "full", "mqueue", "null", "ptmx", "pts",
                                     "random", "shm", "stderr", "stdin", "stdout", "tty",
                                     "urandom", "zero"} | core
    assert lines[1:] == ["4", "8", "null-ok", "pts/ptmx", "/proc/self/fd", "hi"]


def test_proc_sys_is_read_only(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], _sh("echo 1 > /proc/sys/vm/drop_caches"))
    assert code != 0
    assert b"Read-only file system" in out


def test_network_none_has_only_lo_up(busybox_rootfs, run_sandbox):
    code, out, _ = run_sandbox([busybox_rootfs], _sh(
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/flags"))
    assert code == 0
    names, flags = out.decode().split()
    assert names == "lo"
    assert int(flags, 16) & 0x1  # IFF_UP


def test_network_host_sees_host_interfaces(busybox_rootfs, run_sandbox):
    host = sorted(line.split(":")[0].strip()
                  for line in Path("/proc/net/dev").read_text().splitlines()[2:])
    code, out, _ = run_sandbox([busybox_rootfs],
                               _sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"),
                               network="host")
    assert code == 0
    assert sorted(out.decode().split()) == host


def test_ipc_uts_cgroup_namespaces_are_private(busybox_rootfs, run_sandbox):
    kinds = ("ipc", "uts", "cgroup", "mnt", "pid")
    host = [os.readlink(f"/proc/self/ns/{k}") for k in kinds]
    code, out, _ = run_sandbox([busybox_rootfs], _sh(
        " ".join(f"readlink /proc/self/ns/{k};" for k in kinds) + " cat /proc/self/cgroup"))
    assert code == 0
    lines = out.decode().splitlines()
    for inner, outer in zip(lines, host):
        assert inner != outer
    assert all(line.endswith(":/") for line in lines[len(kinds):])  # no host cgroup path


# --- the upper dir is the layer ---------------------------------------------------

def test_written_files_land_in_upper(busybox_rootfs, run_sandbox):
    code, _, upper = run_sandbox([busybox_rootfs], _sh("echo hi > /new; mkdir -p /a/b/c"))
    assert code == 0
    assert (upper / "new").read_text() == "hi\n"
    assert (upper / "a" / "b" / "c").is_dir()
    assert _tree(upper) == ["a", "a/b", "a/b/c", "new"]


def test_rm_lower_file_leaves_a_whiteout(busybox_rootfs, run_sandbox):
    code, _, upper = run_sandbox([busybox_rootfs], ["rm", "/etc/group"])
    assert code == 0
    st = os.lstat(upper / "etc" / "group")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_recreated_dir_is_opaque(busybox_rootfs, run_sandbox):
    code, _, upper = run_sandbox([busybox_rootfs], _sh("rm -rf /home && mkdir /home && "
                                                       "touch /home/x"))
    assert code == 0
    assert os.getxattr(upper / "home", "trusted.overlay.opaque") == b"y"
    assert os.listdir(upper / "home") == ["x"]


def test_chmod_copies_up_the_whole_file(busybox_rootfs, run_sandbox):
    code, _, upper = run_sandbox([busybox_rootfs], ["chmod", "600", "/etc/passwd"])
    assert code == 0
    copied = upper / "etc" / "passwd"
    assert stat.S_IMODE(os.lstat(copied).st_mode) == 0o600
    assert copied.read_bytes() == (busybox_rootfs / "etc" / "passwd").read_bytes()
    assert os.lstat(copied).st_size == (busybox_rootfs / "etc" / "passwd").stat().st_size
    assert not [a for a in os.listxattr(copied) if a.startswith("trusted.overlay.")]


def test_mv_of_lower_dir_is_a_full_copy(busybox_rootfs, run_sandbox):
    code, _, upper = run_sandbox([busybox_rootfs], ["mv", "/home", "/home2"])
    assert code == 0
    assert (upper / "home2" / "alice").is_dir()
    assert (upper / "home2" / "alice").stat().st_uid == 1000
    st = os.lstat(upper / "home")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    for p in [upper, *upper.rglob("*")]:
        names = os.listxattr(p, follow_symlinks=False)
        assert "trusted.overlay.redirect" not in names
        assert "trusted.overlay.metacopy" not in names
        assert not [n for n in names if n.startswith("trusted.overlay.")
                    and n != "trusted.overlay.opaque"]  # origin/impure/uuid stripped


def test_work_dir_is_emptied(busybox_rootfs, step_dirs):
    upper, work = step_dirs()
    code = sandbox.run(sandbox.SandboxSpec((busybox_rootfs,), upper, work,
                                           ("rm", "-r", "/home"), DEFAULT_ENV), lambda b: None)
    assert code == 0
    assert os.listdir(work) == []
    assert not [p for p in os.listdir(work.parent) if ".lamina-sandbox-" in p]


@pytest.mark.parametrize("api", ["new", "classic"])
def test_130_layers_stack_top_most_wins(busybox_rootfs, tmp_path, run_sandbox, monkeypatch, api):
    monkeypatch.setattr(sandbox, "OVERLAY_API", api)
    layers = []
    for i in range(130):
        d = tmp_path / "layers" / f"layer-with-a-long-descriptive-name-{i:04d}"
        (d / "layers").mkdir(parents=True)
        (d / "layers" / str(i)).write_text(str(i))
        (d / "top").write_text(str(i))
        layers.append(d)
    lowers = [*reversed(layers), busybox_rootfs]
    assert len(":".join(map(str, lowers))) > 4096  # would not fit mount(2)'s one page
    code, out, upper = run_sandbox(lowers, _sh("cat /top; echo; ls /layers | wc -l; "
                                               "cat /layers/0 /layers/129"))
    assert code == 0, out
    assert out.decode().split() == ["129", "130", "0129"]
    assert _tree(upper) == []


def test_scratch_base(bare_rootfs, busybox_path, run_sandbox):
    code, out, upper = run_sandbox(
        [], ["/bin/busybox", "sh", "-c", "/bin/busybox ls /; /bin/busybox echo x > /f"],
        mounts=(sandbox.BindMount(Path(busybox_path), "/bin/busybox"),))
    assert code == 0, out
    assert set(out.decode().split()) == {"bin", "dev", "etc", "proc", "sys"}
    # stubs (/bin/busybox, /etc/hosts...) gone; runc's /dev, /proc and /sys stay, as in
    # BuildKit's layer of a RUN on scratch
    assert _tree(upper) == ["dev", "f", "proc", "sys"]


# --- injected files and mount points ------------------------------------------------

def test_injected_files_are_bind_mounts_not_layer_content(busybox_rootfs, run_sandbox):
    code, out, upper = run_sandbox([busybox_rootfs], _sh(
        "cat /etc/hosts; echo 1.2.3.4 x >> /etc/hosts || echo RO; test -f /etc/resolv.conf "
        "&& echo RESOLV"), hostname="hb")
    assert code == 0
    text = out.decode()
    assert "127.0.0.1\tlocalhost hb" in text
    assert "RO" in text and "RESOLV" in text
    assert _tree(upper) == []
    # the upper root itself keeps its own metadata
    assert upper.stat().st_nlink == 2


def test_mount_points_created_by_the_sandbox_are_removed(bare_rootfs, run_sandbox):
    before = {p: os.lstat(bare_rootfs / p).st_mtime_ns for p in ("", "bin", "tmp")}
    old = os.umask(0o077)  # the kept mount points are image content: 0755 whatever the umask
    try:
        code, out, upper = run_sandbox([bare_rootfs], _sh("ls -d /proc/self /dev/null "
                                                          "/sys/kernel /etc/hosts"))
    finally:
        os.umask(old)
    assert code == 0, out
    assert _tree(upper) == ["dev", "proc", "sys"]  # runc's mount points, as BuildKit keeps
    for d in ("dev", "proc", "sys"):
        st = os.lstat(upper / d)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)
        assert os.listdir(upper / d) == []
    assert {p: os.lstat(bare_rootfs / p).st_mtime_ns for p in before} == before
    # a step that writes next to a stub keeps its own file, not the stubs
    code, _, upper = run_sandbox([bare_rootfs], _sh("echo x > /etc/mine"))
    assert code == 0
    assert _tree(upper) == ["dev", "etc", "etc/mine", "proc", "sys"]


def test_copied_up_parent_of_a_stub_is_dropped_if_unchanged(busybox_rootfs, run_sandbox):
    lower_etc = os.lstat(busybox_rootfs / "etc")
    code, _, upper = run_sandbox([busybox_rootfs], ["true"])
    assert code == 0
    assert not (upper / "etc").exists()  # /etc/hosts stub forced a copy-up of /etc
    code, _, upper = run_sandbox([busybox_rootfs], ["chmod", "700", "/etc"])
    assert code == 0
    assert stat.S_IMODE(os.lstat(upper / "etc").st_mode) == 0o700
    assert os.listdir(upper / "etc") == []
    assert os.lstat(upper / "etc").st_mtime_ns == lower_etc.st_mtime_ns


def test_run_mounts(busybox_rootfs, run_sandbox, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_text("from host")
    cache = tmp_path / "cache"
    cache.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    secret.chmod(0o644)
    script = textwrap.dedent("""\
        cat /src/data; echo
        { echo nope > /src/data; } 2>/dev/null || echo RO
        cat /rw/data; echo; echo changed > /rw/data && cat /rw/data; touch /rw/new
        echo cached > /var/cache/app/c
        mount | grep ' /scratch ' | cut -d' ' -f5
        df -k /scratch | tail -1 | tr -s ' ' | cut -d' ' -f2
        stat -c '%a %u %g' /run/secrets/token; cat /run/secrets/token; echo
        """)
    mounts = (sandbox.BindMount(src, "/src"),
              sandbox.BindMount(src, "/rw", readonly=False),
              sandbox.CacheMount(cache, "/var/cache/app"),
              sandbox.TmpfsMount("/scratch", size=2 * 1024 * 1024),
              sandbox.SecretMount(secret, "/run/secrets/token", mode=0o440, uid=0, gid=1000))
    code, out, upper = run_sandbox([busybox_rootfs], _sh(script), mounts=mounts)
    assert code == 0, out
    assert out.decode().splitlines() == ["from host", "RO", "from host", "changed", "tmpfs",
                                         "2048", "440 0 1000", "s3cret"]
    assert (src / "data").read_text() == "from host"   # rw bind: writes discarded
    assert sorted(os.listdir(src)) == ["data"]
    assert (cache / "c").read_text() == "cached\n"     # cache: writes persist
    assert _tree(upper) == []                          # no mount point left in the layer


def test_mount_point_that_cannot_be_created_is_a_clear_error(busybox_rootfs, run_sandbox):
    with pytest.raises(SandboxError, match="cannot create mount point /proc/x"):
        run_sandbox([busybox_rootfs], ["true"], mounts=(sandbox.TmpfsMount("/proc/x"),))
    with pytest.raises(SandboxError, match="/etc/passwd is not a directory"):
        run_sandbox([busybox_rootfs], ["true"], mounts=(sandbox.TmpfsMount("/etc/passwd/x"),))


def test_mount_on_existing_path_keeps_it(busybox_rootfs, run_sandbox):
    code, _, upper = run_sandbox([busybox_rootfs], _sh("touch /tmp/x/f"),
                                 mounts=(sandbox.TmpfsMount("/tmp/x"), sandbox.TmpfsMount("/home")))
    assert code == 0
    assert _tree(upper) == []


def test_mount_target_through_symlink_stays_inside(busybox_rootfs, tmp_path, step_dirs):
    # a previous layer made /escape a symlink to an absolute host-looking path
    layer = tmp_path / "evil"
    layer.mkdir()
    outside = tmp_path / "outside"
    os.symlink(str(outside), layer / "escape")
    code, out, upper = _run([layer, busybox_rootfs], _sh("ls -d /escape/"), step_dirs,
                            mounts=(sandbox.TmpfsMount("/escape/m"),))
    assert code == 0, out
    assert not outside.exists()                       # created inside the root instead
    assert _tree(upper) == []


def _run(lowers, argv, step_dirs, **kw):
    upper, work = step_dirs()
    kw.setdefault("env", DEFAULT_ENV)
    chunks: list[bytes] = []
    code = sandbox.run(sandbox.SandboxSpec(tuple(lowers), upper, work, tuple(argv), **kw),
                       chunks.append)
    return code, b"".join(chunks), upper


# --- refusing bad input ---------------------------------------------------------------

def test_work_dir_on_other_filesystem_is_refused(busybox_rootfs, tmp_path):
    upper = tmp_path / "upper"
    upper.mkdir()
    work = Path("/dev/shm") / f"lamina-test-work-{os.getpid()}"
    work.mkdir()
    try:
        spec = sandbox.SandboxSpec((busybox_rootfs,), upper, work, ("true",), DEFAULT_ENV)
        with pytest.raises(SandboxError, match="different filesystems"):
            sandbox.run(spec, lambda b: None)
    finally:
        work.rmdir()


def test_bad_specs_are_refused(busybox_rootfs, step_dirs, tmp_path):
    upper, work = step_dirs()
    base = dict(lower_dirs=(busybox_rootfs,), upper_dir=upper, work_dir=work,
                env=DEFAULT_ENV)
    cases = [
        (dict(argv=()), "empty command"),
        (dict(argv=("true",), cwd="rel"), "not an absolute path"),
        (dict(argv=("true",), lower_dirs=(tmp_path / "missing",)), "does not exist"),
        (dict(argv=("true",), mounts=(sandbox.BindMount(tmp_path / "nope", "/x"),)),
         "mount source"),
        (dict(argv=("true",), mounts=(sandbox.TmpfsMount("x"),)), "not an absolute path"),
        (dict(argv=("true",), network="bridge"), "unknown network mode"),
        (dict(argv=("true",), hostname="h" * 65), "invalid hostname"),
    ]
    for fields, message in cases:
        spec = sandbox.SandboxSpec(**{**base, **fields})
        with pytest.raises(SandboxError, match=message):
            sandbox.run(spec, lambda b: None)
