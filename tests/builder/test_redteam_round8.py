"""Red team, round 8: what a container's process can do to the terminal of the user who
runs `lamina exec` / `lamina run`.

- `lamina exec CONTAINER CMD` without `-t` forked the command into the container with
  the session of the user's shell: its controlling terminal was the user's terminal, so
  a process of the (hostile) image opened /dev/tty (docker's device list allows 5:0, and
  it names the caller's own controlling terminal) and pushed bytes into the terminal's
  input queue with TIOCSTI: when `lamina exec` returned, the user's shell read and ran
  them - a command of the image's choosing, run on the host as the user (root). runc
  starts every container process, exec'd ones too, in a session of its own (nsexec's
  setsid), so there /dev/tty is ENXIO and TIOCSTI EPERM.
- Without `-t`, that command also got lamina's own stdout and stderr - the user's
  terminal, opened read-write: a process it left running in the container read what
  the user typed into the shell after `lamina exec` returned (a password), and `stty`
  there changed the user's terminal. docker's exec streams go through pipes (FIFOs of
  containerd's shim); lamina's now go through pipes it relays and closes.
- `lamina run -i` (no `-t`) gave the container lamina's own stdin as its fd 0: with the
  user's terminal there, the image changed its modes (`stty -echo` outlived the run)
  and, were lamina killed, kept reading what the user typed. docker attaches stdin
  through a pipe; lamina now copies its stdin into one.
- `lamina ps` showed an image's command through JSON quoting, which leaves C1 controls
  (U+009B, the 8-bit CSI) and other non-printable runes raw; docker quotes COMMAND with
  Go's strconv.Quote, which escapes every rune unicode.IsPrint rejects.
- `lamina diff` (and `lamina verify`, which prints the same report) wrote an image's
  file names, history commands and text-file lines as they are: a file holding OSC 52
  set the user's clipboard, and a file name holding a newline or a cursor move could
  print a fake "identical" verdict. The text report now shows control characters in
  lamina's caret form (ESC as ^[, a newline in a name as ^J), as its error lines do;
  so do the summary and the notes of `lamina verify`, whose words come from the image's
  provenance (the digest it recorded for an ADD source).
- /dev/null, zero, full, random, urandom and tty of a RUN (and of a container) are bind
  mounts of the host's own nodes, and docker's masked /proc files bind mounts of that
  /dev/null: a step's `chmod 000 /dev/null` (or chown, touch) changed the host's
  /dev/null for every host user and service. runc mknod's nodes of the container's
  own; here the binds are read-only (reading and writing the device still work, a
  change of its inode is EROFS).
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.builder.buildkit import REPO, build, make_context
from tests.conftest import IN_CI

pytestmark = pytest.mark.root

# pushes argv[1] into the input queue of the terminal /dev/tty names (else of fd 0)
TIOCSTI_SOURCE = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/ioctl.h>
int main(int argc, char **argv) {
    int fd = open("/dev/tty", O_RDWR);
    if (fd < 0) { printf("devtty errno=%d\n", errno); fd = 0; }
    for (const char *s = argv[1]; *s; s++)
        if (ioctl(fd, TIOCSTI, s) < 0) { printf("tiocsti errno=%d\n", errno); return 1; }
    printf("tiocsti ok\n");
    return 0;
}
"""


