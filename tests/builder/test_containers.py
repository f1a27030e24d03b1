"""Containers through the real CLI (`python -m lamina`): foreground runs and their exit
status, a detached container's logs, exec, stop with its STOPSIGNAL, commit, `ps`
formats, `rm -f`, `-i` stdin. The expected behaviour is docker's (documented in
docker's `run`/`ps`/`stop` reference): exit status passed through, hostname = short ID,
PID 1 = the command, STOPSIGNAL then SIGKILL after the timeout, commit = upper dir as
a new layer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.builder.buildkit import REPO, build, make_context

pytestmark = pytest.mark.root


def lamina(root, *args, input=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout, input=input)


def state(root: Path, cid: str) -> dict:
    return json.loads((root / "containers" / cid / "state.json").read_text())


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def store(build_store):
    root, _ = build_store
    yield root
    for cid in lamina(root, "ps", "-aq", "--no-trunc").stdout.split():
        lamina(root, "rm", "-f", cid)


def test_foreground_runs_pass_output_and_exit_status(store):
    r = lamina(store, "run", "--network", "none", "bb", "sh", "-c",
               "echo out; echo err >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == "out\n" and r.stderr == "err\n"
    # a container is kept (docker's default without --rm), exited with its status
    ps = lamina(store, "ps", "-a", "--format", "{{.Status}}|{{.Command}}").stdout.splitlines()
    assert ps[0].startswith("Exited (3) ")
    assert ps[0].endswith('|"sh -c echo out; ech…"')  # docker: quoted, cut to 20 runes
    missing = lamina(store, "run", "--rm", "--network", "none", "bb", "no-such-command")
    assert missing.returncode == 127 and "no-such-command" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_run_environment_hostname_user_workdir_volume_entrypoint(store, tmp_path):
    host = tmp_path / "vol"
    host.mkdir()
    host.chmod(0o777)  # writable by uid 1000: only the :ro mount refuses the write
    (host / "in").write_text("from host\n")
    envfile = tmp_path / "env"
    envfile.write_text("# comment\nFROMFILE=yes\n")
    r = lamina(store, "run", "--rm", "--network", "none", "-e", "A=1", "--env-file", envfile,
               "-u", "1000", "-w", "/home/alice", "-v", f"{host}:/data",
               "-v", f"{host}:/ro:ro", "bb", "sh", "-c",
               "echo $A $FROMFILE $(id -u) $(pwd) $HOME; cat /data/in; echo new > /data/out;"
               " echo x > /ro/x 2>/dev/null || echo ro-refused; hostname; cat /proc/1/cmdline")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["1 yes 1000 /home/alice /home/alice", "from host", "ro-refused"]
    assert re.fullmatch(r"[0-9a-f]{12}", lines[3])        # hostname: the short ID
    assert lines[4] == "cat\0/proc/1/cmdline\0"     # the command (sh exec's its last) is PID 1
    assert (host / "out").read_text() == "new\n"          # -v writes reach the host
    named = lamina(store, "run", "--rm", "--network", "none", "--hostname", "box",
                   "--entrypoint", "hostname", "bb")
    assert named.stdout == "box\n"


def test_foreground_run_forwards_signals_and_reports_a_kill(store):
    argv = [sys.executable, "-m", "lamina", "--root", str(store), "run", "--network", "none",
            "bb", "sh", "-c", "trap 'echo got TERM; exit 7' TERM; echo ready;"
                              " while true; do sleep 0.1; done"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout.readline() == "ready\n"
    p.send_signal(15)                      # lamina forwards it to the container's PID 1
    assert p.wait(20) == 7
    assert p.stdout.read() == "got TERM\n"
    p = subprocess.Popen(argv[:-1] + ["echo ready; sleep 1000"], stdout=subprocess.PIPE, text=True,
                         cwd=REPO)
    assert p.stdout.readline() == "ready\n"
    cid = lamina(store, "ps", "-q").stdout.strip()
    assert lamina(store, "kill", cid).returncode == 0  # SIGKILL from outside: 128 + 9
    assert p.wait(20) == 137
    p.stdout.close()


def test_stdin_with_i(store):
    r = lamina(store, "run", "--rm", "-i", "--network", "none", "bb", "sh", "-c", "tr a-z A-Z",
               input="piped in\n")
    assert r.returncode == 0 and r.stdout == "PIPED IN\n"
    r = lamina(store, "run", "--rm", "--network", "none", "bb", "cat", input="ignored\n")
    assert r.stdout == ""  # without -i stdin is not connected (docker)


def test_detached_logs_exec_commit_and_rm_force(store):
    r = lamina(store, "run", "-d", "--name", "web", "--network", "none", "bb",
               "sh", "-c", "echo hi; echo oops >&2; sleep 1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    assert wait_for(lambda: b"oops" in (store / "containers" / cid / "ctr.log").read_bytes())
    logs = lamina(store, "logs", "web")
    assert logs.stdout == "hi\n" and logs.stderr == "oops\n"
    assert lamina(store, "logs", "--tail", "1", cid[:8]).stderr == "oops\n"
    assert lamina(store, "logs", "--tail", "1", cid[:8]).stdout == ""
    ps = lamina(store, "ps").stdout.splitlines()
    assert ps[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS",
                             "NAMES"]
    assert ps[1].startswith(cid[:12] + "   bb ") and ps[1].endswith("web")
    assert lamina(store, "ps", "-q").stdout == cid[:12] + "\n"
    assert lamina(store, "ps", "-q", "--no-trunc").stdout == cid + "\n"
    table = lamina(store, "ps", "--format", "table {{.Names}}\t{{.State}}").stdout
    assert table == "NAMES     STATE\nweb       running\n"
    assert json.loads(lamina(store, "ps", "--format", "json").stdout)["Names"] == "web"
    # exec: the container's namespaces (its PID 1, its hostname), docker's capabilities
    ex = lamina(store, "exec", "web", "sh", "-c",
                "cat /proc/1/cmdline; echo; hostname; grep CapBnd /proc/self/status;"
                " grep Seccomp: /proc/self/status; echo made > /made; exit 4")
    assert ex.returncode == 4, ex.stderr
    out = ex.stdout.splitlines()
    assert out[0] == "sleep\x001000\x00" or out[0].startswith("sh\x00-c")
    assert out[1] == cid[:12]
    assert out[2].split()[1] == "00000000a80425fb"   # docker's default capability set
    assert out[3].split()[1] == "2"                    # seccomp filter mode
    assert lamina(store, "exec", "-u", "alice", "web", "id", "-un").stdout == "alice\n"
    # commit: the upper dir becomes a layer of a new image
    commit = lamina(store, "commit", "web", "snap:1")
    assert commit.returncode == 0, commit.stderr
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", commit.stdout)
    shown = lamina(store, "run", "--rm", "--network", "none", "snap:1", "sh", "-c",
                   "cat /made; ls /etc/hostname 2>&1 | head -1")
    assert shown.stdout.splitlines()[0] == "made"
    from tests.builder.buildkit import image_config
    base, snap = image_config(store, "bb"), image_config(store, "snap:1")
    assert snap["rootfs"]["diff_ids"][:-1] == base["rootfs"]["diff_ids"]
    assert len(snap["rootfs"]["diff_ids"]) == len(base["rootfs"]["diff_ids"]) + 1
    # rm without -f refuses a running container, -f removes it
    refused = lamina(store, "rm", "web")
    assert refused.returncode == 1 and "is running" in refused.stderr
    pid = state(store, cid)["init_pid"]
    forced = lamina(store, "rm", "-f", "web")
    assert forced.returncode == 0 and forced.stdout == "web\n"
    assert not (store / "containers" / cid).exists()
    assert not _alive(pid)
    assert lamina(store, "ps", "-aq").stdout == ""
    assert lamina(store, "logs", "web").returncode == 1


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def test_stop_uses_the_images_stopsignal(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
STOPSIGNAL SIGUSR1
CMD ["sh", "-c", "trap 'echo stopping by USR1; exit 0' USR1; echo ready; while true; do sleep 0.1; done"]
""", {})
    build(store, ctx, "-t", "stoppable").check()
    cid = lamina(store, "run", "-d", "--network", "none", "stoppable").stdout.strip()
    assert wait_for(lambda: lamina(store, "logs", cid).stdout == "ready\n")
    started = time.monotonic()
    stop = lamina(store, "stop", "-t", "20", cid[:12])
    assert stop.returncode == 0 and stop.stdout == cid[:12] + "\n"
    assert time.monotonic() - started < 10  # the trap ran: no wait for the SIGKILL
    assert state(store, cid)["exit_code"] == 0
    assert lamina(store, "logs", cid).stdout == "ready\nstopping by USR1\n"
    assert lamina(store, "ps", "-a", "--format", "{{.Status}}").stdout.startswith("Exited (0) ")
    # a PID 1 without a handler ignores SIGTERM: stop kills it after the timeout (docker)
    cid = lamina(store, "run", "-d", "--network", "none", "bb", "sleep", "1000").stdout.strip()
    started = time.monotonic()
    lamina(store, "stop", "-t", "1", cid)
    assert 1 <= time.monotonic() - started < 8
    assert state(store, cid)["exit_code"] == 137
    # kill -s
    cid = lamina(store, "run", "-d", "--network", "none", "bb", "sh", "-c",
                 "trap 'exit 9' HUP; while true; do sleep 0.1; done").stdout.strip()
    assert lamina(store, "kill", "-s", "HUP", cid).returncode == 0
    assert wait_for(lambda: state(store, cid)["status"] == "exited")
    assert state(store, cid)["exit_code"] == 9


