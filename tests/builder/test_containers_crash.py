"""Containers and terminals, crashes and reboots: `run -it` and `exec -it` driven
through a real pseudo-terminal (window size, a line read and echoed, Ctrl-C reaching
the process), lamina SIGKILLed mid-`run` (the container lives on under its monitor),
the monitor SIGKILLed (the container dies with it, its state says so, nothing stays
mounted or running), a reboot (boot id changed: shown exited), gc while a container
runs (its image's layers stay)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import fcntl
import time
from pathlib import Path

import pytest

from tests.builder.buildkit import REPO
from tests.builder.test_containers import _alive, lamina, state, wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def store(build_store):
    root, _ = build_store
    yield root
    for cid in lamina(root, "ps", "-aq", "--no-trunc").stdout.split():
        lamina(root, "rm", "-f", cid)


class Terminal:
    """lamina run in a child on a pseudo-terminal (pty.fork), as a user's shell has it."""

    def __init__(self, store: Path, *args: str, rows: int = 33, cols: int = 99) -> None:
        pid, fd = pty.fork()
        if pid == 0:
            os.chdir(REPO)
            os.execv(sys.executable, [sys.executable, "-m", "lamina", "--root", str(store), *args])
        self.pid, self.fd, self.buf = pid, fd, b""
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def expect(self, pattern: bytes, timeout: float = 20) -> bool:
        end = time.monotonic() + timeout
        while pattern not in self.buf and time.monotonic() < end:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    break
                if not data:
                    break
                self.buf += data
        return pattern in self.buf

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)  # what the terminal emulator's kernel does

    def wait(self, timeout: float = 20) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.expect(b"\0never", 0.1)  # keep draining
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"lamina did not exit; output so far: {self.buf!r}")


SCRIPT = ("trap 'echo interrupted; exit 5' INT; stty size; tty; read line; echo got:$line;"
          " while true; do sleep 0.1; done")


def test_run_it_has_a_real_terminal(store):
    t = Terminal(store, "run", "-it", "--rm", "--network", "none", "bb", "sh", "-c", SCRIPT)
    assert t.expect(b"33 99\r\n"), t.buf                   # the window size of lamina's tty
    assert t.expect(b"/dev/pts/0\r\n"), t.buf              # a pty of the container's devpts
    t.send(b"hello\r")
    assert t.expect(b"hello\r\ngot:hello\r\n"), t.buf      # echoed by the container's tty
    t.send(b"\x03")                                        # Ctrl-C: SIGINT from its tty
    assert t.expect(b"interrupted"), t.buf
    assert t.wait() == 5


def test_run_it_follows_window_size_changes(store):
    t = Terminal(store, "run", "-it", "--rm", "--network", "none", "bb", "sh", "-c",
                 "stty size; read x; stty size")
    assert t.expect(b"33 99\r\n"), t.buf
    t.resize(40, 120)
    time.sleep(0.3)
    t.send(b"\r")
    assert t.expect(b"40 120\r\n"), t.buf
    assert t.wait() == 0


def test_exec_it_has_a_terminal(store):
    cid = lamina(store, "run", "-d", "--network", "none", "bb", "sleep", "1000").stdout.strip()
    t = Terminal(store, "exec", "-it", cid, "sh", "-c", SCRIPT, rows=20, cols=70)
    assert t.expect(b"20 70\r\n"), t.buf
    assert t.expect(b"/dev/pts/"), t.buf
    t.send(b"there\r")
    assert t.expect(b"got:there\r\n"), t.buf
    t.send(b"\x03")
    assert t.expect(b"interrupted"), t.buf
    assert t.wait() == 5


def _mounted_anywhere(path: str) -> bool:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if path in Path(f"/proc/{pid}/mountinfo").read_text():
                return True
        except OSError:
            continue
    return False