def _lamina(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def _in_a_terminal(script: str, timeout: float = 30.0, typed: tuple[bytes, bytes] | None = None) -> str:
    """Run `bash -c script` as the session leader of a new pseudo-terminal, as a user's
    shell runs; all it writes to the terminal. `typed` = (cue, keys): the user types
    `keys` once the terminal shows `cue`."""
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.execv("/bin/bash", ["bash", "-c", script])
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the terminal's last process is gone
                    break
                if not data:
                    break
                out += data
                if typed is not None and typed[0] in out:
                    time.sleep(0.5)
                    os.write(master, typed[1])
                    typed = None
            elif os.waitpid(pid, os.WNOHANG)[0]:
                break
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        os.close(master)
    return out.decode(errors="replace")


@pytest.fixture
def tiocsti_image(build_store, tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        if IN_CI:
            pytest.fail("gcc is needed (dev/setup installs it)")
        pytest.skip("gcc is not installed")
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY sti /sti\n")
    (tmp_path / "sti.c").write_text(TIOCSTI_SOURCE)
    subprocess.run([gcc, "-static", "-O1", "-o", str(ctx / "sti"), str(tmp_path / "sti.c")],
                   check=True, capture_output=True)
    build(root, ctx, "-t", "redteam8-sti").check()
    yield root, "redteam8-sti"
    _lamina(root, "rmi", "redteam8-sti")


def test_exec_never_hands_the_users_terminal_to_the_container(tiocsti_image, tmp_path):
    root, image = tiocsti_image
    marker = tmp_path / "ran-on-the-host"
    started = _lamina(root, "run", "-d", "--network", "none", image, "sleep", "60")
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    try:
        lamina = f"{sys.executable} -m lamina --root {root}"
        injected = f"touch {marker}\n"
        # what the user's shell reads after `lamina exec` returned is what it would run
        out = _in_a_terminal(
            f"cd {REPO}; {lamina} exec {cid} /sti '{injected}'; "
            f"{lamina} exec {cid} cat /proc/self/stat; "
            "read -t 2 -r line; echo \"SHELL READ [$line]\"; eval \"$line\"")
        assert "tiocsti ok" not in out, out
        assert not marker.exists(), out
        assert "SHELL READ []" in out, out
        # docker (runc): the exec'd process has no controlling terminal
        assert "devtty errno=6" in out, out  # ENXIO
        stat_line = next(l for l in out.splitlines() if "(cat) " in l)
        tty_nr = int(stat_line.rsplit(")", 1)[1].split()[4])
        assert tty_nr == 0, stat_line
    finally:
        _lamina(root, "rm", "-f", cid)


def test_exec_leaves_nothing_holding_the_users_terminal(tiocsti_image, tmp_path):
    root, image = tiocsti_image
    started = _lamina(root, "run", "-d", "--network", "none", image, "sleep", "60")
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    try:
        lamina = f"{sys.executable} -m lamina --root {root}"
        # a process left behind keeps the command's stdout, and reads from it once the
        # user types again (a terminal is opened read-write)
        thief = "exec 3<&1 >/dev/null 2>&1; (sleep 1; head -c 8 <&3 > /tmp/stolen) &"
        out = _in_a_terminal(
            f"cd {REPO}; {lamina} exec {cid} sh -c '{thief}'; echo EXEC-RETURNED; "
            "sleep 3; read -t 1 -r line; echo \"SHELL READ [$line]\"; "
            f"echo STOLEN[$({lamina} exec {cid} cat /tmp/stolen)]; "
            f"{lamina} exec {cid} sh -c 'stty -echo <&1; ls -l /proc/self/fd/0 /proc/self/fd/1'; "
            "stty -a | tr ' ' '\\n' | grep -x -e echo -e -echo; "
            f"echo out-and-err | {lamina} exec -i {cid} sh -c 'cat; echo to-err >&2'",
            typed=(b"EXEC-RETURNED", b"hunter2\n"))
        assert "SHELL READ [hunter2]" in out, out
        assert "STOLEN[]" in out, out
        assert "/dev/pts" not in out, out  # the command's stdio are pipes, as docker's
        assert "-echo" not in out.split(), out  # the user's terminal kept its modes
        assert "out-and-err" in out and "to-err" in out, out  # still relayed
    finally:
        _lamina(root, "rm", "-f", cid)


def test_run_i_gives_the_container_a_pipe_not_the_users_terminal(build_store):
    root, _ = build_store
    lamina = f"{sys.executable} -m lamina --root {root}"
    out = _in_a_terminal(
        f"cd {REPO}; stty echo; {lamina} run --rm -i --network none bb sh -c "
        "'stty -echo; ls -l /proc/self/fd/0; head -c 5'; "
        "stty -a | tr ' ' '\\n' | grep -x -e echo -e -echo",
        typed=(b"/proc/self/fd/0", b"typed\n"))
    assert "/dev/pts" not in out, out
    assert "-echo" not in out.split(), out  # the user's terminal kept its modes
    # what the user typed still reached the command (`head -c 5` printed it), echo on
    assert "\ntypedecho\n" in out.replace("\r", ""), out



def test_ps_quotes_the_command_as_go_does(build_store):
    root, _ = build_store
    script = "exit 0 \x1b[2J \x9b2J \u00a0 \t \"q\" \\ é"
    done = _lamina(root, "run", "--network", "none", "--name", "redteam8-ps", "bb", "sh", "-c",
                   script)
    try:
        assert done.returncode == 0, done.stderr
        rows = _lamina(root, "ps", "-a", "--no-trunc", "--format",
                       "{{.Names}}|{{.Command}}").stdout.splitlines()
        shown = "".join(r.partition("|")[2] + "\n" for r in rows if r.startswith("redteam8-ps|"))
        # strconv.Quote: \x1b for C0, \u009b and \u00a0 (not unicode.IsPrint), é kept
        assert shown == ('"sh -c exit 0 \\x1b[2J \\u009b2J \\u00a0 \\t \\"q\\" '
                         '\\\\ é"\n'), repr(shown)
    finally:
        _lamina(root, "rm", "-f", "redteam8-ps")


def test_diff_report_never_sends_an_images_controls(build_store, tmp_path):
    root, _ = build_store
    plain = make_context(tmp_path / "a", "FROM bb\nRUN echo a > /t\n")
    hostile = make_context(tmp_path / "b", (
        "FROM bb\n"
        "RUN printf 'a\\033]52;c;cHduZWQ=\\007b\\302\\233\\n' > /t && "
        "touch \"/x$(printf '\\033[2J\\nidentical')\"\n"))
    build(root, plain, "-t", "redteam8-diff-a").check()
    build(root, hostile, "-t", "redteam8-diff-b").check()
    try:
        shown = subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), "diff",
                                "redteam8-diff-a", "redteam8-diff-b"],
                               capture_output=True, cwd=REPO, timeout=60).stdout
        assert shown, "no report"
        text = shown.decode()
        assert not [c for c in text if ord(c) < 0x20 and c != "\n" or 0x7f <= ord(c) < 0xa0], text
        assert "+a^[]52;c;cHduZWQ=^Gb" in text, text  # the content line, in caret form
        assert "/x^[[2J^Jidentical" in text, text      # one line for the file, not two
        assert not [l for l in text.splitlines() if l.strip() == "identical"], text
    finally:
        _lamina(root, "rmi", "redteam8-diff-a", "redteam8-diff-b")