def test_run_rm_removes_the_container(store):
    r = lamina(store, "run", "--rm", "--network", "none", "bb", "true")
    assert r.returncode == 0
    assert wait_for(lambda: lamina(store, "ps", "-aq").stdout == "")
    cid = lamina(store, "run", "-d", "--rm", "--network", "none", "bb", "sleep", "0.2").stdout.strip()
    assert wait_for(lambda: not (store / "containers" / cid).exists())


def test_default_network_has_outbound_interface(store):
    r = lamina(store, "run", "--rm", "bb", "sh", "-c", "ip -o -4 addr show tap0")
    assert r.returncode == 0, r.stderr
    assert "10.0.2.100" in r.stdout  # slirp4netns's address, as a RUN's default network


def _net_devices(text: str) -> set[str]:
    """Interface names of a /proc/net/dev."""
    return {line.split(":")[0].strip() for line in text.splitlines()[2:] if ":" in line}


def test_host_network_shares_the_hosts_interfaces_and_names(store):
    """docker run --network host (run reference, "Network: host"; moby's
    initializeNetworking and buildSandboxOptions): the host's interfaces, the host's
    hostname (os.Hostname()) in the container's own UTS namespace and its
    /etc/hostname, copies of the host's /etc/hosts and /etc/resolv.conf; `--hostname`
    renames only the container."""
    host_name = os.uname().nodename
    r = lamina(store, "run", "--rm", "--network", "host", "bb", "sh", "-c",
               "hostname; echo ---; cat /etc/hostname; echo ---; cat /etc/hosts; echo ---;"
               " cat /etc/resolv.conf; echo ---; cat /proc/net/dev")
    assert r.returncode == 0, r.stderr
    name, hostname_file, hosts, resolv, netdev = r.stdout.split("\n---\n")
    assert name == host_name
    assert hostname_file == host_name
    assert hosts + "\n" == Path("/etc/hosts").read_text()
    assert resolv + "\n" == Path("/etc/resolv.conf").read_text()
    assert _net_devices(netdev) == _net_devices(Path("/proc/net/dev").read_text())
    assert len(_net_devices(netdev)) > 1          # more than a fresh namespace's lo
    named = lamina(store, "run", "--rm", "--network", "host", "--hostname", "box", "bb",
                   "sh", "-c", "hostname; cat /etc/hostname")
    assert named.returncode == 0, named.stderr
    assert named.stdout == "box\nbox\n"
    assert os.uname().nodename == host_name      # the host keeps its name