def test_lamina_killed_mid_run_leaves_the_container_to_its_monitor(store):
    argv = [sys.executable, "-m", "lamina", "--root", str(store), "run", "--name", "survivor",
            "--network", "none", "bb", "sh", "-c", "echo one; sleep 1000"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout.readline() == "one\n"
    p.kill()
    p.wait()
    p.stdout.close()
    cid = lamina(store, "ps", "-q", "--no-trunc").stdout.strip()
    rec = state(store, cid)
    assert rec["status"] == "running" and _alive(rec["init_pid"]) and _alive(rec["monitor_pid"])
    assert lamina(store, "logs", "survivor").stdout == "one\n"
    assert lamina(store, "exec", "survivor", "echo", "still here").stdout == "still here\n"
    d = str(store / "containers" / cid)
    assert _mounted_anywhere(d)                 # its overlay, in its own mount namespace
    assert lamina(store, "rm", "-f", "survivor").returncode == 0
    assert not _alive(rec["init_pid"]) and not _alive(rec["monitor_pid"])
    assert not _mounted_anywhere(d)
    assert all(not os.path.exists(c) for c in rec["cgroup_dirs"])


def test_monitor_killed_takes_the_container_and_leaves_its_state(store):
    cid = lamina(store, "run", "-d", "--name", "orphan", "--network", "none", "bb",
                 "sh", "-c", "echo before; sleep 1000").stdout.strip()
    assert wait_for(lambda: lamina(store, "logs", cid).stdout == "before\n")
    rec = state(store, cid)
    os.kill(rec["monitor_pid"], signal.SIGKILL)
    assert wait_for(lambda: not _alive(rec["init_pid"]))   # PDEATHSIG: PID 1 died with it
    d = str(store / "containers" / cid)
    assert wait_for(lambda: not _mounted_anywhere(d))
    ps = lamina(store, "ps", "-a", "--format", "{{.Names}} {{.Status}}").stdout
    assert ps.startswith("orphan Exited (137) ")
    after = state(store, cid)
    assert after["status"] == "exited" and after["exit_code"] == 137
    assert all(not os.path.exists(c) for c in rec["cgroup_dirs"])
    assert lamina(store, "logs", "orphan").stdout == "before\n"   # the log is kept
    assert lamina(store, "commit", "orphan", "orphaned:1").returncode == 0
    assert lamina(store, "rm", "orphan").returncode == 0
    assert not os.path.exists(d)


def test_a_non_root_container_and_exec_die_with_their_monitor_and_lamina(store):
    # PR_SET_PDEATHSIG is cleared when a process changes its uid (prctl(2)): a
    # container running as USER 1000 must still die with its monitor, an exec'd
    # command as 1000 with lamina exec's helper that entered the namespaces (killing
    # lamina exec itself leaves it running, as killing `docker exec` does)
    cid = lamina(store, "run", "-d", "-u", "1000", "--network", "none", "bb",
                 "sleep", "1000").stdout.strip()
    rec = state(store, cid)
    assert os.stat(f"/proc/{rec['init_pid']}").st_uid == 1000
    argv = [sys.executable, "-m", "lamina", "--root", str(store), "exec", "-u", "1000", cid,
            "sh", "-c", "echo $$; exec sleep 999"]
    ex = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    inner = int(ex.stdout.readline())          # its pid in the container's namespace

    def exec_sleep() -> list[int]:  # the shell may not have exec'd sleep yet
        return [p for p in _children_in(rec["init_pid"]) if b"sleep\x00999" in _cmdline(p)]

    assert wait_for(lambda: len(exec_sleep()) == 1)
    host = exec_sleep()
    assert inner > 1 and len(host) == 1
    helper = int(Path(f"/proc/{ex.pid}/task/{ex.pid}/children").read_text().split()[0])
    assert Path(f"/proc/{host[0]}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(helper)
    os.kill(helper, signal.SIGKILL)
    assert wait_for(lambda: not _alive(host[0]))
    assert ex.wait(10) == 137
    ex.stdout.close()
    os.kill(rec["monitor_pid"], signal.SIGKILL)
    assert wait_for(lambda: not _alive(rec["init_pid"]))
    assert wait_for(lambda: state(store, cid)["status"] == "exited" or
                    lamina(store, "ps", "-q").stdout == "")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children_in(init_pid: int) -> list[int]:
    """Host pids of the processes in the PID namespace of `init_pid`."""
    ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/ns/pid") == ns:
                    out.append(int(p))
            except OSError:
                pass
    return out


def test_after_a_reboot_running_containers_show_exited(store):
    cid = lamina(store, "run", "-d", "--network", "none", "bb", "sleep", "1000").stdout.strip()
    path = store / "containers" / cid / "state.json"
    rec = json.loads(path.read_text())
    lamina(store, "kill", cid)
    assert wait_for(lambda: state(store, cid)["status"] == "exited")
    assert wait_for(lambda: not _alive(rec["monitor_pid"]))  # done writing the record
    # as the store is found after a reboot: "running", another boot id, some live pid
    rec.update(boot_id="00000000-0000-0000-0000-000000000000", monitor_pid=1,
               monitor_start=Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()[19])
    path.write_text(json.dumps(rec))
    assert lamina(store, "ps", "-q").stdout == ""
    assert lamina(store, "ps", "-a", "--format", "{{.Status}}").stdout.startswith("Exited (255) ")
    assert state(store, cid)["status"] == "exited"


def test_gc_keeps_the_layers_of_a_running_container(tmp_path):
    from tests.builder.buildkit import build, make_base, make_context
    from lamina.store.store import Store

    store = tmp_path / "store"
    make_base(store, tmp_path / "base")
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo layer > /marker\n", {})
    build(store, ctx, "-t", "gcvictim").check()
    cid = lamina(store, "run", "-d", "--network", "none", "gcvictim", "sleep", "1000").stdout.strip()
    with Store(store) as s:
        image = s.resolve("gcvictim")
        dirs = [s.layer_dir(l.diff_id) for l in image.layers]
    # nothing but the container holds the image now: no tag, no cache entry (docker's
    # rmi -f of a running container's image only untags it)
    assert lamina(store, "rmi", "-f", "bb", "gcvictim").returncode == 0
    assert lamina(store, "prune", "-f").returncode == 0
    assert lamina(store, "gc").returncode == 0
    assert all(d.is_dir() for d in dirs)       # the container's hold and lease
    assert lamina(store, "exec", cid, "cat", "/marker").stdout == "layer\n"
    assert lamina(store, "rm", "-f", cid).returncode == 0
    assert lamina(store, "rmi", image.config_digest).returncode == 0
    assert lamina(store, "gc").returncode == 0
    assert not any(d.is_dir() for d in dirs)   # once it is gone, so are they


def test_a_monitor_that_dies_at_once_is_reported(tmp_path):
    from lamina.builder.containers.create import check_monitor
    from lamina.builder.containers.state import Container, ContainerStore

    cs = ContainerStore(tmp_path)
    cid = cs.new_id()
    cs.create(Container(id=cid, name="", image="x", image_id="", manifest="", argv=("true",),
                        created=time.time()))
    (cs.path(cid) / "monitor.err").write_text("Traceback...\nImportError: broken install\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    check_monitor(cs, cid, os.getpid())          # alive: nothing to say yet
    assert cs.read(cid).status == "created"
    check_monitor(cs, cid, dead.pid)
    rec = cs.read(cid)
    assert rec.status == "exited" and rec.exit_code == 125
    assert rec.error.endswith("ImportError: broken install")
    assert rec.name and cs.find(rec.name).id == cid   # a generated docker-like name