def test_verify_prints_a_provenances_words_in_caret_form(tmp_path, monkeypatch):
    """The printing side of `lamina verify`, fed the words a hostile provenance can
    put in a note (the recorded digest of an ADD source) and in the report."""
    from lamina.builder.attest import verify as verify_mod
    from tests.builder.buildkit import lamina as lamina_in_process

    hostile = "sha256:0\x1b]52;c;cHduZWQ=\x07\nverified: identical\x9b2J"

    def fake_verify(store, ref, context, *, dockerfile=None, progress=None):
        return verify_mod.VerifyResult(
            source=ref, original_id="sha256:1", original_manifest="sha256:2",
            rebuilt_id="sha256:3", rebuilt_manifest="sha256:4", identical=False,
            lines=(f"  ~ /t [layer 4: RUN {hostile}]",),
            notes=(f"ADD source https://x/y is now sha256:5, the provenance records {hostile}",))

    monkeypatch.setattr(verify_mod, "verify_provenance", fake_verify)
    run = lamina_in_process(tmp_path / "store", "verify", "some-image")
    assert run.code == 1
    for text in (run.stdout, run.stderr):
        assert not [c for c in text if ord(c) < 0x20 and c != "\n" or 0x7f <= ord(c) < 0xa0], text
        assert not [l for l in text.splitlines() if l.startswith("verified")], text
    assert "records sha256:0^[]52;c;cHduZWQ=^G^Jverified: identicalM-^[2J" in run.stderr, run.stderr
    assert "RUN sha256:0^[]52;c;cHduZWQ=^G^Jverified" in run.stdout, run.stdout


def test_a_step_cannot_change_the_hosts_device_nodes(build_store, tmp_path):
    root, _ = build_store
    nodes = ("null", "zero", "full", "random", "urandom", "tty")
    before = {n: os.stat(f"/dev/{n}") for n in nodes}
    # changes that would leave each host node as it is (same mode, owner, times) but
    # for its ctime: what they may do is seen without harming the host if they succeed
    script = " ".join(f"chmod {oct(before[n].st_mode & 0o7777)[2:]} /dev/{n} && echo CHANGED-{n};"
                      f" touch -c -r /dev/{n} /dev/{n} && echo TOUCHED-{n};" for n in nodes)
    script += " chown 0:0 /proc/keys && echo CHANGED-masked; echo x > /dev/null && echo WROTE"
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nRUN {script}\n")
    out = build(root, ctx, "--no-cache").check().steps[-1].output
    ran = _lamina(root, "run", "--rm", "--network", "none", "bb", "sh", "-c", script)
    for shown in (out, ran.stdout.splitlines()):
        assert not [l for l in shown if l.startswith(("CHANGED", "TOUCHED"))], shown
        assert "WROTE" in shown, shown  # the devices themselves still work
    after = {n: os.stat(f"/dev/{n}") for n in nodes}
    assert {n: st.st_ctime_ns for n, st in after.items()} == \
        {n: st.st_ctime_ns for n, st in before.items()}