def test_logs_follow_detached_tty_and_exec_options(store):
    cid = lamina(store, "run", "-dt", "--network", "none", "bb", "sh", "-c",
                 "tty; echo x; sleep 0.5; echo y").stdout.strip()
    followed = lamina(store, "logs", "-f", cid)          # returns once the container exits
    assert followed.stdout == "/dev/pts/0\nx\ny\n"  # a TTY's (text mode reads its \r\n as \n)
    assert state(store, cid)["status"] == "exited"
    stamped = lamina(store, "logs", "-t", "--tail", "1", cid).stdout
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z y\n", stamped)
    cid = lamina(store, "run", "-d", "--network", "none", "-e", "A=1", "bb",
                 "sleep", "1000").stdout.strip()
    ex = lamina(store, "exec", "-e", "B=2", "-w", "/tmp", cid, "sh", "-c", "echo $A $B $(pwd)")
    assert ex.stdout == "1 2 /tmp\n"
    assert lamina(store, "exec", "-i", cid, "tr", "a-z", "A-Z", input="up\n").stdout == "UP\n"
    assert lamina(store, "exec", cid, "cat", input="not connected\n").stdout == ""
    lamina(store, "rm", "-f", cid)
    gone = lamina(store, "exec", cid, "true")
    assert gone.returncode == 1 and "No such container" in gone.stderr


