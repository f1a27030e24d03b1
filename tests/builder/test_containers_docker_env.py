"""What a `lamina run` process sees, against docker's rules (moby's
Container.CreateDaemonEnvironment and oci_linux.go getUser, checked beside
`podman --runtime runc run` of the same image): the default environment is PATH,
HOSTNAME (the container's hostname) and, with -t only, TERM=xterm, each overridable;
the process's groups are its primary gid plus the supplementary ones from /etc/group."""

from __future__ import annotations

import re

import pytest

from tests.builder.test_containers import lamina, store  # noqa: F401  (fixture)

pytestmark = pytest.mark.root

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_default_env_has_hostname_and_term_only_with_tty(store):
    plain = lamina(store, "run", "--rm", "--network", "none", "bb", "sh", "-c",
                   "env | sort; hostname")
    assert plain.returncode == 0, plain.stderr
    *env, host = plain.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f]{12}", host)
    # docker: no TERM without -t; busybox sh adds PWD and SHLVL
    assert env == [f"HOME=/root", f"HOSTNAME={host}", PATH, "PWD=/", "SHLVL=1"]
    tty = lamina(store, "run", "--rm", "-t", "--network", "none", "-h", "named",
                 "-e", "PATH=/bin", "bb", "env")
    assert tty.returncode == 0, tty.stderr
    seen = sorted(tty.stdout.replace("\r", "").splitlines())
    assert seen == ["HOME=/root", "HOSTNAME=named", "PATH=/bin", "TERM=xterm"]


def test_process_groups_include_primary_gid(store):
    # the bb image's /etc/group lists alice in wheel (10) and staff (50)
    r = lamina(store, "run", "--rm", "--network", "none", "-u", "1000", "bb", "sh", "-c",
               "id -G; cat /proc/self/status | grep ^Groups")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0].split() == ["1000", "10", "50"]
    assert sorted(r.stdout.split("\n")[1].split()[1:]) == ["10", "1000", "50"]
    # uid:gid absent from passwd/group: docker runs with groups=<gid>, HOME=/
    r = lamina(store, "run", "--rm", "--network", "none", "-u", "4242:4343", "bb", "sh", "-c",
               "id; echo $HOME")
    assert r.stdout.splitlines() == ["uid=4242 gid=4343 groups=4343", "/"], r.stderr
    # an explicit group: that group only (no supplementary lookup)
    r = lamina(store, "run", "--rm", "--network", "none", "-u", "alice:staff", "bb", "id")
    assert r.stdout.strip() == "uid=1000(alice) gid=50(staff) groups=50(staff)", r.stderr


def test_a_container_that_cannot_be_made_exits_125(store):
    # docker run's statuses: 125 for its own failures (no such image, an unknown user,
    # --entrypoint '' with nothing left to run), 126/127 for a command it cannot run
    for args in (["no-such-image:1", "true"], ["-u", "nosuchuser", "bb", "true"],
                 ["--entrypoint", "", "bb"], ["bb", "/etc/passwd"], ["bb", "no-such-cmd"]):
        r = lamina(store, "run", "--rm", "--network", "none", *args)
        expected = {"/etc/passwd": 126, "no-such-cmd": 127}.get(args[-1], 125)
        assert r.returncode == expected, (args, r.stderr)
        assert r.stderr.startswith("lamina: ") and "Traceback" not in r.stderr


def test_env_file_and_bare_names_as_docker(store, tmp_path, monkeypatch):
    # docker CLI's env-file rules: BOM dropped, leading whitespace dropped, `#` lines and
    # blank lines skipped, the value verbatim, a bare name takes the caller's value (or is
    # left out), an empty value kept; a name with whitespace refuses the file
    monkeypatch.setenv("FROMHOST", "host value")
    monkeypatch.delenv("NOTSET", raising=False)
    good = tmp_path / "good.env"
    good.write_bytes(b"\xef\xbb\xbfFIRST=1\n# c\n\n\t  # indented\n  LEAD= v 'q' \nFROMHOST\n"
                     b"NOTSET\nEMPTY=\n")
    r = lamina(store, "run", "--rm", "--network", "none", "--env-file", good, "-e", "FROMHOST",
               "-e", "CLI=", "bb", "cat", "/proc/self/environ")
    assert r.returncode == 0, r.stderr
    env = [e for e in r.stdout.split("\0") if e and not e.startswith(("HOSTNAME=", "PATH="))]
    assert env == ["FIRST=1", "LEAD= v 'q' ", "FROMHOST=host value", "EMPTY=", "CLI=",
                   "HOME=/root"]
    bad = tmp_path / "bad.env"
    bad.write_text("OK=1\nSPACED =x\n")
    r = lamina(store, "run", "--rm", "--network", "none", "--env-file", bad, "bb", "true")
    assert r.returncode == 125 and "SPACED" in r.stderr, r.stderr