@pytest.mark.parametrize("sample", ["hello", "multistage", "moby-style"])
def test_samples_run_as_containers(store, tmp_path, sample):
    import hashlib
    import shutil

    from tests.builder.buildkit import busybox_binary

    ctx = tmp_path / sample
    shutil.copytree(REPO / "samples" / sample, ctx, ignore=shutil.ignore_patterns("busybox"))
    shutil.copy2(busybox_binary(), ctx / "busybox")
    build(store, ctx, "-t", f"sample-{sample}:run").check()
    r = lamina(store, "run", "--rm", "--network", "none", f"sample-{sample}:run")
    assert r.returncode == 0, r.stderr
    if sample == "hello":  # the sample's script, as its Dockerfile's USER/WORKDIR/ENV say
        assert r.stdout == "hello from lamina, running as 1000 in /app\n"
    elif sample == "moby-style":  # CMD ["tool", "hello"]: src/tool.sh stamped with ARG VERSION=dev
        assert r.stdout == "tool dev: hello\n"
        other = lamina(store, "run", "--rm", "--network", "none", f"sample-{sample}:run",
                       "sh", "-c", "tool a b; cat /validated")
        assert other.returncode == 0, other.stderr
        # validate.sh's line per shell file of src/ (glob order), made from a context bind mount
        checked = [f"ok {p.name}" for p in sorted((ctx / "src").glob("*.sh"))]
        assert other.stdout.splitlines() == ["tool dev: a b", *checked]
    else:  # ENTRYPOINT cat + CMD the report the build stage wrote
        words = (ctx / "src" / "words.txt").read_bytes()
        assert r.stdout.splitlines()[0] == "report version 1.0"
        assert r.stdout.splitlines()[2].split()[0] == hashlib.sha256(words).hexdigest()
        # arguments replace CMD, not ENTRYPOINT (docker)
        other = lamina(store, "run", "--rm", "--network", "none", f"sample-{sample}:run",
                       "/srv/missing")
        assert other.returncode == 1 and "missing" in other.stderr


@pytest.mark.skipif(not (os.environ.get("CI") == "true" or os.environ.get("LAMINA_SLOW_TESTS")),
                    reason="debootstrap base (~2 min): runs in CI, or with LAMINA_SLOW_TESTS=1")
def test_python_sample_runs_its_self_test(store, tmp_path_factory, tmp_path):
    """samples/python-app on the debootstrap base (the session's shared root filesystem
    tar of make-base.sh, imported as the sample's Dockerfile names it): its CMD
    `python3 -m app --self-test` runs as the Dockerfile's USER in its WORKDIR and
    counts the words of the app's own .py files."""
    import shutil

    from tests.builder.test_differential import DEBIAN_REF, debian_rootfs_tar

    tar = debian_rootfs_tar(tmp_path_factory)
    imported = lamina(store, "import", tar, DEBIAN_REF, timeout=600)
    assert imported.returncode == 0, imported.stderr
    ctx = tmp_path / "python-app"
    shutil.copytree(REPO / "samples" / "python-app", ctx,
                    ignore=shutil.ignore_patterns("__pycache__"))
    build(store, ctx, "-t", "sample-python-app:run").check()
    r = lamina(store, "run", "--rm", "--network", "none", "sample-python-app:run")
    assert r.returncode == 0, r.stderr
    words = sum(len(p.read_text().split()) for p in sorted((ctx / "app").glob("*.py")))
    m = re.fullmatch(r"app running as uid 10001 in /srv/app, python (3\.\d+\.\d+), "
                     r"(\d+) words of source\n", r.stdout)
    assert m, r.stdout
    assert int(m.group(2)) == words
    # the interpreter of the image (not the host's) ran it
    version = lamina(store, "run", "--rm", "--network", "none", "sample-python-app:run",
                     "python3", "-c", "import platform; print(platform.python_version())")
    assert version.stdout == m.group(1) + "\n"


# docker's default masked paths (moby oci/defaults.go, runc: /dev/null over a file, an
# empty read-only tmpfs over a directory); the probe prints what a process reads there
MASKED = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware", "/sys/devices/virtual/powercap")
MASK_PROBE = ("for p in " + " ".join(MASKED) + "; do"
              " if [ -d $p ]; then echo \"$p dir $(ls -A $p | wc -l)\";"
              " elif [ -e $p ]; then echo \"$p file $(cat $p 2>/dev/null | wc -c)\";"
              " else echo \"$p absent\"; fi; done")


def test_masked_paths_in_a_container_as_in_a_run_step(store, tmp_path):
    """The container's PID 1 reads docker's masked paths as a RUN step does: /proc/keys
    (the host's lists keys) and /proc/timer_list read empty, /sys/firmware (the host's
    holds acpi, ...) lists nothing."""
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nRUN {MASK_PROBE} > /probe\n", {})
    build(store, ctx, "-t", "masked:1").check()
    r = lamina(store, "run", "--rm", "--network", "none", "masked:1", "sh", "-c",
               f"{MASK_PROBE}; echo ---; cat /probe")
    assert r.returncode == 0, r.stderr
    in_container, in_run = r.stdout.split("---\n")
    assert in_container == in_run
    seen = dict(line.split(" ", 1) for line in in_container.splitlines())
    assert seen["/proc/keys"] == "file 0" and seen["/sys/firmware"] == "dir 0"
    for path, what in seen.items():
        assert what in ("absent", "file 0", "dir 0"), (path, what)
    # (unmasked, these hosts' /proc/keys lists keys and /sys/firmware holds acpi, memmap)


def test_pid1_gets_the_sandbox_of_a_run_step(store):
    r = lamina(store, "run", "--rm", "--network", "none", "bb", "sh", "-c",
               "grep -E '^(CapBnd|CapAmb|CapInh|Seccomp|NoNewPrivs):' /proc/self/status;"
               " cut -d: -f3 /proc/self/cgroup | sort -u; touch /proc/sys/x 2>/dev/null || echo ro")
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(":\t") for line in r.stdout.splitlines() if ":\t" in line)
    assert fields["CapBnd"] == "00000000a80425fb"   # docker's default capability set
    assert fields["CapAmb"] == fields["CapInh"] == "0000000000000000"
    assert fields["Seccomp"] == "2"                 # a seccomp filter
    rest = [line for line in r.stdout.splitlines() if ":\t" not in line]
    assert rest == ["/", "ro"]                      # its own cgroup namespace; /proc/sys read-only
